"""The notebooks in examples/ run top to bottom, and the repository keeps them without outputs."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, synthetic_images

NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_the_notebooks_are_kept_without_outputs():
    """As nbstripout leaves them: no outputs, no execution counts, no widget state."""
    assert {path.name for path in NOTEBOOKS} == {"tutorial.ipynb", "your_images.ipynb"}
    for path in NOTEBOOKS:
        book = json.loads(path.read_text())
        for cell in book["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: strip its outputs"
        assert "widgets" not in book["metadata"], path.name


def execute(path: Path, cwd: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [output for cell in book.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.network
def test_the_tutorial_notebook_runs(real_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("AELAB_DATA_DIR", str(real_mnist))
    monkeypatch.setenv("AELAB_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("AELAB_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    execute(ROOT / "examples" / "tutorial.ipynb", tmp_path)
    assert (tmp_path / "runs" / "mnist-d4" / "autoencoder.onnx").is_file()


@pytest.mark.slow
def test_the_folder_notebook_runs(tmp_path, monkeypatch):
    from PIL import Image

    images, labels = synthetic_images(240, seed=6, size=32)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "photos" / ("bars" if label < 2 else "boxes")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([image, image, image // 2], -1)).save(folder / f"{i:03d}.png")
    (tmp_path / "photos" / "notes.png").write_text("not an image")
    monkeypatch.setenv("AELAB_NOTEBOOK_FOLDER", str(tmp_path / "photos"))
    monkeypatch.setenv("AELAB_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("AELAB_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path / "cache"))
    execute(ROOT / "examples" / "your_images.ipynb", tmp_path)
    assert (tmp_path / "runs" / "folder" / "anomaly.json").is_file()
