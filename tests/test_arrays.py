"""Your own images as a numpy file: layouts, types, labels, bad files, and every tool on such a run."""

import json
import pickle

import numpy as np
import pytest

from aelab import AelabError
from aelab.cli import main
from aelab.data.arrays import read_array_file


def colour_images(n: int = 200, height: int = 20, width: int = 24, seed: int = 0) -> np.ndarray:
    """uint8 [n, height, width, 3]: a coloured bar at a random place on a dark background."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, (n, height, width, 3), dtype=np.uint8)
    for image in images:
        top, left = rng.integers(0, height - 6), rng.integers(0, width - 6)
        image[top: top + 6, left: left + 6] = rng.integers(120, 256, 3)
    return images


def test_layouts_and_types(tmp_path):
    images = colour_images(10)  # [N, H, W, C]
    cases = {
        "nhw.npy": (images[..., 0], (10, 1, 20, 24)),
        "nhwc.npy": (images, (10, 3, 20, 24)),
        "nchw.npy": (images.transpose(0, 3, 1, 2), (10, 3, 20, 24)),
        "float.npy": (images.astype(np.float32) / 255, (10, 3, 20, 24)),
    }
    for name, (array, shape) in cases.items():
        np.save(tmp_path / name, array)
        pixels, labels = read_array_file(tmp_path / name)
        assert pixels.shape == shape and pixels.dtype == np.uint8 and labels is None, name
    assert np.array_equal(read_array_file(tmp_path / "float.npy")[0], read_array_file(tmp_path / "nhwc.npy")[0])
    np.savez(tmp_path / "labelled.npz", images=images, labels=np.arange(10) % 3)
    pixels, labels = read_array_file(tmp_path / "labelled.npz")
    assert pixels.shape == (10, 3, 20, 24) and labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    rgba = np.concatenate([images, np.full((10, 20, 24, 1), 128, np.uint8)], axis=3)
    np.save(tmp_path / "rgba.npy", rgba)
    composited = read_array_file(tmp_path / "rgba.npy")[0]
    assert composited.shape == (10, 3, 20, 24)  # alpha composited on black
    assert np.abs(composited.astype(int) - images.transpose(0, 3, 1, 2).astype(int) // 2).max() <= 1


@pytest.mark.parametrize("content, words", [
    (np.zeros((4, 20, 20), np.int16), "int16 are neither uint8 nor floats"),
    (np.full((4, 20, 20), 2.0), "must lie in [0, 1]"),
    (np.zeros((4, 20, 20, 2), np.uint8), "1, 3 or 4 channels"),
    (np.zeros((20, 20), np.uint8), "not [N, H, W]"),
    (np.zeros((0, 20, 20), np.uint8), "holds no image"),
])
def test_bad_arrays_are_named_with_a_fix(tmp_path, content, words):
    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(AelabError, match=re_escape(words)) as error:
        read_array_file(tmp_path / "bad.npy")
    assert str(tmp_path / "bad.npy") in str(error.value)


def re_escape(text):
    import re

    return re.escape(text)


def test_bad_files_are_named_and_never_unpickled(tmp_path):
    with pytest.raises(AelabError, match="does not exist"):
        read_array_file(tmp_path / "missing.npy")
    np.savez(tmp_path / "other.npz", pictures=np.zeros((2, 20, 20), np.uint8))
    with pytest.raises(AelabError, match="no `images` array"):
        read_array_file(tmp_path / "other.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((3, 20, 20), np.uint8), labels=np.array([0, -1, 2]))
    with pytest.raises(AelabError, match="`labels` must be 3 integers of 0 or more"):
        read_array_file(tmp_path / "labels.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(AelabError, match="cannot be read as a numpy array file"):
        read_array_file(tmp_path / "objects.npy")
    (tmp_path / "evil.npy").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(AelabError, match="cannot be read"):
        read_array_file(tmp_path / "evil.npy")


def test_every_tool_on_a_run_of_unlabelled_colour_non_square_images(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run records the file's absolute path
    np.save(tmp_path / "bars.npy", colour_images())
    run = tmp_path / "runs" / "bars"  # (the latent size chosen from the images: not in the name)
    assert main(["train", "--data", "bars.npy", "--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--latent-dim", "4",
                 "--width", "4", "--hidden", "32", "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == str(tmp_path / "bars.npy")
    assert (config["model"]["in_channels"], config["model"]["image_size"], config["model"]["image_width"]) == (3, 20, 24)
    monkeypatch.chdir("/")
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 20  # the seeded 10 % test split
    assert main(["embed", str(run), "--out", str(tmp_path / "codes.csv")]) == 0
    rows = (tmp_path / "codes.csv").read_text().splitlines()
    assert rows[0] == "index,label,z0,z1,z2,z3" and all(row.split(",")[1] == "-1" for row in rows[1:])
    assert main(["plot", str(run), "scatter", "--out", str(tmp_path / "map.html")]) == 0
    assert '"name": "unlabelled"' in (tmp_path / "map.html").read_text()
    assert main(["generate", str(run), "--grid", "--n", "3", "--out", str(tmp_path / "grid.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] > 300  # the grid with its axes
    from aelab import latent, load_run

    decoded = latent.grid_images(load_run(run), latent.latent_plane(np.random.default_rng(0).normal(size=(50, 4))), 3)
    assert decoded.shape == (9, 3, 20, 24)  # colour, 24 wide, 20 high
    page = (run / "report.html").read_text()
    assert "bars" in page and "The latent space" in page
    assert main(["train", "--data", str(tmp_path / "nothing.npy"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "nothing.npy does not exist" in capsys.readouterr().err
