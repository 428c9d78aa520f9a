"""Your own images as a folder: finding, labels, splits, conversions, bad files, the cache, and
reading from disk when the images are larger than the memory budget."""

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aelab import AelabError
from aelab.cli import main
from aelab.config import DataConfig
from aelab.data import folders
from aelab.data.mapped import MappedImages
from aelab.data.sets import load_splits

from conftest import synthetic_images


def write_folder(root: Path, n: int = 40, size: int = 20, classes=("bars", "boxes"), colour: bool = False) -> None:
    """Class subfolders (one image in three a level deeper) of PNG files made from synthetic images."""
    images, _ = synthetic_images(n * len(classes), seed=1, size=size)
    for k, name in enumerate(classes):
        for i in range(n):
            folder = root / name / ("deeper" if i % 3 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = images[k * n + i]
            image = Image.fromarray(np.stack([pixels, pixels // 2, 255 - pixels], -1) if colour else pixels)
            image.save(folder / f"{i:03d}.png")


def data(root, tmp_path, **settings) -> DataConfig:
    return DataConfig(dataset=str(root), data_dir=str(tmp_path / "cache"), **settings)


def listing(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root with its md5 and modification time: to prove they are only read."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path)] = (hashlib.md5(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def test_class_subfolders_give_labels_and_seeded_splits(tmp_path):
    root = tmp_path / "photos"
    write_folder(root)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "loose.png")  # directly in the folder: unlabelled
    (root / "notes.txt").write_text("not an image, and not named like one: passed over")
    before = listing(root)
    splits = load_splits(data(root, tmp_path))
    assert sum(len(part) for part in splits.values()) == 81
    train = splits["train"]
    assert train.class_names == ("bars", "boxes") and train.image_shape == (1, 20, 20)
    everything = {path: int(label) for part in splits.values() for path, label in zip(part.paths, part.labels)}
    assert everything["bars/deeper/000.png"] == 0 and everything["boxes/001.png"] == 1 and everything["loose.png"] == -1
    for part in splits.values():  # each split in path order
        assert list(part.paths) == sorted(part.paths)
    again = load_splits(data(root, tmp_path))
    assert all(list(again[name].paths) == list(splits[name].paths) for name in splits)
    assert listing(root) == before  # the user's files are only read


def test_train_and_test_subfolders_give_the_splits(tmp_path):
    root = tmp_path / "set"
    write_folder(root / "train", n=20)
    write_folder(root / "test", n=5)
    splits = load_splits(data(root, tmp_path))
    assert len(splits["test"]) == 10 and all(path.startswith("test/") for path in splits["test"].paths)
    assert len(splits["train"]) + len(splits["val"]) == 40 and len(splits["val"]) == 8  # val split off train
    assert splits["test"].class_names == ("bars", "boxes")
    write_folder(root / "val", n=3)
    splits = load_splits(data(root, tmp_path))
    assert len(splits["val"]) == 6 and len(splits["train"]) == 40


def test_bad_files_are_skipped_listed_and_counted(tmp_path, caplog):
    root = tmp_path / "mixed"
    write_folder(root, n=6)
    good = (root / "bars" / "001.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    (root / "half.png").write_bytes(good[: len(good) // 2])
    os.symlink("loop.png", root / "loop.png")
    os.symlink("missing.png", root / "dangling.png")
    os.symlink("..", root / "bars" / "parent")  # a folder link back up: searched once
    Image.new("1", (9500, 9500)).save(root / "bomb.png")  # more pixels than Pillow's limit
    caplog.set_level(logging.INFO, logger="aelab")
    splits = load_splits(data(root, tmp_path))
    skipped = dict(splits["train"].source.skipped)
    assert skipped.keys() == {"empty.png", "text.jpg", "half.png", "loop.png", "dangling.png", "bars/parent", "bomb.png"}
    assert "empty" in skipped["empty.png"] and "not an image" in skipped["text.jpg"]
    assert "truncated" in skipped["half.png"] and "loop" in skipped["loop.png"] and "loop" in skipped["bars/parent"]
    assert "decompression bomb" in skipped["bomb.png"] and "unreadable" in skipped["dangling.png"]
    assert sum(len(part) for part in splits.values()) == 12
    assert "7 files skipped" in caplog.text


READ_LOCKED_FOLDER = r"""
import sys
from test_folders import data
from aelab.data.sets import load_splits

splits = load_splits(data(sys.argv[1], __import__("pathlib").Path(sys.argv[2])))
print(dict(splits["train"].source.skipped).get("bars/001.png"))
"""


def test_an_unreadable_file_is_skipped(tmp_path):
    """In a process that file permissions apply to (as root: one without root's override of them)."""
    from conftest import run_unprivileged

    root = tmp_path / "locked"
    write_folder(root, n=6)
    (root / "bars" / "001.png").chmod(0)
    result = run_unprivileged(READ_LOCKED_FOLDER, tmp_path, str(root), str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "unreadable" in result.stdout, result.stdout + result.stderr


def test_modes_are_converted_not_skipped(tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(root / "wide.png")  # 16-bit grey
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(root / "cmyk.jpg")  # white
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(root / "palette.gif")  # red
    Image.new("LA", (20, 20), (200, 0)).save(root / "transparent.png")  # fully transparent: black
    Image.new("RGBA", (20, 20), (200, 100, 50, 255)).save(root / "opaque.png")
    Image.new("RGB", (20, 20), (10, 20, 30)).save(root / "photo.webp", lossless=True)
    Image.new("L", (20, 20), 77).save(root / "grey.tif")
    Image.new("L", (20, 20), 99).save(root / "grey.bmp")
    found = folders.load_folder(root, tmp_path / "cache")
    assert found.skipped == [] and found.channels == 3  # a colour image makes the set colour
    pixels = {path: found.images[[i]][0, :, 0, 0].tolist() for i, path in enumerate(found.paths)}
    assert pixels["wide.png"] == [255, 255, 255] and pixels["cmyk.jpg"] == [255, 255, 255]
    assert pixels["palette.gif"] == [255, 0, 0] and pixels["transparent.png"] == [0, 0, 0]
    assert pixels["opaque.png"] == [200, 100, 50] and pixels["photo.webp"] == [10, 20, 30]
    assert pixels["grey.tif"] == [77, 77, 77] and pixels["grey.bmp"] == [99, 99, 99]
    grey = folders.load_folder(root, tmp_path / "cache", channels=1)
    assert grey.images.shape[1] == 1


def test_channels_size_and_resize(tmp_path):
    root = tmp_path / "sizes"
    root.mkdir()
    for i in range(3):
        Image.new("L", (32, 20), 255).save(root / f"wide{i}.png")  # the most common size: 20 high, 32 wide
    Image.new("L", (20, 20), 255).save(root / "square.png")
    found = folders.load_folder(root, tmp_path / "cache")
    assert (found.channels, found.height, found.width) == (1, 20, 32)
    square = list(found.paths).index("square.png")
    assert found.images[[square]].min() == 255  # stretched: white everywhere
    padded = folders.load_folder(root, tmp_path / "cache", size=(20, 32), resize="pad")
    row = padded.images[[square]][0, 0]
    assert row[:, 16].min() == 255 and row[:, 0].max() == 0  # fitted in the middle, black at the sides
    cropped = folders.load_folder(root, tmp_path / "cache", size=(16, 16), resize="crop")
    assert cropped.images.shape[1:] == (1, 16, 16) and cropped.images[:].min() == 255
    colour = folders.load_folder(root, tmp_path / "cache", channels=3, size=(24, 24))
    assert colour.images.shape[1:] == (3, 24, 24)


def test_the_cache_follows_added_changed_and_removed_files(tmp_path, caplog):
    root = tmp_path / "growing"
    write_folder(root, n=10)
    caplog.set_level(logging.INFO, logger="aelab")
    first = folders.load_folder(root, tmp_path / "cache")
    assert "decoding 20 images" in caplog.text
    caplog.clear()
    same = folders.load_folder(root, tmp_path / "cache")
    assert "decoding" not in caplog.text and same.images.path == first.images.path and same.fingerprint == first.fingerprint
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(root / "bars" / "new.png")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(root / "boxes" / "001.png")  # changed
    (root / "bars" / "002.png").unlink()
    caplog.clear()
    after = folders.load_folder(root, tmp_path / "cache")
    assert "decoding 2 new or changed images" in caplog.text
    assert len(after.paths) == 20 and "bars/new.png" in after.paths and "bars/002.png" not in after.paths
    rows = {path: after.images[[i]] for i, path in enumerate(after.paths)}
    assert rows["boxes/001.png"].min() == rows["boxes/001.png"].max() == 9
    old = {path: first.images[[i]] for i, path in enumerate(first.paths)}  # (the old file stays readable)
    assert torch.equal(rows["bars/004.png"], old["bars/004.png"]) and after.fingerprint != first.fingerprint
    assert len(list((tmp_path / "cache").rglob("images-*.npy"))) == 1  # the old cache file is gone


def test_parallel_decoding_gives_the_same_cache(tmp_path, monkeypatch):
    root = tmp_path / "many"
    write_folder(root, n=150, size=16)  # 300 files: decoded by worker processes
    parallel = folders.load_folder(root, tmp_path / "a")
    monkeypatch.setattr(folders, "PARALLEL_FROM", 10**9)
    serial = folders.load_folder(root, tmp_path / "b")
    assert torch.equal(parallel.images[:], serial.images[:]) and parallel.fingerprint == serial.fingerprint


def test_a_source_without_images_is_one_clear_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("x")
    with pytest.raises(AelabError, match="no image files"):
        load_splits(data(tmp_path / "nothing", tmp_path))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_text("x")
    with pytest.raises(AelabError, match=r"holds 1 image file and it is not readable \(a.png: not an image Pillow"):
        load_splits(data(tmp_path / "broken", tmp_path))
    (tmp_path / "broken" / "b.png").write_text("y")
    with pytest.raises(AelabError, match=r"holds 2 image files and none is readable \(the first: a.png: not an image"):
        load_splits(data(tmp_path / "broken", tmp_path))
    with pytest.raises(AelabError, match="neither a named dataset nor an existing folder"):
        load_splits(data(tmp_path / "missing", tmp_path))


def test_mapped_images_read_any_index_in_the_order_asked(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (50, 2, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    mapped = MappedImages(tmp_path / "a.npy")
    index = torch.tensor([7, 3, 4, 5, 49, 0, 3])
    assert torch.equal(mapped[index], torch.from_numpy(array[index.numpy()]))
    assert torch.equal(mapped[10:20], torch.from_numpy(array[10:20]))
    part = mapped.subset(np.array([5, 1, 9]))
    assert part.shape == (3, 2, 5, 4) and torch.equal(part[[2, 0]], torch.from_numpy(array[[9, 5]]))


def test_a_run_from_disk_is_the_run_from_memory(tmp_path, caplog):
    """The same run, whether the images are held in memory or read batch by batch from the cache."""
    from aelab import RunConfig, train
    from aelab.config import train_config_for
    from aelab.run import read_weights

    root = tmp_path / "images"
    write_folder(root, n=60)
    results = {}
    caplog.set_level(logging.INFO, logger="aelab")
    for limit in ("auto", "1KB"):
        config = RunConfig(data=data(root, tmp_path, memory_limit=limit),
                           train=train_config_for("fast", epochs=2, batch_size=16, shards=2))
        result = train(config, tmp_path / limit, report=False)
        results[limit] = (read_weights(tmp_path / limit / "model.safetensors"), result.metrics, result.evaluation)
        assert ("read from the cache on disk" in caplog.text) == (limit == "1KB")
    memory, disk = results["auto"], results["1KB"]
    assert memory[0].keys() == disk[0].keys()
    assert all(torch.equal(memory[0][name], disk[0][name]) for name in memory[0])
    assert [row["train_loss"] for row in memory[1]] == [row["train_loss"] for row in disk[1]]
    assert memory[2]["test_mse"] == disk[2]["test_mse"]


def test_every_tool_on_a_folder_run(tmp_path, capsys):
    root = tmp_path / "colour"
    write_folder(root, n=30, size=24, colour=True)
    (root / "bad.png").write_text("not an image")
    run = tmp_path / "run"
    cache = str(tmp_path / "cache")
    assert main(["train", "--data", str(root), "--data-dir", cache, "--epochs", "1", "--batch-size", "16",
                 "--image-size", "24x20", "--out", str(run), "--quiet"]) == 0
    assert (run / "data-skipped.csv").read_text().splitlines() == ["path,reason", "bad.png,not an image Pillow can read"]
    config = __import__("json").loads((run / "config.json").read_text())
    assert config["data"]["channels"] == 3 and config["data"]["image_size"] == "24x20" and config["data"]["fingerprint"]
    assert config["model"]["in_channels"] == 3 and config["model"]["image_width"] == 20
    assert main(["embed", str(run), "--data-dir", cache, "--out", str(tmp_path / "codes.csv"), "--quiet"]) == 0
    header = (tmp_path / "codes.csv").read_text().splitlines()[:2]
    assert header[0].startswith("index,path,label,z0") and ".png" in header[1]
    assert main(["evaluate", str(run), "--data-dir", cache, "--quiet"]) == 0
    copy = tmp_path / "copy"
    os.system(f"cp -r {root} {copy}")
    assert main(["evaluate", str(run), "--data", str(copy), "--data-dir", cache, "--memory-limit", "1KB"]) == 0
    assert "holds the images the run was trained on" in capsys.readouterr().err
    assert main(["plot", str(run), "scatter", "--data-dir", cache, "--quiet"]) == 0
    assert main(["generate", str(run), "--grid", "--data-dir", cache, "--quiet"]) == 0
    assert main(["report", str(run), "--data-dir", cache, "--quiet"]) == 0
    assert (run / "report.html").stat().st_size < 10 * 2**20


def test_mapped_images_close_their_file_for_every_subset(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6 * 2 * 3 * 3, dtype=np.uint8).reshape(6, 2, 3, 3))
    with MappedImages(tmp_path / "a.npy") as mapped:
        part = mapped.subset([4, 1])
        fd = mapped._file.fd
        assert torch.equal(part[[0]], mapped[[4]])
    assert mapped.closed and part.closed
    with pytest.raises(OSError):
        os.fstat(fd)  # the descriptor is closed, not only forgotten
    with pytest.raises(ValueError, match="closed"):
        part[[0]]
    mapped.close()  # (twice: nothing happens)


def test_mapped_images_never_closed_are_closed_when_gone(tmp_path):
    import gc

    np.save(tmp_path / "a.npy", np.zeros((2, 1, 2, 2), np.uint8))
    mapped = MappedImages(tmp_path / "a.npy")
    fd = mapped._file.fd
    del mapped
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_mapped_images_refuse_other_arrays(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2)))
    np.save(tmp_path / "i.npy", np.zeros((2, 1, 2, 2), np.int16))
    for name in ("f.npy", "i.npy"):
        with pytest.raises(ValueError, match="not a uint8"):
            MappedImages(tmp_path / name)


def _open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
def test_image_sets_close_their_cache_file(tmp_path):
    from aelab.data.sets import close_sets

    root = tmp_path / "images"
    write_folder(root, n=8)
    in_memory = load_splits(data(root, tmp_path))
    assert not [path for path in _open_files() if path.endswith(".npy")]  # read into memory: the file is closed
    splits = load_splits(data(root, tmp_path, memory_limit="1KB"))
    assert splits["train"].on_disk and [path for path in _open_files() if path.endswith(".npy")]
    with splits["test"] as test:
        assert len(test.images[[0]]) == 1
    assert not [path for path in _open_files() if path.endswith(".npy")]  # one file, shared by the splits
    with pytest.raises(ValueError, match="closed"):
        splits["train"].images[[0]]
    close_sets(splits, in_memory, None)  # (closed ones and sets in memory: nothing happens)


LOAD_FOLDER = r"""
import logging, sys
from pathlib import Path

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from aelab.data.folders import load_folder

print(len(load_folder(sys.argv[1], Path(sys.argv[2])).images))
"""


def test_a_process_that_waits_for_the_cache_says_for_which_process(tmp_path):
    """Another process builds the cache (it holds the lock, its process id written in it): the second
    says it waits for it, then goes on once the lock is released."""
    import fcntl
    import subprocess
    import sys
    import time

    root = tmp_path / "images"
    write_folder(root, n=3)
    where = folders.cache_dir(root.resolve(), tmp_path / "cache")
    where.mkdir(parents=True)
    err = tmp_path / "stderr.txt"
    with open(where / ".lock", "a+") as lock, open(err, "w") as sink:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        child = subprocess.Popen([sys.executable, "-c", LOAD_FOLDER, str(root), str(tmp_path / "cache")],
                                 stdout=subprocess.PIPE, stderr=sink, text=True)
        try:
            deadline = time.time() + 30
            while "waiting" not in err.read_text() and child.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            said = err.read_text()
            assert f"waiting for process {os.getpid()}, which is building the image cache in {where}" in said, said
            assert child.poll() is None  # still waiting
        except BaseException:
            child.kill()
            raise
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "6", err.read_text()
