"""One batched pass: per-image errors, codes and reconstructions, the same in any chunk size."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aelab import AelabError, load_run
from aelab.data.batches import add_noise, noise_generator, to_unit
from aelab.evaluation import evaluate, reconstruction_loss
from aelab.inference import infer
from aelab.latent import encode
from conftest import make_splits


@pytest.fixture(scope="module")
def model_and_images(trained_run):
    return load_run(trained_run).model, make_splits()["test"].images  # uint8 [64, 1, 28, 28]


def test_per_image_results_are_what_the_model_computes(model_and_images):
    model, images = model_and_images
    result = infer(model, images, terms=("mse", "bce"), codes=True, reconstructions=True, batch_size=10)
    x = to_unit(images)
    with torch.no_grad():
        codes = model.encode(x)
        logits = model.decoder.logits(codes)
    output = torch.sigmoid(logits)
    assert result.mse.shape == result.terms["bce"].shape == (64,) and result.codes.shape == (64, 4)
    assert result.reconstructions.shape == (64, 1, 28, 28)
    assert np.allclose(result.mse, (output - x).square().mean((1, 2, 3)).double().numpy(), rtol=1e-5)
    expected_bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").mean((1, 2, 3))
    assert np.allclose(result.terms["bce"], expected_bce.double().numpy(), rtol=1e-5)
    assert np.allclose(result.codes, codes.numpy(), atol=1e-6)
    assert torch.allclose(result.reconstructions, output, atol=1e-6)
    assert result.mean("mse") == pytest.approx(float((output - x).square().mean()), rel=1e-5)


def test_chunks_do_not_change_the_results(model_and_images):
    model, images = model_and_images
    whole = infer(model, images, terms=("mse", "bce"), codes=True)
    for batch_size in (1, 7, 64):
        parts = infer(model, images, terms=("mse", "bce"), codes=True, batch_size=batch_size)
        assert np.allclose(parts.mse, whole.mse, rtol=1e-6) and np.allclose(parts.terms["bce"], whole.terms["bce"], rtol=1e-6)
        assert np.allclose(parts.codes, whole.codes, atol=1e-6)


def test_only_what_is_asked_for_is_computed(model_and_images):
    model, images = model_and_images
    result = infer(model, images, terms=(), codes=True)
    assert result.terms == {} and result.mse is None and result.reconstructions is None
    assert np.array_equal(result.codes, encode(model, images))
    empty = infer(model, images[:0], terms=("mse", "bce"), codes=True, reconstructions=True)
    assert empty.mse.shape == (0,) and empty.codes.shape == (0, 4) and empty.reconstructions.shape == (0, 1, 28, 28)


def test_noise_gives_the_denoising_error_against_the_clean_image(model_and_images):
    model, images = model_and_images
    result = infer(model, images, noise_factor=0.3, seed=5, inputs=True)
    x = to_unit(images)
    noisy = add_noise(x, 0.3, noise_generator(5, "cpu"))
    assert torch.equal(result.inputs, noisy)  # what the model saw
    with torch.no_grad():
        expected = (model(noisy) - x).square().mean((1, 2, 3))
    assert np.allclose(result.mse, expected.double().numpy(), rtol=1e-5)
    assert reconstruction_loss(model, images, noise_factor=0.3, seed=5) == pytest.approx(result.mean(), rel=1e-12)


def test_evaluate_and_reconstruction_loss_are_the_mean_of_the_per_image_errors(model_and_images):
    model, images = model_and_images
    per_image = infer(model, images, terms=("mse", "bce"))
    assert reconstruction_loss(model, images) == pytest.approx(float(per_image.mse.mean()), rel=1e-12)
    assert reconstruction_loss(model, images, "bce") == pytest.approx(float(per_image.terms["bce"].mean()), rel=1e-12)
    assert evaluate(model, make_splits()["test"]).mse == pytest.approx(float(per_image.mse.mean()), rel=1e-12)


def test_inference_leaves_the_model_as_it_was(model_and_images):
    model, images = model_and_images
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer(model, images, codes=True)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


def test_a_set_evaluated_in_parts_gets_the_noise_it_gets_whole(model_and_images):
    """Each chunk's noise follows from its place in the set: parts that start at chunk boundaries
    (a rank's share under torchrun) give the per-image errors of the whole pass."""
    model, images = model_and_images
    whole = infer(model, images, noise_factor=0.3, seed=5, batch_size=16, inputs=True)
    first = infer(model, images[:32], noise_factor=0.3, seed=5, batch_size=16, inputs=True)
    second = infer(model, images[32:], noise_factor=0.3, seed=5, batch_size=16, inputs=True, first=32)
    assert torch.equal(torch.cat([first.inputs, second.inputs]), whole.inputs)
    assert np.array_equal(np.concatenate([first.mse, second.mse]), whole.mse)
    shifted = infer(model, images[32:], noise_factor=0.3, seed=5, batch_size=16)  # (as if it were the set's start)
    assert not np.array_equal(shifted.mse, second.mse)


def test_terms_are_asked_by_name_each_once(model_and_images):
    model, images = model_and_images
    assert infer(model, images, terms="mse").mse.shape == (64,)
    assert infer(model, images, terms=("mse", "mse", "bce")).mse.shape == (64,)
    with pytest.raises(AelabError, match="reports mse, bce, ssim per image, not kl"):
        infer(model, images, terms=("kl",))
