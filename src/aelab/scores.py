"""Anomaly scores of images under a trained autoencoder, and the threshold that flags them.

Ingredients (higher: more unusual), each a column of ``aelab score``'s table:

- ``mse``: the reconstruction error of the image (mean squared error per pixel).
- ``feature_error``: the reconstruction error as the encoder sees it: the difference between the
  encoder's convolutional features of the image and of its reconstruction, as a Mahalanobis
  distance under a Gaussian fitted to the training images' differences (Ledoit-Wolf shrinkage).
- ``feature_distance``: how far the image's encoder features lie from the training images'
  (the Mahalanobis distance under a Gaussian fitted to them).
- ``density``: how unlikely the image's code is: the negative log-likelihood of the code under a
  Gaussian mixture fitted to the training images' codes.

Methods: ``combined`` (the default; a run of the novelty recipe: ``density``) is the smooth maximum
(``log(sum(exp))``) of the first three, each as its logarithm standardised by its mean and standard
deviation on the validation images: an image is unusual when its pixels, its features or the way it
is rebuilt are. Any ingredient can also be the score alone (``--method mse`` and so on).
Reconstruction error alone has a blind spot: a simple image (a thin stroke, a blank patch) is
reconstructed well even when nothing like it was trained on, and scores as normal; its features,
though, lie where the training images' do not (benchmarks/RESULTS.md measures every ingredient and
combination on held-out classes).

The threshold follows PyOD's convention: ``contamination`` c sets it at the (1 - c) quantile of
the validation images' scores. A ``Detector`` (the fitted Gaussians and mixture, the
standardisation, the threshold) is saved in the run folder, ``anomaly.json`` with
``anomaly.safetensors``, and read back by every later use. It belongs to the weights it was fitted
on: ``anomaly.json`` records their digest (and that of ``anomaly.safetensors``, so a reader never
pairs one file of a detector with the other's), and a detector of other weights (the run was
trained on since, or replaced) is fitted anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import AelabError
from .fsutil import atomic_write_bytes, atomic_write_text
from .inference import chunk_size, infer

INGREDIENTS = ("mse", "feature_error", "feature_distance", "density", "nelbo")  # (nelbo: variational models only)
METHODS = ("combined", *INGREDIENTS)
COMBINED = ("mse", "feature_error", "feature_distance")  # what the default joins
FILE, ARRAYS = "anomaly.json", "anomaly.safetensors"
VERSION = 3  # of anomaly.json (3: the density score's mixture of up to 64 components); a detector of another version is fitted anew when it is met (its score is computed otherwise)
MIXTURE_COMPONENTS = 8  # the code density's mixture beside the other ingredients
# ... and when the density is the score itself (the novelty recipe's): normal images of several kinds need
# more (nine MNIST digits, leave-one-class-out: 8 components 0.874 mean AUROC, 32 0.915, 64 0.926;
# benchmarks/RESULTS.md), at about 20x the fitting time
DENSITY_COMPONENTS = 64
FIT_IMAGES = 20_000  # training images the Gaussians and the mixture are fitted on at most (a seeded sample)
CHUNK = 4096  # images scored at a time (their features are held only for a chunk; progress is told after each)
log = logging.getLogger("aelab")
Progress = Callable[[int, int], None]  # told (done, total) as work advances


def check_contamination(contamination: float) -> float:
    if not (0.0 < contamination <= 0.5):
        raise AelabError(f"`contamination` must be in (0, 0.5], got {contamination}; try 0.1 (the share of "
                         "validation images above the threshold)")
    return float(contamination)


@dataclass
class Detector:
    """What turns a run's per-image errors, features and codes into scores and flags."""

    method: str
    contamination: float
    threshold: float
    mixture: dict[str, list] = field(default_factory=dict)  # weights, means, covariances of the code density
    standard: dict[str, list[float]] = field(default_factory=dict)  # {"mse": [mean, sd], ...} of the logs (validation)
    # {"feature_distance": {"mean": [F], "precision": [F, F]}, "feature_error": {...}} (float64)
    gaussians: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    version: int = VERSION
    weights: str = ""  # the digest of the weights it was fitted on (aelab.run.weights_digest)

    def parts(self, images, model: torch.nn.Module, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Every ingredient (``INGREDIENTS``; ``nelbo``, the negative ELBO, for a model that reports
        it) of uint8 images [N, C, H, W] (a tensor or on disk, or an ImageSet: with its labels, which
        a conditional model needs). ``progress(done, total)`` is told the images scored after each chunk."""
        images, labels = with_labels(images)
        terms = tuple(term for term in ("mse", "nelbo") if term in model.terms)
        found: dict[str, list[np.ndarray]] = {name: [] for name in INGREDIENTS if name != "nelbo" or name in terms}
        step = chunk_size(images.shape[1:]) * max(1, CHUNK // chunk_size(images.shape[1:]))  # whole chunks of infer:
        for start in range(0, len(images), step):  # (its draws are seeded by their place: the same however cut)
            result = infer(model, images[start: start + step], terms=terms, codes=True, features=True, first=start,
                           labels=None if labels is None else labels[start: start + step])
            for term in terms:
                found[term].append(result.terms[term])
            found["density"].append(-self._mixture().score_samples(result.codes.astype(np.float64)))
            for name, values in (("feature_distance", result.features), ("feature_error", result.feature_errors)):
                found[name].append(_mahalanobis(values, self.gaussians[name]))
            if progress is not None:
                progress(min(len(images), start + step), len(images))
        return {name: np.concatenate(values) if values else np.zeros(0) for name, values in found.items()}

    def standardised(self, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ingredients that ``combined`` joins (``COMBINED``), each as its logarithm standardised
        by its mean and standard deviation on the validation images: 0 is a typical validation
        image, 2 is two standard deviations more unusual."""
        return {name: (np.log(np.maximum(parts[name], 1e-12)) - self.standard[name][0]) / self.standard[name][1]
                for name in COMBINED}

    def combine(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """The score of this detector's method from ``parts`` (as ``parts()`` gives them)."""
        if self.method != "combined":
            return parts[self.method]
        return np.logaddexp.reduce(np.stack(list(self.standardised(parts).values())), axis=0)

    def describe(self) -> str:
        """What the score is and how its threshold flags images, in a few sentences for a person."""
        what = {"combined": "the smooth maximum of three standardised ingredients (the reconstruction error in "
                            "pixels, the same error in the encoder's features, and how far the image's features lie "
                            "from the training images'): in standard deviations of the validation images",
                "mse": "the reconstruction error (mean squared error per pixel)",
                "feature_error": "the reconstruction error in the encoder's features (a squared Mahalanobis distance)",
                "feature_distance": "how far the image's encoder features lie from the training images' (a squared "
                                    "Mahalanobis distance)",
                "density": "how unlikely the image's code is (negative log-likelihood under a Gaussian mixture)",
                "nelbo": "the variational model's negative ELBO (nats per image; a bound on -log p(x))"}
        return (f"The {self.method} score is {what[self.method]}; higher is more unusual. The threshold "
                f"{self.threshold:.3f} is the {(1 - self.contamination) * 100:g}% quantile of the validation images' "
                f"scores (contamination {self.contamination:g}), so {self.contamination * 100:g}% of images like the "
                "validation ones are flagged by construction.")

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
        """Everything but the Gaussians' arrays (``arrays()``), as JSON-serialisable values."""
        values = asdict(self)
        values.pop("gaussians")
        return values

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{name}.{key}": np.ascontiguousarray(value, dtype=np.float64)
                for name, gaussian in self.gaussians.items() for key, value in gaussian.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Detector":
        gaussians: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            name, part = key.split(".", 1)
            gaussians.setdefault(name, {})[part] = np.asarray(value, dtype=np.float64)
        return cls(**{key: values[key] for key in ("method", "contamination", "threshold", "mixture", "standard",
                                                   "version")}, gaussians=gaussians, weights=values.get("weights", ""))


def _mahalanobis(values: np.ndarray, gaussian: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distances of the rows of ``values`` under a Gaussian (mean, precision)."""
    centred = values.astype(np.float64) - gaussian["mean"]
    return np.maximum(((centred @ gaussian["precision"]) * centred).sum(1), 0.0)


def _gaussian(values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and precision of ``values`` [N, F], the covariance shrunk by Ledoit and Wolf's rule (well
    conditioned with fewer images than features)."""
    from sklearn.covariance import LedoitWolf

    values = values.astype(np.float64)
    mean = values.mean(0)
    with warnings.catch_warnings():  # (one image: "only one sample available"; its distances are then 0)
        warnings.simplefilter("ignore")
        return {"mean": mean, "precision": LedoitWolf(assume_centered=True).fit(values - mean).precision_}


def with_labels(images) -> tuple[object, torch.Tensor | None]:
    """uint8 images and their labels: an ImageSet's (which a conditional model needs), or the images
    given alone (a tensor or images on disk) and None."""
    if hasattr(images, "images") and hasattr(images, "labels"):
        return images.images, images.labels
    return images, None


def _sample(images, seed: int):
    """At most ``FIT_IMAGES`` of ``images`` (a seeded sample, in order), with their labels."""
    images, labels = with_labels(images)
    if len(images) <= FIT_IMAGES:
        return images, labels
    keep = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(len(images), FIT_IMAGES, replace=False)))
    return images[keep], None if labels is None else labels[keep]


def fit_detector(model: torch.nn.Module, train_images, val_images, method: str = "combined",
                 contamination: float = 0.1, seed: int = 0, progress: Progress | None = None) -> Detector:
    """Fit the Gaussians of the features and the code density on the training images, the
    standardisation and the threshold on the validation images (uint8 images, or ImageSets: with
    their labels, which a conditional model needs). ``progress(done, total)`` is told the images done
    (at most ``FIT_IMAGES`` training images, then the validation images)."""
    from sklearn.mixture import GaussianMixture

    from .run import weights_digest

    if method not in METHODS:
        raise AelabError(f"unknown score {method!r}; choose one of {', '.join(METHODS)}")
    if method == "nelbo" and "nelbo" not in model.terms:
        raise AelabError("the nelbo score (the negative ELBO) needs a variational model (`model.kind` vae, iwae or "
                         "cvae); choose another `method`")
    contamination = check_contamination(contamination)
    sample, sample_labels = _sample(train_images, seed)
    total = len(sample) + len(with_labels(val_images)[0])
    train = infer(model, sample, terms=(), codes=True, features=True, labels=sample_labels)
    if progress is not None:
        progress(len(sample), total)
    codes = train.codes.astype(np.float64)
    components = max(1, min(DENSITY_COMPONENTS if method == "density" else MIXTURE_COMPONENTS, len(codes) // 20))
    with warnings.catch_warnings():  # (a mixture that has not fully converged still gives a density)
        warnings.simplefilter("ignore")
        gmm = GaussianMixture(n_components=components, covariance_type="full", reg_covar=1e-4, random_state=seed,
                              max_iter=300).fit(codes)
    detector = Detector(method, contamination, 0.0,
                        {"weights": gmm.weights_.tolist(), "means": gmm.means_.tolist(),
                         "covariances": gmm.covariances_.tolist()},
                        gaussians={"feature_distance": _gaussian(train.features),
                                   "feature_error": _gaussian(train.feature_errors)},
                        weights=weights_digest(model))
    parts = detector.parts(val_images, model, None if progress is None else
                           lambda done, _: progress(len(sample) + done, total))
    for name in COMBINED:
        logs = np.log(np.maximum(parts[name], 1e-12))
        detector.standard[name] = [float(logs.mean()), float(logs.std() or 1.0)]
    detector.threshold = float(np.quantile(detector.combine(parts), 1.0 - contamination))
    return detector


DEFAULT_METHOD, DEFAULT_CONTAMINATION = "combined", 0.1


def default_method(config) -> str:
    """The score a run (its RunConfig) uses unless told: its recipe's (``config.RECIPE_SCORES``: the
    novelty recipe's density), else ``DEFAULT_METHOD``."""
    from .config import RECIPE_SCORES

    return RECIPE_SCORES.get(config.train.recipe, DEFAULT_METHOD)


def detector_file(run_dir: Path, method: str = DEFAULT_METHOD, contamination: float = DEFAULT_CONTAMINATION,
                  default: str = DEFAULT_METHOD) -> Path:
    """Where a run keeps a detector: ``RUN/anomaly.json`` for the run's default score (``default``,
    as ``default_method`` gives it: the report's), any other method or contamination in
    ``RUN/outputs/anomaly-METHOD-CONTAMINATION.json`` (so that ``aelab score --method mse`` never
    changes what the report shows). Its Gaussians lie beside it (``.safetensors``)."""
    if (method, contamination) == (default, DEFAULT_CONTAMINATION):
        return Path(run_dir) / FILE
    from .run import OUTPUTS

    return Path(run_dir) / OUTPUTS / f"anomaly-{method}-{contamination:g}.json"


def save_detector(detector: Detector, run_dir: Path, path: Path | None = None) -> Path:
    """``RUN/anomaly.safetensors`` (the Gaussians), then ``RUN/anomaly.json`` (the rest, with the
    digest of the first, written last), each replaced atomically; or the pair at ``path`` (.json)."""
    from safetensors.numpy import save

    path = Path(path) if path is not None else Path(run_dir) / FILE
    arrays = save(detector.arrays())
    atomic_write_bytes(path.with_suffix(".safetensors"), arrays)
    atomic_write_text(path, json.dumps({**detector.to_dict(), "arrays": _digest(arrays)}))
    return path


def remove_detector(run_dir: Path) -> None:
    """Remove a run's detector (its weights change): ``anomaly.json`` first, so no reader finds it half gone."""
    for name in (FILE, ARRAYS):
        (Path(run_dir) / name).unlink(missing_ok=True)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load_detector(run_dir: Path, model: torch.nn.Module | None = None, path: Path | None = None) -> Detector | None:
    """The run's saved detector (``RUN/anomaly.json``, or the one at ``path``); None (fitted anew then,
    with a note) when it has none, when it is one of an older aelab, or, given ``model``, when it was
    fitted on other weights than ``model``'s."""
    from safetensors.numpy import load

    from .run import weights_digest

    path = Path(path) if path is not None else Path(run_dir) / FILE
    for attempt in range(5):  # another process may be replacing the pair: read until both halves agree
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            if values.get("version", 1) != VERSION:
                log.info("%s holds a score of an older aelab: it is fitted anew", path)
                return None
            arrays = path.with_suffix(".safetensors").read_bytes()
            if values.get("arrays") not in (None, _digest(arrays)):
                time.sleep(0.05 * (attempt + 1))
                continue
            detector = Detector.from_dict(values, load(arrays))
        except FileNotFoundError:
            time.sleep(0.05 * (attempt + 1))
            continue
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise AelabError(f"{path} (with {ARRAYS}) is damaged ({error}); delete it and score again (it is fitted "
                             "anew)") from None
        if model is not None and detector.weights != weights_digest(model):
            log.info("%s was fitted on other weights than the run's model.safetensors (the run has been trained "
                     "since): it is fitted anew", path)
            return None
        return detector
    log.info("%s and %s do not belong together (another process is writing them?): the score is fitted anew",
             path, ARRAYS)
    return None


@dataclass
class Scored:
    """Scores of a set of images, row ``i`` for image ``i``."""

    score: np.ndarray  # float64 [N]
    is_anomaly: np.ndarray  # bool [N]
    parts: dict[str, np.ndarray]  # every ingredient as measured, float64 [N] each (INGREDIENTS)
    threshold: float
    standardised: dict[str, np.ndarray] = field(default_factory=dict)  # those combined, standardised (COMBINED)


def score_images(model: torch.nn.Module, detector: Detector, images, progress: Progress | None = None) -> Scored:
    """Scores and flags of uint8 images [N, C, H, W] (a tensor or images on disk, or an ImageSet);
    ``progress(done, total)`` is told the images scored."""
    parts = detector.parts(images, model, progress)
    score = detector.combine(parts)
    return Scored(score, score > detector.threshold, parts, detector.threshold, detector.standardised(parts))


def error_maps(model: torch.nn.Module, images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, their reconstructions (floats [N, C, H, W] in [0, 1]) and per-pixel squared error maps
    [N, H, W] (the mean over a colour image's channels: from 0 to 1, as the MSE), of uint8 images or
    an ImageSet."""
    from .data.batches import to_unit

    images, labels = with_labels(images)
    result = infer(model, images, terms=(), reconstructions=True, labels=labels)
    clean = to_unit(images[:] if not torch.is_tensor(images) else images)
    return clean, result.reconstructions, (result.reconstructions - clean).square().mean(1)


def metrics(scores: np.ndarray, is_anomaly: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC, average precision and F1 at the threshold (scikit-learn's), anomalies the positives."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    if truth.all() or not truth.any():
        raise AelabError("the images are all normal or all anomalous under `normal`; AUROC needs both; choose "
                         "normal classes that leave some images out")
    return {"auroc": float(roc_auc_score(truth, scores)), "average_precision": float(average_precision_score(truth, scores)),
            "f1": float(f1_score(truth, is_anomaly))}


def run_detector(run, method: str | None = None, contamination: float = DEFAULT_CONTAMINATION,
                 data_dir: str | None = None, memory_limit: str | None = None,
                 progress: Progress | None = None) -> Detector:
    """The run's detector of this method (None: the run's default, ``default_method``) and
    contamination, saved where ``detector_file`` says (the default's in ``RUN/anomaly.json``), else
    fitted now on the run's own training and validation images (``data_dir``: where they are now) and
    saved there (``progress``: see ``fit_detector``)."""
    from .data.sets import close_sets, data_for_run, load_run_splits

    contamination = check_contamination(contamination)
    method = method or default_method(run.config)
    path = detector_file(run.path, method, contamination, default_method(run.config))
    saved = load_detector(run.path, run.model, path)
    if saved is not None and saved.method == method and saved.contamination == contamination:
        return saved
    log.info("fitting the %s score on the run's training and validation images ...", method)
    data = data_for_run(run.config, data_dir=data_dir, memory_limit=memory_limit)
    splits = load_run_splits(run.config, data, ("train", "val"))
    try:
        detector = fit_detector(run.model, splits["train"], splits["val"], method, contamination,
                                seed=run.config.train.seed, progress=progress)
    finally:
        close_sets(splits)
    save_detector(detector, run.path, path)
    return detector


def anomaly_figure(model: torch.nn.Module, images, scores: np.ndarray, path: Path, title: str = "",
                   labels: list[str] | None = None, score_name: str = "score") -> Path:
    """The images at the top of ``scores`` (given in that order) with their reconstructions and error
    maps (each pixel's squared error, pixels from 0 to 1, a colour image's channels averaged; on one
    colour scale shown beside them, from 0 to the largest); under each, its ``score_name`` and (given
    ``labels``, the class names) its label."""
    from .plots import heat, rows_figure

    clean, output, maps = error_maps(model, images)
    captions = [f"{score:.2f}" + (f"\n{label}" if labels else "") for score, label in zip(scores, labels or scores)]
    return rows_figure([("image", clean), ("reconstruction", output), ("error", heat(maps))], path, title,
                       captions=captions, caption_name=score_name + ("\nlabel" if labels else ""),
                       colour_bar=("squared\nerror of\na pixel\n(0 to 1)", float(maps.max()) if len(maps) else 1.0))


def label_names(images, positions: np.ndarray) -> list[str] | None:
    """The class names of the images at ``positions`` of an ImageSet; None when they are unlabelled."""
    from .plots import label_name

    labels = images.labels[torch.as_tensor(positions)].tolist()
    if not any(label >= 0 for label in labels):
        return None
    return [label_name(label, images.class_names) for label in labels]


def highest(scored: Scored, n: int | None = None) -> np.ndarray:
    """Positions of the images by score, highest first (ties in order); the first ``n`` of them."""
    return np.argsort(-scored.score, kind="stable")[:n]


def table(scored: Scored, images) -> dict[str, np.ndarray]:
    """One row per image of ``images`` (the ImageSet scored), highest score first: index (in its
    source), path (files), label (labelled images), score, is_anomaly, then every ingredient as
    measured (``NAME_raw``) and, for those the combined score joins, standardised
    (``NAME_standardised``: its logarithm in standard deviations of the validation images)."""
    order = highest(scored)
    columns = {"index": images.indices.numpy()[order]}
    if images.paths is not None:
        columns["path"] = images.paths[order]
    labels = images.labels.numpy()
    if (labels >= 0).any():
        columns["label"] = labels[order]
    columns.update(score=scored.score[order], is_anomaly=scored.is_anomaly[order].astype(int))
    for name, values in scored.parts.items():
        columns[f"{name}_raw"] = values[order]
        if name in scored.standardised:
            columns[f"{name}_standardised"] = scored.standardised[name][order]
    return columns


def normal_truth(images, normal: list[str]) -> np.ndarray:
    """Which images of ``images`` (an ImageSet, labelled) are anomalies (bool [N]): those whose class
    is not among ``normal`` (labels or class names)."""
    from .data.sets import class_labels

    normal_labels = class_labels(normal, images.class_names, "`normal`")
    labels = images.labels.numpy()
    if (labels < 0).any():
        raise AelabError("`normal` needs labelled images, and some of these are unlabelled; leave out `normal`")
    return ~np.isin(labels, normal_labels)


def against_normal(scored: Scored, images, normal: list[str]) -> dict[str, float]:
    """AUROC, average precision and F1 (``metrics``) of the scores of ``images`` (labelled), the
    classes ``normal`` (labels or names) being the normal ones and every other an anomaly."""
    return metrics(scored.score, scored.is_anomaly, normal_truth(images, normal))


def default_split(data, other_images: bool) -> str:
    """Which images of a source ``aelab score`` scores unless told: the test split of the run's own
    data or of a named dataset; all of the images of ``other_images`` from a folder or file."""
    return "all" if other_images and data.kind() != "named" else "test"


@dataclass
class ScoreFiles:
    """What ``write_scores`` wrote and found."""

    table: Path  # the scores, one row per image, highest first (``table``)
    figure: Path  # the highest-scoring images with their reconstructions and error maps
    scored: Scored


def write_scores(run, detector: Detector, images, split: str, out: str | Path | None = None, top: int = 12,
                 progress: Progress | None = None) -> ScoreFiles:
    """Score ``images`` (an ImageSet; ``split`` names it) under the run's model: their table to
    ``out`` (.csv or .parquet), else ``outputs/scores-SPLIT.csv`` in the run folder, and beside it a
    figure of the ``top`` highest (``progress``: see ``score_images``)."""
    from .latent import write_table
    from .run import output_path

    path = output_path(run.path, f"scores-{split}.csv", out)
    scored = score_images(run.model, detector, images, progress)
    write_table(table(scored, images), path)
    first = highest(scored, top)
    figure = anomaly_figure(run.model, images.subset(torch.as_tensor(first)), scored.score[first],
                            path.with_suffix(".png"),
                            title=f"the {len(first)} highest {detector.method} scores of {len(images)} images",
                            labels=label_names(images, first), score_name=f"{detector.method} score")
    return ScoreFiles(path, path.with_suffix(".png"), scored)
