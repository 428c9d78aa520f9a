import json

import pytest

from aelab import AelabError
from aelab.config import RECIPES, DataConfig, ModelConfig, RunConfig, TrainConfig, train_config_for


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


@pytest.mark.parametrize("config, words", [
    (RunConfig(model=ModelConfig(latent_dim=0)), "--latent-dim"),
    (RunConfig(train=TrainConfig(epochs=-1)), "--epochs"),
    (RunConfig(data=DataConfig(val_fraction=1.5)), "--val-fraction"),
    (RunConfig(train=TrainConfig(lr=0)), "--lr"),
    (RunConfig(train=TrainConfig(loss="l1")), "--loss"),
    (RunConfig(train=TrainConfig(noise_factor=-0.1)), "--noise-factor"),
    (RunConfig(train=TrainConfig(shards=-1)), "--shards"),
])
def test_bad_values_name_the_option_and_a_fix(config, words):
    with pytest.raises(AelabError, match=words) as error:
        config.validate()
    assert "try" in str(error.value) or "choose" in str(error.value) or "must be" in str(error.value)


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
