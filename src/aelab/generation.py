"""A measure of generated images that needs no download: how far N generated images lie from the
test images in the features of a reference classifier that aelab trains itself.

- The classifier: a small CNN (``Classifier``) trained once per labelled data source on its
  training split (seeded; a few epochs), then cached under the data folder
  (``DATA_DIR/classifiers/NAME-FINGERPRINT/``) with its test accuracy beside it. Its features are its
  penultimate layer (128 values an image).
- The measures, between the features of the generated images and of the test split:
  ``frechet_distance`` (the Fréchet distance of two Gaussians fitted to them, the arithmetic of FID
  in another network's features: not comparable to published FIDs), ``kernel_distance`` (KID:
  the unbiased squared MMD with the cubic polynomial kernel, averaged over subsets; Bińkowski et al.
  2018) and ``precision_recall`` (Kynkäänniemi et al. 2019, k = 3: the share of generated images
  inside the test images' k-nearest-neighbour balls, and the reverse).

The arithmetic is written here (about forty lines of numpy and scipy) rather than taken from
torchmetrics or torch-fidelity: torchmetrics would add two packages for FID and KID only (it has no
precision and recall), and torch-fidelity fetches Inception's weights from the internet on first
use, which aelab never does at run time.

The usual FID, where a user has the Inception weights file (``inception_features``): torch-fidelity's
Inception network (the TensorFlow-exact port papers' FIDs come from; ``pip install 'aelab[fid]'``)
with its weights read from that file, never downloaded; the same Fréchet arithmetic on its 2,048
pool features.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.batches import to_unit
from .errors import AelabError
from .fsutil import atomic_write_bytes, atomic_write_text

log = logging.getLogger("aelab")

FEATURES = 128  # the classifier's penultimate layer
CLASSIFIER_EPOCHS = 5
CLASSIFIER_SEED = 0
VERSION = 1  # of the cached classifier (a change of its recipe trains it anew)


class Classifier(nn.Module):
    """A small CNN for images of any size and channel count: two 3x3 convolutions with max-pooling,
    an average pool to 4x4, a layer of ``FEATURES`` (the features the measures use), the classes."""

    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Reference:
    """A trained classifier, with what it was trained on and how well it classifies the test split."""

    model: Classifier
    accuracy: float
    path: Path


def _batches(images, batch_size: int = 512):
    for start in range(0, len(images), batch_size):
        yield start, images[start: start + batch_size]


@torch.no_grad()
def features(classifier: Classifier, images, device: torch.device, floats: bool = False) -> np.ndarray:
    """The classifier's features [N, FEATURES] of uint8 images (or, with ``floats``, images in [0, 1])."""
    classifier.eval()
    out = [classifier.features((chunk.to(device).float() if floats else to_unit(chunk, device))).double().cpu()
           for _, chunk in _batches(images)]
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURES))


def _train(splits: dict, device: torch.device) -> tuple[Classifier, float]:
    train, test = splits["train"], splits["test"]
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CLASSIFIER_SEED)
        model = Classifier(train.image_shape[0], classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = CLASSIFIER_EPOCHS * -(-len(train) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(CLASSIFIER_SEED)
    images, labels = train.images, train.labels
    for epoch in range(CLASSIFIER_EPOCHS):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), 128):
            index = order[start: start + 128]
            x, y = to_unit(images[index], device), labels[index].to(device)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
        log.info("reference classifier: epoch %d of %d", epoch + 1, CLASSIFIER_EPOCHS)
    model.eval()
    with torch.no_grad():
        right = sum(int((model(to_unit(chunk, device)).argmax(1).cpu() == test.labels[start: start + len(chunk)]).sum())
                    for start, chunk in _batches(test.images))
    return model, right / max(1, len(test))


def reference_classifier(data, device: torch.device | str = "cpu") -> Reference:
    """The reference classifier of a labelled data source (``data``: a DataConfig, as the run
    prepares its images): read from its cache, else trained on the source's training split (grey
    levels, whatever the run's binarisation), its test accuracy measured, and cached."""
    from dataclasses import replace

    from safetensors.torch import load_file, save

    from .data.sets import close_sets, load_splits
    from .data.sources import default_data_dir

    device = torch.device(device)
    plain = replace(data, binarize=None, classes=None)
    splits = load_splits(plain)
    try:
        if (splits["train"].labels < 0).any() or len(splits["train"].class_names) < 2:
            raise AelabError("the measure of generated images needs labelled images (its classifier learns their "
                             "classes); give a source with classes (a named dataset, class subfolders, an .npz with "
                             "labels)")
        fingerprint = splits["train"].source.fingerprint if splits["train"].source is not None else "arrays"
        folder = Path(plain.data_dir or default_data_dir()) / "classifiers" / f"{plain.source_name()}-{fingerprint}"
        path = folder / "classifier.safetensors"
        info = folder / "classifier.json"
        if info.is_file() and path.is_file():
            saved = json.loads(info.read_text())
            if saved.get("version") == VERSION:
                model = Classifier(splits["train"].image_shape[0], saved["classes"])
                model.load_state_dict(load_file(str(path)))
                return Reference(model.to(device).eval(), float(saved["test_accuracy"]), path)
        log.info("training the reference classifier of %s (once; cached in %s) ...", plain.dataset, folder)
        model, accuracy = _train(splits, device)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}))
        atomic_write_text(info, json.dumps({"version": VERSION, "classes": model.head.out_features,
                                            "test_accuracy": accuracy, "epochs": CLASSIFIER_EPOCHS,
                                            "seed": CLASSIFIER_SEED, "source": plain.dataset}, indent=2) + "\n")
        return Reference(model, accuracy, path)
    finally:
        close_sets(splits)


# --- the measures ----------------------------------------------------------------------------------

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` and of ``b`` [N, F]:
    |mean_a - mean_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
    from scipy import linalg

    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # (pytorch-fid's arithmetic: the usual FID's)
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # (features that never fire make the product singular: offset then)
            offset = np.eye(len(cov_a)) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(np.real(root)))


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 50, size: int = 1000, seed: int = 0) -> float:
    """KID: the unbiased squared MMD between ``a`` and ``b`` with the kernel (x.y / F + 1)^3, the mean
    over ``subsets`` random subsets of ``size`` rows of each (fewer rows when there are fewer)."""
    rng = np.random.default_rng(seed)
    size = min(size, len(a), len(b))
    if size < 2:
        raise AelabError("the kernel distance needs at least 2 images on each side")
    dims = a.shape[1]
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / dims + 1) ** 3, (y @ y.T / dims + 1) ** 3, (x @ y.T / dims + 1) ** 3)
        m = size
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values))


def _kth_distances(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """The distance from each row of ``x`` to its k-th nearest other row."""
    squared = (x ** 2).sum(1)
    out = np.empty(len(x))
    for start in range(0, len(x), chunk):
        part = np.maximum(squared[start: start + chunk, None] + squared[None] - 2 * x[start: start + chunk] @ x.T, 0)
        out[start: start + chunk] = np.sqrt(np.partition(part, k, axis=1)[:, k])  # (column 0: the row itself)
    return out


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Whether each of ``points`` lies in some ball (``centres``, ``radii``)."""
    squared = (centres ** 2).sum(1)
    found = np.zeros(len(points), bool)
    for start in range(0, len(points), chunk):
        part = points[start: start + chunk]
        distances = np.sqrt(np.maximum((part ** 2).sum(1)[:, None] + squared[None] - 2 * part @ centres.T, 0))
        found[start: start + chunk] = (distances <= radii[None]).any(1)
    return found


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): the share of ``generated`` rows inside
    the union of balls around each ``real`` row reaching its k-th nearest real neighbour, and the share
    of ``real`` rows inside the generated rows' balls."""
    precision = _inside(generated, real, _kth_distances(real, k)).mean()
    recall = _inside(real, generated, _kth_distances(generated, k)).mean()
    return float(precision), float(recall)


def compare(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Every measure between two sets of features."""
    precision, recall = precision_recall(real, generated)
    return {"frechet_distance": frechet_distance(real, generated),
            "kernel_distance": kernel_distance(real, generated, seed=seed), "precision": precision, "recall": recall}


def measure(run, test, generated: torch.Tensor, device: torch.device | str = "cpu", seed: int = 0,
            inception: nn.Module | None = None) -> dict:
    """The measures of ``generated`` images [N, C, H, W] in [0, 1] against the ``test`` split (an
    ImageSet prepared as the run's), in the features of the reference classifier of the run's data;
    given ``inception`` (``inception_network``), the usual FID too (``fid``)."""
    from .data.sets import data_for_run

    reference = reference_classifier(data_for_run(run.config), device)
    real = features(reference.model, test.images, torch.device(device))
    fake = features(reference.model, generated, torch.device(device), floats=True)
    found = compare(real, fake, seed)
    if inception is not None:
        found["fid"] = frechet_distance(inception_features(inception, test.images, device),
                                        inception_features(inception, generated, device, floats=True))
    return {**found, "n_generated": len(generated), "n_test": len(test), "classifier_accuracy": reference.accuracy,
            "classifier": str(reference.path)}


INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or weights-inception-2015-12-05-6726825d.pth "
                   "(torch-fidelity)")


def inception_network(path: str | Path, device: torch.device | str = "cpu", channels: int = 3) -> nn.Module:
    """torch-fidelity's Inception network of FID with its weights read from ``path`` (the FID
    Inception weights, ``INCEPTION_FILES``; nothing is downloaded), for images of ``channels``
    channels (grey or RGB: FID takes no other)."""
    path = Path(path)
    if channels not in (1, 3):
        raise AelabError(f"FID takes grey or colour (RGB) images, not {channels} channels; leave out --inception-weights")
    if not path.is_file():
        raise AelabError(f"the Inception weights file {path} does not exist; give the FID Inception weights "
                         f"({INCEPTION_FILES}), downloaded beforehand")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise AelabError("--inception-weights needs torch-fidelity: pip install 'aelab[fid]'") from None
    try:  # (read as tensors only first: a file that is not a state dict is refused, and runs no code of its own)
        if not isinstance(torch.load(path, map_location="cpu", weights_only=True), dict):
            raise ValueError("not a state dict")
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    except Exception as error:  # (any file but that network's state dict)
        said = " ".join(str(error).split()) or type(error).__name__
        raise AelabError(f"{path} is not the FID Inception weights ({said[:160]}...); give {INCEPTION_FILES}") from None
    return network.to(device)


@torch.no_grad()
def inception_features(network: nn.Module, images, device: torch.device | str = "cpu", floats: bool = False,
                       batch_size: int = 64) -> np.ndarray:
    """The Inception network's 2,048 pool features [N, 2048] of uint8 images [N, C, H, W] (or, with
    ``floats``, images in [0, 1]): grey images as three equal channels, 8-bit as FID takes them."""
    out = []
    for _, chunk in _batches(images, batch_size):
        chunk = torch.as_tensor(chunk[:] if not torch.is_tensor(chunk) else chunk)
        if floats:
            chunk = (chunk.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if chunk.shape[1] == 1:
            chunk = chunk.expand(-1, 3, -1, -1)
        out.append(network(chunk.contiguous().to(device))[0].double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2048))


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] blurred by a Gaussian of ``sigma`` pixels (for the sanity checks)."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    kernel = torch.exp(-torch.arange(-radius, radius + 1).float() ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    x = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                 groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                    groups=channels)
