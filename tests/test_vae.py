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


def test_a_run_that_leaves_the_kl_warmup_out_warms_up_over_its_first_quarter_and_records_it(tmp_path):
    data = make_splits()
    run = train(config(epochs=6), tmp_path / "vae", report=False, data=data)
    assert run.config.model.kl_warmup == 1.5
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["model"]["kl_warmup"] == 1.5
    assert load_run(tmp_path / "vae").model.kl_weight(torch.tensor(0.75)) == pytest.approx(0.5)
    none = train(config(epochs=6, model={"kl_warmup": 0.0}), tmp_path / "none", report=False, data=data)
    assert none.config.model.kl_warmup == 0.0 and none.model.kl_weight(torch.tensor(0.0)) == 1.0  # 0: none, as told
    longer = train(config(epochs=8), tmp_path / "vae", resume=True, report=False, data=data)  # extended: as planned
    assert longer.config.model.kl_warmup == 1.5
    assert train(config("ae", "mse", epochs=1), tmp_path / "ae", report=False, data=data).config.model.kl_warmup is None


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
    assert binarized(grey, DataConfig(binarize="dynamic"), "train", training=True) is grey  # drawn every epoch
    assert torch.equal(binarized(grey, DataConfig(binarize="dynamic"), "train").images,  # the tools: drawn once
                       binarized(grey, DataConfig(binarize="static"), "train").images)
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
    with pytest.raises(AelabError, match="`model.beta` applies to the vae and cvae families, not to ae"):
        RunConfig(model=ModelConfig(beta=2.0)).validate()
    with pytest.raises(AelabError, match="`model.samples` applies to the iwae family"):
        RunConfig(model=ModelConfig(kind="vae", samples=3)).validate()
    with pytest.raises(AelabError, match="unknown `data.binarize`"):
        RunConfig(data=DataConfig(binarize="half")).validate()
    assert math.isclose(build_model(ModelConfig(kind="vae"), "bce").kl_weight(None), 1.0)


# --- a variational run with the tools --------------------------------------------------------------

@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A VAE trained through the command line on a labelled .npz file, with its report."""
    from aelab.cli import main
    from conftest import synthetic_images

    folder = tmp_path_factory.mktemp("vae")
    images, labels = synthetic_images(320, seed=2)
    np.savez(folder / "shapes.npz", images=images, labels=labels)
    run = folder / "run"
    assert main(["train", "--data", str(folder / "shapes.npz"), "--model", "vae", "--loss", "bce", "--binarize",
                 "static", "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--arch", "tutorial", "--out",
                 str(run), "--quiet"]) == 0
    return run


def test_the_likelihood_measures_of_a_variational_run(vae_run, capsys):
    from aelab.cli import main
    from aelab.data.sets import data_for_run, load_run_split
    from aelab.likelihood import importance_nll, posterior_summary

    run = load_run(vae_run)
    test = load_run_split(run.config, data_for_run(run.config), "test")
    assert set(test.images.unique().tolist()) <= {0, 255}  # binarised as the run was (static: drawn once, seeded)
    nll = {k: importance_nll(run.model, test.images, samples=k, seed=0, codes_per_pass=64) for k in (1, 8, 64)}
    assert nll[64].mean() < nll[8].mean() < nll[1].mean()  # more samples, a tighter bound
    assert np.array_equal(nll[8], importance_nll(run.model, test.images, samples=8, seed=0, codes_per_pass=64))
    posterior = posterior_summary(run.model, test.images)
    assert posterior.kl_per_dimension.shape == (4,) and (posterior.kl_per_dimension >= 0).all()
    assert main(["evaluate", str(vae_run), "--nll-samples", "16", "--json", "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["nelbo"] == pytest.approx(found["recon"] + found["kl"], rel=1e-9) and found["nll"] < found["nelbo"]
    assert found["bits_per_dim"] == pytest.approx(found["nll"] / (784 * math.log(2)))
    assert 0 <= found["active_units"] <= 4 and len(found["kl_per_dimension"]) == 4
    assert main(["evaluate", str(vae_run), "--nll-samples", "4", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "negative ELBO" in said and "bits per dimension" in said and "active units" in said


def test_generation_from_the_prior_traversals_and_saved_images(vae_run, tmp_path, capsys):
    from aelab.cli import main

    assert main(["generate", str(vae_run), "--samples", "6", "--out", str(tmp_path / "six.npy"), "--quiet"]) == 0
    six = np.load(tmp_path / "six.npy")
    assert six.shape == (6, 1, 28, 28) and six.dtype == np.uint8
    assert main(["generate", str(vae_run), "--samples", "3", "--out", str(tmp_path / "pngs"), "--quiet"]) == 0
    assert sorted(path.name for path in (tmp_path / "pngs").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert main(["generate", str(vae_run), "--samples", "4", "--sampler", "gmm", "--quiet"]) == 0
    assert main(["generate", str(vae_run), "--traverse", "2", "--steps", "5", "--quiet"]) == 0
    assert (vae_run / "outputs" / "traversal-2.png").is_file()
    assert main(["generate", str(vae_run), "--traverse", "2", "--sampler", "prior"]) == 2
    assert "--sampler applies to --samples only" in capsys.readouterr().err
    page = (vae_run / "report.html").read_text()
    assert "The variational model" in page and "drawn from the prior N(0, I)" in page
    assert (vae_run / "figures" / "kl_per_dimension.png").is_file() and (vae_run / "figures" / "traversal.png").is_file()


def test_score_export_and_the_estimator_with_a_variational_model(vae_run, tmp_path, capsys):
    import onnxruntime

    from aelab import AutoencoderDetector
    from aelab.cli import main
    from conftest import synthetic_images

    assert main(["score", str(vae_run), "--method", "nelbo", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "nelbo"
    header = (vae_run / "outputs" / "scores-test.csv").read_text().splitlines()[0]
    assert header.endswith("density_raw,nelbo_raw")
    out = tmp_path / "encoder.onnx"
    assert main(["export", str(vae_run), "--part", "encoder", "--out", str(out), "--quiet"]) == 0
    session = onnxruntime.InferenceSession(str(out))
    assert [output.name for output in session.get_outputs()] == ["means", "log_variances"]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    means, log_variances = session.run(None, {"images": x})
    run = load_run(vae_run)
    with torch.no_grad():
        expected = run.model.posterior(torch.from_numpy(x))
    assert np.allclose(means, expected[0].numpy(), atol=1e-5) and np.allclose(log_variances, expected[1].numpy(), atol=1e-5)
    images, _ = synthetic_images(160, seed=5)
    detector = AutoencoderDetector(model="vae", latent_dim=4, epochs=1, batch_size=32, loss="bce").fit(images)
    assert detector.config_.model.kind == "vae" and "val_nelbo" in detector.metrics_
    with pytest.raises(AelabError, match="nelbo score .* needs a variational model"):
        AutoencoderDetector(method="nelbo", latent_dim=4, epochs=1, batch_size=32).fit(images)


def test_evaluate_measures_generated_images(vae_run, capsys):
    from aelab.cli import main

    assert main(["evaluate", str(vae_run), "--generation", "--generated", "200", "--json", "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)["generation"]
    assert found["sampler"] == "prior" and found["n_generated"] == 200 and found["classifier_accuracy"] > 0.9
    assert found["frechet_distance"] > 0 and 0 <= found["precision"] <= 1 and 0 <= found["recall"] <= 1
    assert main(["evaluate", str(vae_run), "--generation", "--generated", "50", "--quiet"]) == 0
    assert "not comparable to published FIDs" in capsys.readouterr().out


def test_the_usual_fid_from_an_inception_weights_file(vae_run, tmp_path, capsys, monkeypatch):
    """--inception-weights FILE: torch-fidelity's Inception network with its weights read from the file
    (here seeded random weights of the same layout, saved as the real file is), never downloaded;
    a missing or foreign file is refused with what to give."""
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from aelab import generation
    from aelab.cli import main

    weights = tmp_path / "pt_inception.pth"
    torch.save({}, weights)
    with monkeypatch.context() as patch:  # (only to build the network before its file exists)
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        blank = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    for module in blank.modules():  # (BatchNorm statistics as a trained network has them: not all 0 and 1)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    torch.save(blank.state_dict(), weights)
    network = generation.inception_network(weights)
    images = torch.from_numpy(np.load(vae_run.parent / "shapes.npz")["images"][:24]).unsqueeze(1)
    same = generation.inception_features(network, images)
    assert same.shape == (24, 2048)
    assert np.allclose(same, generation.inception_features(network, images.float() / 255, floats=True))
    assert generation.frechet_distance(same, same) == pytest.approx(0, abs=1e-3)

    assert main(["evaluate", str(vae_run), "--inception-weights", str(weights), "--generated", "24", "--json",
                 "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)["generation"]
    assert found["fid"] > 0 and found["inception_weights"] == str(weights) and found["n_generated"] == 24
    with pytest.raises(AelabError, match="does not exist; give the FID Inception weights"):
        generation.inception_network(tmp_path / "missing.pth")
    with pytest.raises(AelabError, match="FID takes grey or colour"):
        generation.inception_network(weights, channels=4)
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(AelabError, match="notes.pth is not the FID Inception weights"):
        generation.inception_network(tmp_path / "notes.pth")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
    assert main(["evaluate", str(vae_run), "--inception-weights", str(tmp_path / "other.pth"), "--generated", "24"]) == 2
    assert "other.pth is not the FID Inception weights (Error(s) in loading state_dict" in capsys.readouterr().err


def test_a_conditional_vae_draws_the_class_asked_for(tmp_path, capsys):
    """cvae: the encoder and decoder see the label; samples of each class lie nearest that class's
    mean image (the shapes are told apart by where their pixels are), and files without labels are
    refused."""
    from aelab import latent
    from aelab.cli import main
    from conftest import synthetic_images

    images, labels = synthetic_images(800, seed=7)
    np.savez(tmp_path / "shapes.npz", images=images, labels=labels)
    common = ["--data", str(tmp_path / "shapes.npz"), "--data-dir", str(tmp_path / "data")]
    assert main(["train", *common, "--model", "cvae", "--loss", "bce", "--epochs", "8", "--batch-size", "64",
                 "--arch", "tutorial", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = load_run(tmp_path / "run")
    assert run.config.model.n_classes == 4 and run.model.conditional
    means = torch.stack([torch.from_numpy(images[labels == label]).float().div(255).mean(0).flatten() for label in range(4)])
    for label in range(4):
        drawn = latent.prior_images(run, 40, seed=label, label=label).flatten(1)  # [40, 784]
        nearest = torch.cdist(drawn, means).argmin(1)
        assert float((nearest == label).float().mean()) >= 0.9, (label, nearest.tolist())
    assert main(["generate", str(tmp_path / "run"), "--samples", "8", "--label", "2", "--quiet", *common[2:]]) == 0
    assert main(["generate", str(tmp_path / "run"), "--samples", "8", "--label", "9", *common[2:]]) == 2
    assert "`label`" not in capsys.readouterr().err  # (said as the option: --label 9 is not a class)
    assert main(["reconstruct", str(tmp_path / "run"), str(tmp_path)]) == 2
    assert "conditional model (cvae): it needs each image's label" in capsys.readouterr().err
    with pytest.raises(AelabError, match="cvae family needs labelled images"):
        build_model(ModelConfig(kind="cvae"), "bce")


def test_a_conditional_vae_exports_its_parts_with_the_label_as_a_second_input(tmp_path):
    import onnxruntime

    from aelab import export

    data = make_splits()
    train(config("cvae", epochs=1), tmp_path / "run", report=False, data=data)
    run = load_run(tmp_path / "run")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    labels = torch.tensor([0, 3, 1])
    one_hot = F.one_hot(labels, 4).float().numpy()
    session = onnxruntime.InferenceSession(str(export(run, tmp_path / "decoder.onnx", "onnx", "decoder")))
    codes = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    decoded = session.run(None, {"codes": codes, "labels": one_hot})[0]
    with torch.no_grad():
        assert np.allclose(decoded, run.model.decode(torch.from_numpy(codes), labels).numpy(), atol=1e-5)
    session = onnxruntime.InferenceSession(str(export(run, tmp_path / "encoder.onnx", "onnx", "encoder")))
    means, _ = session.run(None, {"images": x, "labels": one_hot})
    with torch.no_grad():
        assert np.allclose(means, run.model.encode(torch.from_numpy(x), labels).numpy(), atol=1e-5)
