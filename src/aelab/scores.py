"""Anomaly scores of images under a trained autoencoder, and the threshold that flags them.

Scores (higher: more unusual):

- ``mse``: the reconstruction error of the image (mean squared error per pixel).
- ``density``: how unlikely the image's code is: the negative log-likelihood of the code under a
  Gaussian mixture fitted to the training images' codes.
- ``combined`` (the default): the two above, each standardised by its mean and standard deviation
  on the validation images (the error as its logarithm), joined by a smooth maximum
  (``log(exp(a) + exp(b))``): an image is unusual when its error or its code is. Reconstruction
  error alone has a blind spot: a simple image (a thin stroke, a blank patch) is reconstructed well even when nothing
  like it was trained on, and scores as normal; its code, though, lies where the training codes do
  not, which the density sees (benchmarks/RESULTS.md measures both on held-out classes).

The threshold follows PyOD's convention: ``contamination`` c sets it at the (1 - c) quantile of
the validation images' scores. A ``Detector`` (the mixture, the standardisation, the threshold)
is saved in the run folder as ``anomaly.json`` and read back by every later use.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AelabError
from .fsutil import atomic_write_text
from .infer import infer

METHODS = ("combined", "mse", "density")
FILE = "anomaly.json"
MIXTURE_COMPONENTS = 8


def check_contamination(contamination: float) -> float:
    if not (0.0 < contamination <= 0.5):
        raise AelabError(f"`contamination` must be in (0, 0.5], got {contamination}; try 0.1 (the share of "
                         "validation images above the threshold)")
    return float(contamination)


@dataclass
class Detector:
    """What turns a run's per-image errors and codes into scores and flags (JSON-serialisable)."""

    method: str
    contamination: float
    threshold: float
    mixture: dict[str, list] = field(default_factory=dict)  # weights, means, covariances of the code density
    standard: dict[str, list[float]] = field(default_factory=dict)  # {"log_mse": [mean, sd], "density": [mean, sd]}

    def parts(self, mse: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
        """The per-image ingredients: ``mse`` and ``density`` (the code's negative log-likelihood)."""
        return {"mse": mse, "density": -self._mixture().score_samples(codes.astype(np.float64))}

    def scores(self, mse: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self.combine(self.parts(mse, codes))

    def combine(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """The score of this detector's method from ``parts`` (as ``parts()`` gives them)."""
        if self.method == "mse":
            return parts["mse"]
        if self.method == "density":
            return parts["density"]
        log_mse = np.log(np.maximum(parts["mse"], 1e-12))
        (m1, s1), (m2, s2) = self.standard["log_mse"], self.standard["density"]
        return np.logaddexp((log_mse - m1) / s1, (parts["density"] - m2) / s2)

    def _mixture(self):
        from sklearn.mixture import GaussianMixture

        if getattr(self, "_fitted", None) is not None:  # (built once from the saved parameters)
            return self._fitted
        means = np.asarray(self.mixture["means"])
        gmm = GaussianMixture(n_components=len(means), covariance_type="full")
        gmm.weights_ = np.asarray(self.mixture["weights"])
        gmm.means_ = means
        gmm.covariances_ = np.asarray(self.mixture["covariances"])
        # as scikit-learn computes it: precision = P @ P.T with P = inverse(cholesky(covariance)).T
        gmm.precisions_cholesky_ = np.stack([np.linalg.inv(np.linalg.cholesky(c)).T for c in gmm.covariances_])
        self._fitted = gmm
        return gmm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Detector":
        return cls(**{key: values[key] for key in ("method", "contamination", "threshold", "mixture", "standard")})


def fit_detector(model: torch.nn.Module, train_images, val_images, method: str = "combined",
                 contamination: float = 0.1, seed: int = 0) -> Detector:
    """Fit the code density on the training images, the standardisation and the threshold on the
    validation images."""
    from sklearn.mixture import GaussianMixture

    if method not in METHODS:
        raise AelabError(f"unknown score {method!r}; choose one of {', '.join(METHODS)}")
    contamination = check_contamination(contamination)
    codes = infer(model, train_images, mse=False, codes=True).codes.astype(np.float64)
    components = max(1, min(MIXTURE_COMPONENTS, len(codes) // 20))
    with warnings.catch_warnings():  # (a mixture that has not fully converged still gives a density)
        warnings.simplefilter("ignore")
        gmm = GaussianMixture(n_components=components, covariance_type="full", reg_covar=1e-4, random_state=seed,
                              max_iter=300).fit(codes)
    detector = Detector(method, contamination, 0.0,
                        {"weights": gmm.weights_.tolist(), "means": gmm.means_.tolist(),
                         "covariances": gmm.covariances_.tolist()})
    val = infer(model, val_images, codes=True)
    parts = detector.parts(val.mse, val.codes)
    log_mse = np.log(np.maximum(parts["mse"], 1e-12))
    detector.standard = {"log_mse": [float(log_mse.mean()), float(log_mse.std() or 1.0)],
                         "density": [float(parts["density"].mean()), float(parts["density"].std() or 1.0)]}
    detector.threshold = float(np.quantile(detector.combine(parts), 1.0 - contamination))
    return detector


def save_detector(detector: Detector, run_dir: Path) -> Path:
    path = Path(run_dir) / FILE
    atomic_write_text(path, json.dumps(detector.to_dict()))
    return path


def load_detector(run_dir: Path) -> Detector | None:
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        return Detector.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise AelabError(f"{path} is damaged ({error}); delete it and score again (it is fitted anew)") from None


@dataclass
class Scored:
    """Scores of a set of images, row ``i`` for image ``i``."""

    score: np.ndarray  # float64 [N]
    is_anomaly: np.ndarray  # bool [N]
    mse: np.ndarray  # float64 [N]
    density: np.ndarray  # float64 [N]
    threshold: float


def score_images(model: torch.nn.Module, detector: Detector, images) -> Scored:
    """Scores and flags of uint8 images [N, C, H, W] (a tensor or images on disk)."""
    result = infer(model, images, codes=True)
    parts = detector.parts(result.mse, result.codes)
    score = detector.combine(parts)
    return Scored(score, score > detector.threshold, result.mse, parts["density"], detector.threshold)


def error_maps(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, their reconstructions (floats [N, C, H, W] in [0, 1]) and per-pixel squared error maps
    [N, H, W] (summed over channels)."""
    from .data.batches import to_unit

    result = infer(model, images, mse=False, reconstructions=True)
    clean = to_unit(images[:] if not torch.is_tensor(images) else images)
    return clean, result.reconstructions, (result.reconstructions - clean).square().sum(1)


def metrics(scores: np.ndarray, is_anomaly: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC, average precision and F1 at the threshold (scikit-learn's), anomalies the positives."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    if truth.all() or not truth.any():
        raise AelabError("the images are all normal or all anomalous under `normal`; AUROC needs both; choose "
                         "normal classes that leave some images out")
    return {"auroc": float(roc_auc_score(truth, scores)), "average_precision": float(average_precision_score(truth, scores)),
            "f1": float(f1_score(truth, is_anomaly))}


def run_detector(run, method: str = "combined", contamination: float = 0.1, data_dir: str | None = None,
                 memory_limit: str | None = None) -> Detector:
    """The run's detector: ``RUN/anomaly.json`` when it was fitted with this method and contamination,
    else fitted now on the run's own training and validation images (``data_dir``: where they are
    now) and saved there."""
    import logging

    from .data.sets import data_for_run, load_run_splits

    contamination = check_contamination(contamination)
    saved = load_detector(run.path)
    if saved is not None and saved.method == method and saved.contamination == contamination:
        return saved
    logging.getLogger("aelab").info("fitting the %s score on the run's training and validation images ...", method)
    data = data_for_run(run.config, data_dir=data_dir, memory_limit=memory_limit)
    splits = load_run_splits(run.config, data, ("train", "val"))
    detector = fit_detector(run.model, splits["train"].images, splits["val"].images, method, contamination,
                            seed=run.config.train.seed)
    save_detector(detector, run.path)
    return detector


def anomaly_figure(model: torch.nn.Module, images, scores: np.ndarray, path: Path, title: str = "") -> Path:
    """The images at the top of ``scores`` (given in that order) with their reconstructions and error maps."""
    from .plots import heat, rows_figure

    clean, output, maps = error_maps(model, images)
    return rows_figure([("image", clean), ("reconstruction", output), ("error", heat(maps))], path, title,
                       captions=[f"{score:.2f}" for score in scores])
