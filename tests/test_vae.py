"""The variational families (vae, iwae): their objective and terms, training through every step,
binarised data, exact resume."""

import copy
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aelab import AelabError, Callback, RunConfig, TrainingInterrupted, load_run, train
from aelab.config import DataConfig, ModelConfig, train_config_for
from aelab.data.sets import ImageSet, binarized
from aelab.models.registry import build_model
from aelab.steps import ShardedStep
from aelab.training import Trainer
from conftest import make_splits

CPU = torch.device("cpu")


def config(kind="vae", loss="bce", binarize=None, model=None, **train):
    values = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "loss": loss, **train}
    return RunConfig(data=DataConfig(binarize=binarize), model=ModelConfig(kind=kind, **(model or {})),
                     train=train_config_for("fast", **values))


def weights(result):
    return {name: value.detach().clone() for name, value in result.model.state_dict().items()}


@pytest.mark.parametrize("kind, loss, model", [("vae", "bce", {}), ("vae", "mse", {"beta": 2.0, "kl_warmup": 1.0}),
                                               ("iwae", "bce", {"samples": 3})])
def test_a_variational_family_trains_reports_its_terms_and_reloads(tmp_path, kind, loss, model):
    result = train(config(kind, loss, model=model, epochs=3), tmp_path / "run", report=False, data=make_splits())
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["kind"] == kind and all(saved[key] == value for key, value in model.items())
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["test_nelbo"] == pytest.approx(evaluation["test_recon"] + evaluation["test_kl"], rel=1e-9)
    assert evaluation["test_kl"] > 0 and (kind != "iwae" or "test_iw_nelbo" in evaluation)
    run = load_run(tmp_path / "run")
    x = make_splits()["test"].images.float().div(255)
    with torch.no_grad():
        assert torch.equal(run.model(x), result.model.eval()(x))


def test_the_terms_are_the_elbo_and_its_parts(tmp_path):
    model = build_model(ModelConfig(kind="iwae", samples=4), "bce").eval()
    x = (torch.rand(6, 1, 28, 28) > 0.5).float()
    draws = torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        measured = model.measure(x, x, model.terms, draws)
        mean, log_variance, _ = model.posterior(x)
        z = mean + torch.exp(0.5 * log_variance) * draws[:, 0]
        recon = F.binary_cross_entropy_with_logits(model.decoder.logits(z), x, reduction="none").sum((1, 2, 3))
        kl = -0.5 * (1 + log_variance - mean.square() - log_variance.exp()).sum(1)
    terms = measured.terms
    assert torch.allclose(terms["recon"], recon.double(), rtol=1e-5) and torch.allclose(terms["kl"], kl.double(), rtol=1e-5)
    assert torch.allclose(terms["nelbo"], terms["recon"] + terms["kl"])
    assert torch.equal(measured.codes, mean) and measured.reconstructions.shape == x.shape
    assert float(terms["iw_nelbo"].mean()) < float(terms["nelbo"].mean())  # the K-sample bound is tighter
    with torch.no_grad():  # K = 1: the importance-weighted bound is the ELBO with a sampled KL
        one = -model.log_weights(x, draws[:, :1])[:, 0]
    assert torch.allclose(one.double(), terms["nelbo"] - terms["kl"] + (one.double() - terms["recon"]), rtol=1e-5)


def test_the_gaussian_decoder_learns_its_variance_and_beta_rises_over_the_warmup():
    model = build_model(ModelConfig(kind="vae", beta=4.0, kl_warmup=2.0), "mse")
    assert model.objective == "beta_nelbo" and "beta_nelbo" in model.terms
    assert [float(model.kl_weight(torch.tensor(epochs))) for epochs in (0.0, 1.0, 2.0, 5.0)] == [0.0, 2.0, 4.0, 4.0]
    x = torch.rand(4, 1, 28, 28)
    loss = model.training_loss(x, x, torch.randn(4, *model.draw_shape), torch.tensor(1.0))
    loss.backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.abs().sum() > 0  # sigma is learned


def test_a_sharded_step_gives_the_gradient_of_the_batch_mean_loss_with_its_draws(tmp_path):
    splits = make_splits()
    trainer = Trainer(config("iwae", model={"samples": 2}, shards=2), tmp_path, splits, device=CPU)
    clean = splits["train"].images[:30].float().div(255).contiguous(memory_format=torch.channels_last)
    draws = torch.randn(30, *trainer.model.draw_shape, generator=torch.Generator().manual_seed(1))
    progress = torch.tensor(0.5)
    reference = copy.deepcopy(trainer.model)
    loss = sum(reference.training_loss(clean[a:b], clean[a:b], draws[a:b], progress) * (b - a) / 30
               for a, b in ((0, 15), (15, 30)))
    loss.backward()
    with ShardedStep(trainer.model, trainer.optimizer, trainer.config.train, 2) as step:
        batch_loss = step(clean, clean, draws, progress)
    assert float(batch_loss) == pytest.approx(float(loss.detach()), rel=1e-6)
    mine = torch.cat([parameter.grad.flatten() for parameter in trainer.model.parameters()])
    theirs = torch.cat([parameter.grad.flatten() for parameter in reference.parameters()])
    # (sums of hundreds of nats: float rounding, in another order on the shard's thread, relative to the largest)
    assert (mine - theirs).abs().max() <= 1e-3 * theirs.abs().max()


def test_draws_are_seeded_and_shards_do_not_change_the_run(tmp_path):
    data = make_splits()
    a = train(config(shards=1), tmp_path / "a", report=False, data=data)
    b = train(config(shards=1), tmp_path / "b", report=False, data=data)
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))
    other = train(config(shards=1, seed=1), tmp_path / "c", report=False, data=data)
    assert not torch.equal(weights(a)["log_variance.weight"], weights(other)["log_variance.weight"])


@pytest.mark.parametrize("binarize", ["dynamic", None])
def test_resume_mid_epoch_is_bit_identical(tmp_path, binarize):
    """Interrupted in the middle of an epoch, the run goes on with the same draws (codes and, with
    dynamic binarisation, pixels) and the same KL weight as the straight run."""
    data = make_splits()
    options = {"model": {"kl_warmup": 1.5}, "binarize": binarize, "shards": 2, "epochs": 3}
    straight = train(config(**options), tmp_path / "straight", report=False, data=data)

    class InterruptInEpoch2(Callback):
        def on_step_end(self, trainer):
            if trainer.epoch == 1 and trainer.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="at epoch 2, step 4"):
        train(config(**options), tmp_path / "split", report=False, data=data, callbacks=[InterruptInEpoch2()])
    resumed = train(None, tmp_path / "split", resume=True, report=False, data=data)
    assert all(torch.equal(x, y) for x, y in zip(weights(straight).values(), weights(resumed).values()))
    assert [row["val_loss"] for row in straight.metrics] == [row["val_loss"] for row in resumed.metrics]


def test_binarised_pixels_as_papers_use_them():
    grey = ImageSet.from_arrays(np.linspace(0, 255, 2 * 16 * 16).reshape(2, 16, 16).astype(np.uint8), np.zeros(2, int))
    threshold = binarized(grey, DataConfig(binarize="threshold"), "test").images
    assert torch.equal(threshold, (grey.images > 127).to(torch.uint8) * 255)
    static = binarized(grey, DataConfig(binarize="static"), "test").images
    assert set(static.unique().tolist()) <= {0, 255} and torch.equal(static, binarized(grey, DataConfig(binarize="static"), "test").images)
    assert not torch.equal(static, binarized(grey, DataConfig(binarize="static"), "val").images)  # each split its own draw
    assert torch.equal(binarized(grey, DataConfig(binarize="dynamic"), "test").images, static)  # evaluated once, seeded
    assert binarized(grey, DataConfig(binarize="dynamic"), "train") is grey  # training draws every epoch
    share = float((static > 0).float().mean())
    assert abs(share - float(grey.images.float().div(255).mean())) < 0.05  # a Bernoulli draw of each grey level


def test_dynamic_binarisation_draws_training_images_anew_every_epoch(tmp_path):
    from aelab.data.batches import binarize_draw, noise_generator

    images = torch.full((4, 1, 16, 16), 0.5)
    first = binarize_draw(images, noise_generator(1, "cpu"))
    again = binarize_draw(images, noise_generator(1, "cpu"))
    other = binarize_draw(images, noise_generator(2, "cpu"))
    assert torch.equal(first, again) and not torch.equal(first, other) and set(first.unique().tolist()) == {0.0, 1.0}
    rows = binarize_draw(images[1:3], noise_generator(1, "cpu"), (1, 4))
    assert torch.equal(rows, first[1:3])  # a shard's rows of the whole batch's draw


def test_family_settings_are_checked():
    with pytest.raises(AelabError, match="`model.beta` applies to the vae family, not to ae"):
        RunConfig(model=ModelConfig(beta=2.0)).validate()
    with pytest.raises(AelabError, match="`model.samples` applies to the iwae family"):
        RunConfig(model=ModelConfig(kind="vae", samples=3)).validate()
    with pytest.raises(AelabError, match="unknown `data.binarize`"):
        RunConfig(data=DataConfig(binarize="half")).validate()
    assert math.isclose(build_model(ModelConfig(kind="vae"), "bce").kl_weight(None), 1.0)
