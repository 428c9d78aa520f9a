"""AutoencoderDetector: scikit-learn's and PyOD's conventions, clone, Pipeline, save and load."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from aelab import AelabError, AutoencoderDetector

from conftest import synthetic_images


@pytest.fixture(scope="module")
def shapes():
    images, labels = synthetic_images(600, seed=5)
    return images, labels


@pytest.fixture(scope="module")
def fitted(shapes):
    images, labels = shapes
    normal = images[labels != 3]  # bars; the boxes are the outliers
    return AutoencoderDetector(epochs=12, batch_size=64, contamination=0.1).fit(normal)


def test_pyod_attributes_and_conventions(fitted, shapes):
    images, labels = shapes
    n_fit = int((labels != 3).sum())
    assert fitted.decision_scores_.shape == (n_fit,) and fitted.labels_.shape == (n_fit,)
    assert set(np.unique(fitted.labels_)) <= {0, 1} and 0.0 < fitted.labels_.mean() < 0.3
    scores = fitted.decision_function(images)
    assert np.allclose(fitted.score_samples(images), -scores)
    assert np.array_equal(fitted.predict(images), (scores > fitted.threshold_).astype(int))
    assert scores[labels == 3].mean() > scores[labels != 3].mean()  # the boxes look unusual
    codes = fitted.transform(images[:5])
    assert codes.shape == (5, 16)  # (the default latent size: the one-class recipe's)
    decoded = fitted.inverse_transform(codes)
    assert decoded.shape == (5, 1, 28, 28) and 0 <= decoded.min() and decoded.max() <= 1
    floats = images[:5].astype(np.float32) / 255  # floats in [0, 1] and [N, C, H, W] work alike
    assert np.allclose(fitted.decision_function(floats[:, None]), scores[:5], atol=1e-4)


def test_params_clone_and_a_pipeline(shapes):
    images, labels = shapes
    detector = AutoencoderDetector(epochs=2, batch_size=64, latent_dim=3)
    assert detector.get_params()["latent_dim"] == 3
    assert clone(detector).set_params(epochs=1).get_params()["epochs"] == 1
    pipeline = Pipeline([("codes", AutoencoderDetector(epochs=3, batch_size=64)),
                         ("classify", LogisticRegression(max_iter=500))])
    pipeline.fit(images[:400], labels[:400])
    assert pipeline.score(images[400:], labels[400:]) > 0.4  # codes separate the four shapes somewhat


def test_save_and_load_a_run_folder(fitted, shapes, tmp_path):
    images, _ = shapes
    path = fitted.save(tmp_path / "detector")
    assert (path / "model.safetensors").is_file() and (path / "anomaly.json").is_file()
    loaded = AutoencoderDetector.load(path)
    assert np.allclose(loaded.decision_function(images), fitted.decision_function(images))
    assert loaded.threshold_ == fitted.threshold_ and loaded.get_params()["contamination"] == 0.1
    with pytest.raises(AelabError, match="shape"):
        loaded.predict(np.zeros((2, 32, 32), np.uint8))
    evaluation = __import__("json").loads((path / "evaluation.json").read_text())
    assert "test_mse" not in evaluation and evaluation["val_mse"] == fitted.metrics_["val_mse"]
    assert loaded.metrics_ == fitted.metrics_


def test_fit_leaves_no_temporary_folder_and_names_its_split(shapes, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where fit's temporary run folder goes
    images, labels = shapes
    detector = AutoencoderDetector(epochs=1, batch_size=64).fit(images[:200])
    left = [path for path in tmp_path.iterdir() if not path.name.startswith("torchinductor")]  # (torch's own cache)
    assert left == []
    assert detector.run_dir_ is None
    assert set(detector.metrics_) == {"val_mse", "val_psnr", "val_pca_mse"} and detector.metrics_["val_mse"] > 0
    kept = AutoencoderDetector(epochs=1, batch_size=64, run_dir=str(tmp_path / "kept")).fit(images[:200])
    assert kept.run_dir_ == tmp_path / "kept" and (tmp_path / "kept" / "anomaly.json").is_file()
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith("torchinductor")] == ["kept"]


def test_the_novelty_recipe_sets_its_model_and_its_score(shapes):
    """recipe="novelty": its epochs (10) and score (the code's density) where epochs and method are
    left at None; what is given wins."""
    images, labels = shapes
    detector = AutoencoderDetector(recipe="novelty", batch_size=64).fit(images[labels != 3][:200])
    assert detector.detector_.method == "density" and detector.config_.train.epochs == 10
    assert detector.config_.model.latent_dim == 16 and detector.get_params()["method"] is None
    told = AutoencoderDetector(recipe="novelty", epochs=1, method="mse", latent_dim=4, batch_size=64)
    told.fit(images[:200])
    assert told.detector_.method == "mse" and told.config_.train.epochs == 1 and told.config_.model.latent_dim == 4
