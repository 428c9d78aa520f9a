import dataclasses
import json
import re

import pytest

from aelab import AelabError
from aelab.config import FAMILIES, FAMILY_SETTINGS, RECIPES, DataConfig, ModelConfig, RunConfig, TrainConfig, \
    family_settings, memory_budget, train_config_for


def test_defaults_are_the_tutorials_settings_with_the_fast_schedule():
    config = RunConfig()
    assert config.model.latent_dim == 4
    assert (config.train.batch_size, config.train.weight_decay, config.train.epochs, config.train.seed) == (256, 1e-5, 30, 0)
    assert config.train.loss == "mse" and config.data.val_fraction == 0.2


def test_tutorial_recipe_is_constant_rate_batch_256_fixed_order():
    train = train_config_for("tutorial")
    assert (train.schedule, train.lr, train.batch_size, train.shuffle) == ("constant", 1e-3, 256, False)
    assert set(RECIPES) >= {"fast", "tutorial"}


def test_explicit_values_override_the_recipe():
    assert train_config_for("tutorial", lr=5e-3, epochs=None).lr == 5e-3


def test_json_round_trip():
    config = RunConfig(model=ModelConfig(latent_dim=7), train=TrainConfig(noise_factor=0.3))
    again = RunConfig.from_dict(json.loads(config.to_json()))
    assert again == config


# Every check of validate(): the setting, a bad value, and the value its message proposes (as the
# message writes it, and as the setting takes it).
BAD_VALUES = [
    ("data", "dataset", "", "mnist", "mnist"),
    ("data", "val_fraction", 1.5, "0.2", 0.2),
    ("data", "val_fraction", 0.0, "0.2", 0.2),
    ("data", "test_fraction", 1.0, "0.2", 0.2),
    ("data", "channels", 2, "1", 1),
    ("data", "image_size", "8", "64", "64"),
    ("data", "image_size", "64xwide", "48x64", "48x64"),
    ("data", "resize", "zoom", "stretch", "stretch"),
    ("data", "memory_limit", "lots", "512MB", "512MB"),
    ("data", "memory_limit", "-1G", "4GB", "4GB"),
    ("data", "classes", " , ", "0,6", "0,6"),
    ("data", "binarize", "half", "static", "static"),
    ("data", "augment", "zoom", "flip", "flip"),
    ("model", "kind", "vae2", "ae", "ae"),
    ("model", "latent_dim", 0, "4", 4),
    ("model", "in_channels", 0, "1", 1),
    ("model", "width", 0, "8", 8),
    ("model", "hidden", 0, "128", 128),
    ("model", "beta", 0, "1", 1.0),
    ("model", "kl_warmup", -1, "0", 0.0),
    ("model", "samples", 0, "1", 1),
    ("model", "n_classes", -1, "0", 0),
    ("model", "arch", "wide", "deep", "deep"),
    ("model", "stages", -1, "0", 0),
    ("train", "epochs", -1, "30", 30),
    ("train", "patience", -1, "10", 10),
    ("train", "batch_size", 0, "256", 256),
    ("train", "lr", 0, "1e-3", 1e-3),
    ("train", "lr", float("nan"), "1e-3", 1e-3),
    ("train", "weight_decay", -1, "1e-5", 1e-5),
    ("train", "weight_decay", float("inf"), "1e-5", 1e-5),
    ("train", "schedule", "step", "onecycle", "onecycle"),
    ("train", "loss", "l1", "bce", "bce"),
    ("train", "noise_factor", -0.1, "0.3", 0.3),
    ("train", "shards", -1, "0", 0),
    ("train", "precision", "fp8", "bf16", "bf16"),
    ("train", "keep", "first", "last", "last"),
    ("train", "recipe", "slow", "quick", "quick"),
]


def bad_config(section: str, name: str, value) -> RunConfig:
    config = RunConfig()
    setattr(getattr(config, section), name, value)
    if section == "model" and name in FAMILY_SETTINGS:  # (of a family that takes the setting)
        config.model.kind = next(kind for kind in FAMILIES if name in family_settings(kind))
    return config


@pytest.mark.parametrize("section, name, bad, written, proposed", BAD_VALUES,
                         ids=[f"{s}.{n}={b!r}" for s, n, b, _, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_the_setting_and_a_value_that_works(section, name, bad, written, proposed):
    """The message names the setting as `section.name`, and after its last ';' proposes a value; that
    value, put in place of the bad one, passes validation."""
    with pytest.raises(AelabError) as error:
        bad_config(section, name, bad).validate()
    message = str(error.value)
    assert f"`{section}.{name}`" in message, message
    assert ";" in message, f"no fix after the problem: {message}"
    proposals = re.split(r"[\s()]+|,\s", message.rsplit(";", 1)[1])  # "choose one of stretch, crop, pad"
    assert written in proposals, f"does not propose {written}: {message}"
    bad_config(section, name, proposed).validate()  # the proposal is a value that works


def test_every_refusal_names_its_setting_and_has_a_case_above():
    """Every setting validate() refuses a value of (a sweep of wrong values over every setting) is
    named by the message, and has a row in BAD_VALUES, where its proposed fix is checked: a new check
    in validate() without a fix in its message fails here or there."""
    covered = {(section, name) for section, name, *_ in BAD_VALUES}
    refused = set()
    for section, kind in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for setting in dataclasses.fields(kind):
            if (section, setting.name) in {("model", "image_size"), ("model", "image_width")}:
                continue  # the images' size, named as HxW: the next test
            for bad in (-1, 0, "", "zz", 1.5, float("nan")):
                try:
                    bad_config(section, setting.name, bad).validate()
                except AelabError as error:
                    assert f"`{section}.{setting.name}`" in str(error), str(error)
                    refused.add((section, setting.name))
                except (TypeError, ValueError, AttributeError):
                    pass  # a value of another type than the setting's (1.5 as a name): a program's mistake
    assert refused - covered == set(), "refused, but with no row in BAD_VALUES"
    assert len(refused) >= 20  # (the sweep does reach the checks)


def test_images_too_small_for_the_model_name_the_size_and_the_smallest():
    for height, width in ((8, None), (28, 12)):
        with pytest.raises(AelabError, match=r"at least 16x16 pixels.*; choose larger images") as error:
            RunConfig(model=ModelConfig(image_size=height, image_width=width)).validate()
        assert f"got {height}x{width or height}" in str(error.value)
    RunConfig(model=ModelConfig(image_size=16, image_width=16)).validate()


def test_sizes_and_memory_limits_read_as_a_user_writes_them():
    assert DataConfig(image_size="64").size() == (64, 64)
    assert DataConfig(image_size="48x64").size() == (48, 64)
    assert memory_budget("512MB") == 512 * 2**20 and memory_budget("1.5G") == int(1.5 * 2**30)
    assert memory_budget("auto") > 0


def test_a_config_from_before_shards_reads_as_one_shard():
    values = RunConfig().to_dict()
    del values["train"]["shards"]  # written by aelab before shards existed: its runs trained unsharded
    assert RunConfig.from_dict(values).train.shards == 1


def test_unknown_settings_in_a_config_file_are_refused(tmp_path):
    values = RunConfig().to_dict()
    values["model"]["depth"] = 9
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(AelabError, match="depth"):
        RunConfig.load(path)
