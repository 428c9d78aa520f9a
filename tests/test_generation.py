"""The measure of generated images: a reference classifier aelab trains and caches, and the
Fréchet distance, kernel distance, precision and recall in its features."""

import json

import numpy as np
import pytest
import torch

from aelab import generation
from aelab.config import DataConfig
from aelab.data.sets import load_splits
from conftest import synthetic_images


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    images, labels = synthetic_images(1200, seed=4)
    np.savez(folder / "shapes.npz", images=images, labels=labels)
    return DataConfig(dataset=str(folder / "shapes.npz"), data_dir=str(folder / "data"))


def test_the_reference_classifier_is_trained_once_and_cached_with_its_accuracy(shapes, monkeypatch):
    reference = generation.reference_classifier(shapes)
    info = json.loads(reference.path.with_name("classifier.json").read_text())
    assert reference.accuracy == info["test_accuracy"] > 0.9  # four shapes, easy to tell apart
    monkeypatch.setattr(generation, "_train", lambda *args: pytest.fail("trained again"))
    again = generation.reference_classifier(shapes)
    assert again.accuracy == reference.accuracy
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(again.model.features(x), reference.model.eval().features(x))


def test_the_measures_are_near_0_for_the_same_data_and_grow_with_blur_and_noise(shapes):
    reference = generation.reference_classifier(shapes)
    splits = load_splits(shapes)
    device = torch.device("cpu")
    real = generation.features(reference.model, splits["test"].images, device)
    same = generation.compare(real, generation.features(reference.model, splits["train"].images, device))
    x = splits["train"].images.float() / 255
    blurs = [generation.compare(real, generation.features(reference.model, generation.blurred(x, sigma), device,
                                                          floats=True)) for sigma in (1.0, 2.0, 4.0)]
    noise = [generation.compare(real, generation.features(
        reference.model, (x + level * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1),
        device, floats=True)) for level in (0.2, 0.5, 1.0)]
    for worse in (blurs, noise):
        distances = [same["frechet_distance"]] + [found["frechet_distance"] for found in worse]
        kernels = [same["kernel_distance"]] + [found["kernel_distance"] for found in worse]
        assert distances == sorted(distances) and kernels == sorted(kernels), (distances, kernels)
        assert same["frechet_distance"] < 0.2 * worse[0]["frechet_distance"]
    assert same["precision"] > 0.7 and same["recall"] > 0.7 and blurs[-1]["recall"] < same["recall"]


def test_the_arithmetic_on_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0, 0])
    assert generation.frechet_distance(a, b) == pytest.approx(4.0, abs=0.2)  # |mean difference|^2, same covariance
    assert abs(generation.kernel_distance(a, rng.normal(size=(4000, 3)))) < 0.05
    assert generation.kernel_distance(a, b) > 0.5
    precision, recall = generation.precision_recall(a[:1000], a[1000:2000])
    assert precision > 0.8 and recall > 0.8
    assert max(generation.precision_recall(a[:1000], b[:1000] + np.array([3.0, 0, 0]))) < 0.2  # far apart: neither


def test_unlabelled_data_are_refused_with_the_reason(tmp_path):
    np.save(tmp_path / "plain.npy", synthetic_images(200, seed=1)[0])
    with pytest.raises(Exception, match="needs labelled images"):
        generation.reference_classifier(DataConfig(dataset=str(tmp_path / "plain.npy"), data_dir=str(tmp_path)))
