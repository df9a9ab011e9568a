import pytest

from shared.errors import ConfigError
from transfer.config import PolyheadConfig, config_from_dict, dump_config, load_config


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "polyhead.yaml"
    path.write_text(dump_config(PolyheadConfig()))
    assert load_config(path) == PolyheadConfig()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trunkk": "student"}, r"unknown key\(s\) \['trunkk'\]"),
        ({"train": {"epoch": 3}}, r"unknown key\(s\) \['epoch'\] in train"),
        ({"train": {"epochs": "many"}}, "train.epochs must be int"),
        ({"input_size": 100}, "multiple of 32"),
        ({"data": {"tasks": []}}, "data.tasks is empty"),
        ({"data": {"tasks": ["signs", "2d"]}}, "task name .2d. is invalid"),
        ({"data": "nope"}, "data must be a mapping"),
        ([1, 2], "config must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("trunk: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
