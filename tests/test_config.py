import json
import re

import pytest

from aelab import AelabError
from aelab.config import RECIPES, DataConfig, ModelConfig, RunConfig, TrainConfig, memory_budget, train_config_for


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


FIX = re.compile(r"; (try|choose|give) \S")  # a message ends by naming a fix: "...; try 0.2", "...; choose mse or bce"


@pytest.mark.parametrize("config, words", [
    (RunConfig(data=DataConfig(dataset="")), "`data.dataset`"),
    (RunConfig(data=DataConfig(channels=2)), "`data.channels`"),
    (RunConfig(data=DataConfig(image_size="8")), "`data.image_size`"),
    (RunConfig(data=DataConfig(image_size="64xwide")), "`data.image_size`"),
    (RunConfig(data=DataConfig(resize="zoom")), "`data.resize`"),
    (RunConfig(data=DataConfig(memory_limit="lots")), "`data.memory_limit`"),
    (RunConfig(data=DataConfig(val_fraction=1.5)), "`data.val_fraction`"),
    (RunConfig(model=ModelConfig(latent_dim=0)), "`model.latent_dim`"),
    (RunConfig(model=ModelConfig(in_channels=0)), "`model.in_channels`"),
    (RunConfig(model=ModelConfig(image_size=8)), "16x16"),
    (RunConfig(train=TrainConfig(epochs=-1)), "`train.epochs`"),
    (RunConfig(train=TrainConfig(batch_size=0)), "`train.batch_size`"),
    (RunConfig(train=TrainConfig(lr=0)), "`train.lr`"),
    (RunConfig(train=TrainConfig(weight_decay=-1)), "`train.weight_decay`"),
    (RunConfig(train=TrainConfig(schedule="step")), "`train.schedule`"),
    (RunConfig(train=TrainConfig(loss="l1")), "`train.loss`"),
    (RunConfig(train=TrainConfig(noise_factor=-0.1)), "`train.noise_factor`"),
    (RunConfig(train=TrainConfig(shards=-1)), "`train.shards`"),
    (RunConfig(train=TrainConfig(precision="fp8")), "`train.precision`"),
    (RunConfig(train=TrainConfig(keep="first")), "`train.keep`"),
    (RunConfig(train=TrainConfig(recipe="slow")), "`train.recipe`"),
])
def test_bad_values_name_the_setting_and_a_fix(config, words):
    with pytest.raises(AelabError, match=re.escape(words)) as error:
        config.validate()
    assert FIX.search(str(error.value)), f"names no fix: {error.value}"


def test_sizes_and_memory_limits_read_as_a_user_writes_them():
    assert DataConfig(image_size="64").size() == (64, 64)
    assert DataConfig(image_size="48x64").size() == (48, 64)
    assert memory_budget("512MB") == 512 * 2**20 and memory_budget("1.5G") == int(1.5 * 2**30)
    assert memory_budget("auto") > 0


def test_the_fix_check_fails_on_a_message_without_a_fix():
    assert not FIX.search("`train.loss` must be mse or bce, got 'l1'")
    assert FIX.search("unknown `train.loss` 'l1'; choose mse or bce")


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
