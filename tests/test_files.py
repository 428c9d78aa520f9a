"""Files in, files out: reconstruct, denoise and encode image files and folders."""

import numpy as np
import pytest
from PIL import Image

from aelab.cli import main

from conftest import synthetic_images


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A run trained on 24x24 colour images (a numpy file)."""
    folder = tmp_path_factory.mktemp("colour")
    grey, _ = synthetic_images(300, seed=2, size=24)
    images = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    np.save(folder / "colour.npy", images)
    assert main(["train", "--data", str(folder / "colour.npy"), "--epochs", "2", "--batch-size", "32", "--latent-dim", "4",
                 "--noise-factor", "0.2", "--out", str(folder / "run"), "--no-report", "--quiet"]) == 0
    return folder / "run"


def inputs(folder):
    folder.mkdir()
    (folder / "sub").mkdir()
    grey, _ = synthetic_images(3, seed=8, size=40)
    Image.fromarray(grey[0]).save(folder / "grey.png")  # grey, another size
    Image.fromarray(np.stack([grey[1]] * 3 + [np.full((40, 40), 200, np.uint8)], -1), "RGBA").save(folder / "sub" / "rgba.png")
    Image.fromarray(np.stack([grey[2]] * 3, -1)).resize((30, 20)).save(folder / "wide.jpg")
    Image.fromarray(grey[2]).save(folder / "wide.png")  # the same stem as wide.jpg
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def test_reconstruct_writes_pngs_at_the_inputs_size_and_mode(colour_run, tmp_path, capsys):
    source = inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["reconstruct", str(colour_run), str(source), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 images written" in captured.out and "1 files skipped" in captured.err
    made = {path.relative_to(out).as_posix(): Image.open(path) for path in out.rglob("*.png")}
    assert set(made) == {"grey.png", "sub/rgba.png", "wide.jpg.png", "wide.png.png"}
    assert made["grey.png"].mode == "L" and made["grey.png"].size == (40, 40)
    assert made["sub/rgba.png"].mode == "RGBA" and np.asarray(made["sub/rgba.png"])[..., 3].min() == 200
    assert made["wide.jpg.png"].size == (30, 20)
    assert (out / "skipped.csv").read_text().splitlines()[1].startswith(str(source / "broken.png"))
    assert main(["denoise", str(colour_run), str(source / "grey.png"), "--out", str(tmp_path / "d"),
                 "--add-noise", "0.2", "--quiet"]) == 0
    assert Image.open(tmp_path / "d" / "grey.png").size == (40, 40)


def test_encode_writes_one_row_per_image_with_its_path(colour_run, tmp_path, capsys):
    source = inputs(tmp_path / "in")
    for name in ("codes.csv", "codes.npy"):
        assert main(["encode", str(colour_run), str(source), str(source / "grey.png"), "--out",
                     str(tmp_path / name), "--quiet"]) == 0
    rows = (tmp_path / "codes.csv").read_text().splitlines()
    assert rows[0] == "path,z0,z1,z2,z3" and len(rows) == 6 and rows[1].split(",")[0].endswith("grey.png")
    table = np.load(tmp_path / "codes.npy")
    assert table["z"].shape == (5, 4) and table["path"][0].endswith("grey.png")
    assert np.allclose(table["z"][0], [float(v) for v in rows[1].split(",")[1:]], atol=1e-6)
    assert main(["encode", str(colour_run), str(source / "broken.png"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no usable image" in capsys.readouterr().err
