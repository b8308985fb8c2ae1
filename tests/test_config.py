"""Recipes, overrides and their validation."""

import pytest

from selfsup.config import RECIPES_DIR, ConfigError, build_config, load_config, to_yaml
from selfsup.methods.simclr import SimCLRConfig


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert cfg.trainer.epochs > 0
    assert type(cfg.method).__name__.endswith("Config")


def test_overrides_apply_and_are_typed():
    cfg = load_config("quick", ["trainer.epochs=3", "method.temperature=0.5", "views.scale=[0.5,1.0]"])
    assert cfg.trainer.epochs == 3
    assert isinstance(cfg.method, SimCLRConfig) and cfg.method.temperature == 0.5
    assert list(cfg.views.scale) == [0.5, 1.0]


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"epochs.*trainer\.epoch\b"):
        load_config("quick", ["trainer.epoch=3"])


def test_unknown_method_key_is_refused():
    with pytest.raises(ConfigError, match=r"temperature.*method\.temprature"):
        load_config("quick", ["method.temprature=0.5"])


def test_ill_typed_value_is_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        load_config("quick", ["trainer.batch_size=lots"])


def test_bad_choice_is_refused():
    with pytest.raises(ConfigError, match="trainer.optimizer"):
        load_config("quick", ["trainer.optimizer=adagrad"])
    with pytest.raises(ConfigError, match="temperature must be positive"):
        load_config("quick", ["method.temperature=-1"])


def test_unknown_method_and_recipe():
    with pytest.raises(ConfigError, match="simclr"):
        load_config("quick", ["method.name=nope"])
    with pytest.raises(ConfigError, match="no recipe"):
        load_config("does-not-exist")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config("quick", ["trainer.epochs"])


def test_yaml_round_trip(tmp_path):
    cfg = load_config("cifar10_simclr", ["trainer.epochs=7"])
    f = tmp_path / "c.yaml"
    f.write_text(to_yaml(cfg))
    again = build_config(f)
    assert again == cfg
