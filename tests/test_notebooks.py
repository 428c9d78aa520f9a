"""The notebooks in examples/ run top to bottom, and the repository keeps them without outputs."""

import json
import re
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


FIGURE_CODE = re.compile(r"plt\.|display\(Image|\.draw\(|draw_grid|\.figure\.show\(")  # a cell that shows a figure


def test_the_notebooks_are_what_their_script_writes(tmp_path):
    """scripts/make_notebooks.py is the notebooks' one source."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), str(tmp_path)], check=True)
    for path in NOTEBOOKS:
        assert (tmp_path / path.name).read_text() == path.read_text(), f"run scripts/make_notebooks.py ({path.name})"


def execute(path: Path, cwd: Path) -> None:
    """Run the notebook top to bottom (no cell may fail), export it to HTML as a reader would see it
    (nbconvert, in ``cwd``), and check that every cell that shows a figure has a picture there:
    interactive figures need a static twin, since the exported page runs no notebook JavaScript."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [output for cell in book.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, errors
    page, _ = HTMLExporter().from_notebook_node(book)
    (cwd / path.with_suffix(".html").name).write_text(page)
    cells = re.split(r'(?=<div class="jp-Cell )', page)[1:]  # (the cells' own divs; their parts are jp-Cell-...)
    assert len(cells) == len(book.cells)
    code = [(cell, html) for cell, html in zip(book.cells, cells) if cell.cell_type == "code"]
    figures = [(cell, html) for cell, html in code if FIGURE_CODE.search(cell.source)]
    assert len(figures) >= 2
    for cell, html in figures:
        assert re.search(r'<img[^>]+src="data:image/png;base64,', html), f"no picture in the HTML of:\n{cell.source}"
    printed = "".join(output.get("text", "") for cell in book.cells for output in cell.get("outputs", []))
    assert "epoch   1/" in printed and "train loss" in printed  # the losses of each epoch, as the tutorial printed
    assert "{'" not in printed and "[('" not in printed  # results as tables, not raw dicts or lists


def test_the_notebooks_front_end_is_installed():
    """aelab[notebooks] (which the test set-up installs) brings JupyterLab and nbconvert: the README's
    `jupyter lab examples/tutorial.ipynb` is all a student needs after it."""
    import shutil
    import subprocess
    import sys

    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists() or shutil.which("jupyter"), "aelab[notebooks] did not install jupyter"
    for command in (["lab", "--version"], ["nbconvert", "--version"]):
        result = subprocess.run([str(jupyter) if jupyter.exists() else "jupyter", *command], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip()[:1].isdigit(), (command, result.stderr[-400:])


@pytest.mark.slow
@pytest.mark.network
def test_the_tutorial_notebook_runs(real_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("AELAB_DATA_DIR", str(real_mnist))
    monkeypatch.setenv("AELAB_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("AELAB_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    execute(ROOT / "examples" / "tutorial.ipynb", tmp_path)
    assert (tmp_path / "runs" / "mnist-d4" / "outputs" / "autoencoder.onnx").is_file()
    assert not (ROOT / "examples" / "runs").exists()


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
