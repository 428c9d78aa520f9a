"""``AutoencoderDetector``: aelab as a scikit-learn estimator with PyOD's outlier conventions.

    from aelab import AutoencoderDetector
    detector = AutoencoderDetector(epochs=10, contamination=0.05).fit(X_train)  # X: [N, H, W] or [N, C, H, W]
    detector.predict(X_new)            # 0 inlier, 1 outlier (PyOD)
    detector.decision_function(X_new)  # outlier scores, higher is more abnormal (PyOD)
    detector.score_samples(X_new)      # their negatives: higher is more normal (scikit-learn)
    detector.transform(X_new)          # codes [N, latent_dim]; inverse_transform(codes) -> images
    detector.save("runs/detector"); AutoencoderDetector.load("runs/detector")

``fit`` trains with the same code as ``aelab train`` (``aelab.train`` into the run folder
``run_dir``, or without it into a temporary one that is removed before ``fit`` returns), holds out
``val_fraction`` of X (seeded) for validation, and fits the score of ``aelab score`` (``method``;
threshold at the (1 - contamination) quantile of the validation scores). After fit:
``decision_scores_`` (the scores of X), ``threshold_``, ``labels_`` (0/1 for X), ``metrics_`` (the
validation split's MSE and PSNR, named ``val_*``: X has no test split; a run loaded with ``load``:
those of its evaluation.json, ``test_*`` for a run of ``aelab train``), ``run_dir_`` (None without
``run_dir``: ``save`` writes a run folder). X is uint8 or floats in [0, 1], as ``aelab.data.arrays``
reads files.

The defaults are aelab's one-class recipe (latent size 16, the fast recipe, 30 epochs, the combined
score): mean AUROC 0.979 on MNIST and 0.939 on Fashion-MNIST in the one-class benchmark
(benchmarks/one_class.py; the tutorial's latent size 4 gives 0.968 and 0.941). When the normal
images are of several kinds, ``recipe="novelty"`` (10 epochs, the code's density as the score):
mean AUROC 0.919 with every MNIST digit held out in turn, against 0.811 for the combined score.
``epochs`` and ``method`` left at None are the recipe's. ``model="vae"`` trains the variational
autoencoder with its defaults (the KL term's weight rising over the first quarter of the epochs).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin

from .errors import AelabError


class AutoencoderDetector(TransformerMixin, OutlierMixin, BaseEstimator):
    """A convolutional autoencoder as an outlier detector and a transformer to latent codes."""

    def __init__(self, latent_dim: int = 16, epochs: int | None = None, batch_size: int = 256, lr: float | None = None,
                 recipe: str = "fast", loss: str = "mse", noise_factor: float = 0.0, width: int = 8,
                 hidden: int = 128, method: str | None = None, contamination: float = 0.1, val_fraction: float = 0.2,
                 seed: int = 0, device: str = "cpu", run_dir: str | None = None, model: str = "ae"):
        self.model = model  # the model family (model.kind): ae, vae, iwae
        self.latent_dim, self.epochs, self.batch_size, self.lr = latent_dim, epochs, batch_size, lr
        self.recipe, self.loss, self.noise_factor, self.width, self.hidden = recipe, loss, noise_factor, width, hidden
        self.method, self.contamination, self.val_fraction = method, contamination, val_fraction
        self.seed, self.device, self.run_dir = seed, device, run_dir

    # --- fitting ------------------------------------------------------------------------------------
    def fit(self, X, y=None) -> "AutoencoderDetector":
        from .config import DataConfig, RunConfig, model_config_for, train_config_for
        from .data.sets import ImageSet, split_train_val
        from .run import split_metrics
        from .scores import check_contamination, default_method, fit_detector, save_detector

        check_contamination(self.contamination)
        from .models.registry import family

        if family(self.model).conditional:
            raise AelabError(f"AutoencoderDetector trains models that need no labels (ae, vae, iwae): its X has none, "
                             f"and {self.model} sees each image's label; choose another `model`")
        images = self._images(X, fitting=True)
        full = ImageSet.from_arrays(images)
        train_set, val_set = split_train_val(full, self.val_fraction, self.seed)
        config = RunConfig(
            data=DataConfig(dataset="arrays given to AutoencoderDetector.fit", val_fraction=self.val_fraction),
            model=model_config_for(self.recipe, kind=self.model, latent_dim=self.latent_dim, width=self.width,
                                   hidden=self.hidden, arch="tutorial"),  # (the network its recipe was measured with)
            train=train_config_for(self.recipe, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                   loss=self.loss, noise_factor=self.noise_factor, seed=self.seed, device=self.device),
        )
        data = {"train": train_set, "val": val_set}
        if self.run_dir:
            result = self._train(config, Path(self.run_dir), data)
        else:  # a run folder only while training: the fitted detector lives in memory (save() writes one)
            with tempfile.TemporaryDirectory(prefix="aelab-detector-") as folder:
                result = self._train(config, Path(folder) / "run", data)
        self.model_, self.config_ = result.model.eval(), result.config
        self.metrics_ = split_metrics(result.evaluation)
        self.history_ = result.metrics
        self.run_dir_ = Path(self.run_dir) if self.run_dir else None
        self.detector_ = fit_detector(self.model_, train_set.images, val_set.images,
                                      self.method or default_method(config), self.contamination, seed=self.seed)
        if self.run_dir_ is not None:
            save_detector(self.detector_, self.run_dir_)
        self._fitted(images)
        return self

    @staticmethod
    def _train(config, run_dir: Path, data):
        from .training import train

        return train(config, run_dir, overwrite=True, report=False, data=data, progress=False)

    def _fitted(self, images: torch.Tensor) -> None:
        self.threshold_ = float(self.detector_.threshold)
        self.decision_scores_ = self._scores(images)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        self.n_features_in_ = int(np.prod(images.shape[1:]))

    # --- using it -----------------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Outlier scores (PyOD): higher is more abnormal."""
        return self._scores(self._images(X))

    def score_samples(self, X) -> np.ndarray:
        """The negated outlier scores (scikit-learn): higher is more normal."""
        return -self.decision_function(X)

    def predict(self, X) -> np.ndarray:
        """1 for an outlier (a score above ``threshold_``), 0 for an inlier (PyOD)."""
        return (self.decision_function(X) > self.threshold_).astype(int)

    def transform(self, X) -> np.ndarray:
        """Latent codes [N, latent_dim]."""
        from .inference import infer

        self._check_fitted()
        return infer(self.model_, self._images(X), terms=(), codes=True).codes

    def inverse_transform(self, Z) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1] decoded from codes [N, latent_dim]."""
        from .latent import decode

        self._check_fitted()
        Z = np.asarray(Z, dtype=np.float32)
        if Z.ndim != 2 or Z.shape[1] != self.model_.config.latent_dim:
            raise AelabError(f"codes must be [N, {self.model_.config.latent_dim}], got {Z.shape}")
        return decode(self.model_, Z).numpy()

    # --- a run folder -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector as a run folder at ``path`` (a copy of ``run_dir`` when it was given;
        else config.json, model.safetensors, metrics.csv, evaluation.json and the score in anomaly.json):
        ``load`` and every ``aelab`` command read it."""
        from .run import save_config, save_weights, write_json, write_metrics
        from .scores import save_detector

        self._check_fitted()
        path = Path(path)
        if path.exists():
            raise AelabError(f"{path} exists; choose another folder")
        if self.run_dir_ is not None:
            shutil.copytree(self.run_dir_, path, ignore=shutil.ignore_patterns(".lock", "state"))
            return path
        path.mkdir(parents=True)
        save_config(self.config_, path)
        save_weights(self.model_, path / "model.safetensors")
        write_metrics(self.history_, path)
        write_json(path / "evaluation.json", self.metrics_)
        save_detector(self.detector_, path)
        return path

    @classmethod
    def load(cls, path: str | Path, X=None) -> "AutoencoderDetector":
        """A fitted detector from a run folder (saved by ``save``, or any run scored by ``aelab score``);
        with ``X``, ``decision_scores_`` and ``labels_`` are those of X."""
        from .run import load_run, read_json, split_metrics
        from .scores import load_detector

        run = load_run(path)
        detector = load_detector(run.path, run.model)
        if detector is None:
            raise AelabError(f"{run.path} has no anomaly score fitted on its weights by this aelab version; score it "
                             f"first (aelab score {run.path})")
        model, train = run.config.model, run.config.train
        self = cls(latent_dim=model.latent_dim, epochs=train.epochs, batch_size=train.batch_size, lr=train.lr,
                   recipe=train.recipe, loss=train.loss, noise_factor=train.noise_factor, width=model.width,
                   hidden=model.hidden, method=detector.method, contamination=detector.contamination,
                   val_fraction=run.config.data.val_fraction, seed=train.seed, model=model.kind)
        self.model_, self.detector_, self.run_dir_, self.config_ = run.model, detector, run.path, run.config
        self.history_ = run.metrics
        evaluation = read_json(run.path / "evaluation.json")
        self.metrics_ = split_metrics(evaluation)
        self.threshold_ = float(detector.threshold)
        self.n_features_in_ = model.in_channels * model.image_size * (model.image_width or model.image_size)
        if X is not None:
            self._fitted(self._images(X))
        return self

    # --- helpers ------------------------------------------------------------------------------------
    def _scores(self, images: torch.Tensor) -> np.ndarray:
        from .scores import score_images

        self._check_fitted()
        return score_images(self.model_, self.detector_, images).score

    def _images(self, X, fitting: bool = False) -> torch.Tensor:
        from .data.arrays import to_uint8_nchw

        X = np.asarray(X)
        if X.ndim == 2 and not fitting and hasattr(self, "model_"):  # flattened rows, as scikit-learn passes them
            config = self.model_.config
            X = X.reshape(len(X), config.in_channels, config.image_size, config.image_width or config.image_size)
        images = torch.from_numpy(to_uint8_nchw(X, "X"))
        if not fitting:
            self._check_fitted()
            config = self.model_.config
            expected = (config.in_channels, config.image_size, config.image_width or config.image_size)
            if tuple(images.shape[1:]) != expected:
                raise AelabError(f"X holds images of shape {tuple(images.shape[1:])}, the detector was fitted on "
                                 f"{expected}; give images of that shape")
        return images

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this AutoencoderDetector is not fitted yet; call fit(X) first")
