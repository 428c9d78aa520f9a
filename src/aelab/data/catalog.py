"""The named datasets, declared as data: their folder, the md5s of their files, their classes.

Kept free of heavy imports, so the configuration and the command line can name the datasets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # torchvision's folder name under the data dir
    md5: dict[str, str]  # uncompressed file -> md5
    class_names: tuple[str, ...]


DATASETS = {
    "mnist": DatasetInfo(
        "mnist",
        "MNIST",
        {  # the official md5s of the uncompressed files
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        tuple(str(digit) for digit in range(10)),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        "FashionMNIST",
        {  # md5s of the uncompressed official files (the .gz files are recompressed by Debian)
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


ARRAY_SUFFIXES = (".npy", ".npz")  # a source that is a numpy file of images (aelab.data.arrays)
