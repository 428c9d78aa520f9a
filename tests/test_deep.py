"""Your own images: the deep network, defaults from the data, augmentation, early stopping, the PCA
baseline and the SSIM loss."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from aelab import AelabError, Callback, RunConfig, TrainingInterrupted, load_run, train
from aelab.config import DataConfig, ModelConfig, train_config_for
from aelab.data.sets import ImageSet
from aelab.defaults import MIN_STEPS, from_data
from aelab.evaluation import pca_mse
from aelab.models.ae import ConvAutoencoder
from aelab.models.nets import DeepDecoder, DeepEncoder, stage_count


@pytest.mark.parametrize("size, width, stages", [(16, None, 1), (28, None, 2), (32, None, 2), (64, None, 3),
                                                 (128, None, 4), (40, 64, 3), (48, 20, 2)])
def test_the_deep_network_fits_any_image_and_ends_near_8x8(size, width, stages):
    assert stage_count(size, width) == stages
    encoder = DeepEncoder(8, 3, size, image_width=width, width=4, hidden=16)
    decoder = DeepDecoder(8, 3, size, image_width=width, width=4, hidden=16)
    x = torch.rand(2, 3, size, width or size)
    maps = encoder.encoder_cnn(x)
    assert 5 <= min(maps.shape[-2:]) <= 8 and maps.shape[1] == 4 * 2 ** (stages - 1)
    assert encoder(x).shape == (2, 8) and decoder(encoder(x)).shape == x.shape
    assert not any(isinstance(layer, torch.nn.ConvTranspose2d) for layer in decoder.modules())  # resize, then convolve


def test_a_residual_deep_autoencoder_trains_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((96, 3, 24, 40)) * 255).astype(np.uint8)
    splits = {name: ImageSet.from_arrays(images[a:b], np.zeros(b - a, int)) for name, (a, b) in
              {"train": (0, 64), "val": (64, 80), "test": (80, 96)}.items()}
    config = RunConfig(model=ModelConfig(arch="deep", residual=True, width=4, hidden=16, latent_dim=6),
                       train=train_config_for("fast", epochs=2, batch_size=16, lr=3e-3))
    result = train(config, tmp_path / "run", report=False, data=splits)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["arch"], saved["residual"], saved["image_size"], saved["image_width"]) == ("deep", True, 24, 40)
    run = load_run(tmp_path / "run")
    x = splits["test"].images.float().div(255)
    with torch.no_grad():
        assert torch.equal(run.model(x), result.model.eval()(x))


def test_old_run_folders_load_with_the_tutorials_network(tmp_path):
    """config.json without `model.arch` (before the deep network): the tutorial's."""
    from aelab.config import RunConfig as Config

    values = Config().to_dict()
    del values["model"]["arch"]
    assert Config.from_dict(values).model.arch == "tutorial"


def test_a_deep_run_saved_with_4x4_maps_builds_the_network_it_recorded():
    """Runs saved before the map grew to 8x8 recorded `model.stages` (4 at 64x64): the same network,
    weights and all, is built for them, and one saved today records 3."""
    from aelab.models.registry import build_model

    values = json.loads(RunConfig(model=ModelConfig(arch="deep", image_size=64, in_channels=3, stages=4, width=4,
                                                    hidden=16)).to_json())  # (as config.json holds it)
    old = build_model(RunConfig.from_dict(values).model)
    assert old.encoder.encoder_cnn(torch.rand(1, 3, 64, 64)).shape == (1, 32, 4, 4)
    assert old.decoder.decoder_lin[2].out_features == 32 * 4 * 4  # the weights saved with it fit
    today, _ = from_data(RunConfig(data=DataConfig(dataset="/pictures")), (3, 64, 64), 570, explicit=set())
    assert today.model.stages == 3 and stage_count(64) == 3


def test_defaults_from_the_data_keep_what_the_user_gave_and_say_what_they_chose():
    folder = RunConfig(data=DataConfig(dataset="/pictures"))
    chosen, said = from_data(folder, (3, 64, 64), 570, explicit=set())
    assert (chosen.model.arch, chosen.model.stages, chosen.model.width, chosen.model.latent_dim) == ("deep", 3, 16, 32)
    assert chosen.train.epochs * -(-570 // chosen.train.batch_size) >= MIN_STEPS  # counted in steps, with a floor
    assert "chosen from the data (570 training images of 3 x 64 x 64)" in said and "--augment none" in said
    assert chosen.data.augment == "flip,shift,turn,colour"  # a small folder
    assert chosen.data.augment_list() == ["flip", "shift", "turn", "colour"]
    plain, said = from_data(replace(folder, data=replace(folder.data, augment="none")), (3, 64, 64), 570,
                            explicit={"data.augment"})
    assert plain.data.augment_list() == [] and "flipped" not in said  # --augment none: as they are
    large, _ = from_data(folder, (3, 64, 64), 50_000, explicit=set())
    assert large.data.augment is None and large.train.batch_size == 256
    tutorial, _ = from_data(replace(folder, train=train_config_for("tutorial")), (3, 64, 64), 570, {"train.recipe"})
    assert tutorial.model.arch == "tutorial" and tutorial.train == train_config_for("tutorial")  # --recipe tutorial
    quick, said = from_data(replace(folder, train=train_config_for("quick")), (3, 64, 64), 570, {"train.recipe"})
    assert quick.model.arch == "deep" and quick.train == train_config_for("quick") and "recipe quick" in said
    deep, _ = from_data(replace(folder, model=ModelConfig(arch="deep")), (3, 64, 64), 570, {"model.arch"})
    assert (deep.model.width, deep.model.latent_dim, deep.data.augment) == (16, 32, "flip,shift,turn,colour")  # --arch deep too
    named, _ = from_data(RunConfig(model=ModelConfig(arch="deep")), (1, 28, 28), 570, {"model.arch"})
    assert named.model.arch == "deep" and named.data.augment is None  # never for the named datasets by default
    given, _ = from_data(folder, (3, 64, 64), 570, explicit={"model.latent_dim", "train.epochs"})
    assert given.model.latent_dim == 4 and given.train.epochs == 30  # what the user gave stays
    mnist, said = from_data(RunConfig(), (1, 28, 28), 48_000, explicit=set())
    assert mnist.model.arch == "tutorial" and mnist.model == RunConfig(model=ModelConfig(arch="tutorial")).model
    assert said == "" and mnist.train == RunConfig().train  # the tutorial's network and recipe, as ever
    chosen_arch, _ = from_data(RunConfig(data=DataConfig(dataset="/pictures"), model=ModelConfig(arch="tutorial")),
                               (3, 64, 64), 570)
    assert chosen_arch.model.arch == "tutorial" and chosen_arch.model.latent_dim == 4  # a chosen network: as given


def folder_of_pictures(root, n=120, size=32):
    """Coloured blobs on a dark background, as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 8)]
        picture = np.zeros((size, size, 3), np.uint8)
        picture[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(60, 255, 3)
        Image.fromarray(picture).save(root / f"{i:03d}.png")


def test_a_folder_run_resumes_from_python_with_the_config_that_started_it(tmp_path):
    """What was chosen from the data is not a difference: the same config extends the run, with
    its chosen batch, rate and augmentation kept."""
    from aelab.config import TrainConfig

    folder_of_pictures(tmp_path / "pictures", n=60)
    config = RunConfig(data=DataConfig(dataset=str(tmp_path / "pictures"), data_dir=str(tmp_path / "cache")),
                       train=TrainConfig(epochs=1))
    first = train(config, tmp_path / "run", report=False)
    assert first.config.train.batch_size == 64 and first.config.data.augment == "flip,shift,turn,colour"
    extended = train(replace(config, train=TrainConfig(epochs=2)), tmp_path / "run", resume=True, report=False)
    assert len(extended.metrics) == 2 and extended.config.train == replace(first.config.train, epochs=2)
    assert extended.config.data.augment == "flip,shift,turn,colour" and extended.config.model == first.config.model
    with pytest.raises(AelabError, match="model.latent_dim"):  # what the user sets is still compared
        train(replace(config, model=ModelConfig(latent_dim=5)), tmp_path / "run", resume=True, report=False)


def test_a_resumed_folder_run_keeps_the_length_it_recorded_when_the_rules_change(tmp_path, monkeypatch):
    """A run chose 30 epochs (the default, the step floor then being lower): resumed after the floor
    grew, it still ends at 30, on the schedule it planned."""
    import aelab.defaults

    class Interrupt(Callback):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] == 1:
                import os
                import signal
                os.kill(os.getpid(), signal.SIGINT)

    folder_of_pictures(tmp_path / "pictures", n=40, size=16)
    config = RunConfig(data=DataConfig(dataset=str(tmp_path / "pictures"), data_dir=str(tmp_path / "cache")))
    monkeypatch.setattr(aelab.defaults, "MIN_STEPS", 2)
    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "run", report=False, callbacks=[Interrupt()])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 30
    monkeypatch.setattr(aelab.defaults, "MIN_STEPS", 40)  # 40 epochs of 1 step, were the run chosen again
    resumed = train(None, tmp_path / "run", resume=True, report=False)
    assert resumed.config.train.epochs == 30 and len(resumed.metrics) == 30


def test_a_folder_trains_the_deep_network_chosen_from_it_and_beside_pca(tmp_path, capsys):
    from aelab.cli import main

    folder_of_pictures(tmp_path / "pictures")
    assert main(["train", "--data", str(tmp_path / "pictures"), "--data-dir", str(tmp_path / "cache"), "--epochs", "3",
                 "--out", str(tmp_path / "run"), "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "chosen from the data (86 training images of 3 x 32 x 32): the deep network with 2 stages" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["arch"] == "deep" and saved["model"]["latent_dim"] == 16 and saved["train"]["epochs"] == 3
    assert saved["data"]["augment"] == "flip,shift,turn,colour"  # a small folder
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert 0 < evaluation["test_pca_mse"] < 0.2
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0  # the same baseline, from the run folder
    found = json.loads(capsys.readouterr().out)
    assert found["pca_mse"] == pytest.approx(evaluation["test_pca_mse"], rel=1e-6)
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    assert "test: PCA with 16 components (the same code size, fitted on the training split): MSE" in capsys.readouterr().out


def test_pca_baseline_is_the_error_of_pca_with_as_many_components():
    rng = np.random.default_rng(0)
    basis = rng.random((3, 64))
    codes = rng.random((300, 3))
    images = torch.from_numpy((codes @ basis / 3 * 255).clip(0, 255).astype(np.uint8).reshape(300, 1, 8, 8))
    assert pca_mse(images[:200], images[200:], 3) < 1e-4  # three components rebuild three-dimensional data
    assert pca_mse(images[:200], images[200:], 1) > 10 * pca_mse(images[:200], images[200:], 3)


def test_augmentation_changes_training_images_seeded_and_resumes_exactly(tmp_path):
    from aelab.data.batches import augment_draw, noise_generator

    x = torch.rand(4, 3, 32, 32)
    flipped = augment_draw(x, noise_generator(0, "cpu"), ["flip"])
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(x, flipped))
    assert not torch.equal(flipped, x) and torch.equal(flipped, augment_draw(x, noise_generator(0, "cpu"), ["flip"]))
    rows = augment_draw(x[1:3], noise_generator(5, "cpu"), ["flip", "shift"], (1, 4))
    assert torch.equal(rows, augment_draw(x, noise_generator(5, "cpu"), ["flip", "shift"])[1:3])
    rng = np.random.default_rng(0)
    images = (rng.random((96, 1, 28, 28)) * 255).astype(np.uint8)
    splits = {name: ImageSet.from_arrays(images[a:b], np.zeros(b - a, int)) for name, (a, b) in
              {"train": (0, 64), "val": (64, 80), "test": (80, 96)}.items()}
    config = RunConfig(data=DataConfig(augment="flip,shift,turn,colour"), train=train_config_for("fast", epochs=2, batch_size=16,
                                                                                      shards=2))
    straight = train(config, tmp_path / "straight", report=False, data=splits)

    class Interrupt(Callback):
        def on_step_end(self, trainer):
            if trainer.epoch == 1 and trainer.step == 2:
                import os
                import signal
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "split", report=False, data=splits, callbacks=[Interrupt()])
    resumed = train(None, tmp_path / "split", resume=True, report=False, data=splits)
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()))
    plain = train(replace(config, data=DataConfig(augment="none")), tmp_path / "plain", report=False, data=splits)
    assert straight.metrics[0]["train_loss"] != plain.metrics[0]["train_loss"]  # the training images were changed


def test_turns_and_colour_orders_move_pixels_only_and_draw_what_the_whole_batch_draws():
    from aelab.data.batches import augment_draw, noise_generator

    x = torch.rand(48, 3, 8, 8)
    changed = augment_draw(x, noise_generator(0, "cpu"), ["turn", "colour"])
    orders = list(itertools.permutations(range(3)))
    seen = [next((k, order) for k in range(4) for order in orders
                 if torch.equal(torch.rot90(a, k, (1, 2))[list(order)], b)) for a, b in zip(x, changed)]
    assert {k for k, _ in seen} == {0, 1, 2, 3} and len({order for _, order in seen}) == 6  # every turn and order
    wide = torch.rand(16, 1, 6, 10)  # not square: half turns only; grey: no colour order to change
    turned = augment_draw(wide, noise_generator(0, "cpu"), ["turn", "colour"])
    assert all(torch.equal(a, b) or torch.equal(torch.rot90(a, 2, (1, 2)), b) for a, b in zip(wide, turned))
    assert not torch.equal(turned, wide)
    every = ["flip", "shift", "turn", "colour"]
    assert torch.equal(augment_draw(x[5:9], noise_generator(3, "cpu"), every, (5, 48)),
                       augment_draw(x, noise_generator(3, "cpu"), every)[5:9])  # a shard's rows, as the whole batch's
    drawn, by_hand = noise_generator(4, "cpu"), noise_generator(4, "cpu")  # flip,shift draw what they drew before
    augment_draw(x, drawn, ["flip", "shift"])
    torch.rand(48, generator=by_hand), [torch.randint(-m, m + 1, (48,), generator=by_hand) for m in (1, 1)]
    assert torch.equal(drawn.get_state(), by_hand.get_state())
    with pytest.raises(AelabError, match="turn, colour"):
        DataConfig(augment="flip,spin").validate()


def test_patience_stops_when_validation_stops_improving_and_keeps_the_best(tmp_path):
    from aelab.run import summary

    rng = np.random.default_rng(0)
    images = (rng.random((96, 1, 28, 28)) * 255).astype(np.uint8)  # noise: nothing to learn, validation soon stalls
    splits = {name: ImageSet.from_arrays(images[a:b], np.zeros(b - a, int)) for name, (a, b) in
              {"train": (0, 64), "val": (64, 80), "test": (80, 96)}.items()}
    config = RunConfig(train=train_config_for("fast", epochs=60, batch_size=16, lr=1e-2, patience=2))
    result = train(config, tmp_path / "run", report=False, data=splits)
    epochs = len(result.metrics)
    assert epochs < 60 and result.evaluation["stopped_early"] == epochs
    assert epochs - result.evaluation["best_epoch"] == 2
    assert "finished early" in summary(tmp_path / "run")["status"]


def test_the_ssim_loss_trains_and_is_reported_per_image(tmp_path):
    model = ConvAutoencoder(4, 3, 32, arch="deep", width=4, hidden=16, loss="ssim")
    x = torch.rand(6, 3, 32, 32)
    loss = model.training_loss(x, x)
    loss.backward()
    assert 0 < float(loss.detach()) < 1 and model.encoder.encoder_lin[0].weight.grad is not None
    with torch.no_grad():
        measured = model.measure(x, x, ("mse", "ssim"))
    assert measured.terms["ssim"].shape == (6,) and float(measured.terms["ssim"].mean()) == pytest.approx(float(loss.detach()),
                                                                                                           rel=1e-5)
    with pytest.raises(AelabError, match="not a likelihood of the variational family"):
        from aelab.models.registry import build_model

        build_model(ModelConfig(kind="vae"), "ssim")


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_every_family_takes_the_deep_network(tmp_path, kind):
    rng = np.random.default_rng(0)
    images = (rng.random((64, 3, 32, 32)) * 255).astype(np.uint8)
    labels = np.arange(64) % 2
    splits = {name: ImageSet.from_arrays(images[a:b], labels[a:b], ("a", "b")) for name, (a, b) in
              {"train": (0, 40), "val": (40, 52), "test": (52, 64)}.items()}
    config = RunConfig(model=ModelConfig(kind=kind, arch="deep", width=4, hidden=16, latent_dim=3),
                       train=train_config_for("fast", epochs=1, batch_size=8, loss="bce"))
    result = train(config, tmp_path / "run", report=False, data=splits)
    assert result.evaluation["test_nelbo"] > 0 and isinstance(result.model.encoder, DeepEncoder)
