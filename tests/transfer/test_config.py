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


def _numeric_fields(cls, where=""):
    """Every int/float key of the YAML dataclasses, as (dotted key, field)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}".lstrip(".")
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _numeric_fields(hints[f.name], key)
        elif hints[f.name] in (int, float):
            yield key, f


def test_every_numeric_key_has_a_range_that_holds_its_default():
    keys = dict(_numeric_fields(PolyheadConfig))
    assert {"input_size", "train.epochs", "train.lr", "head.iou_threshold", "head.max_dets"} <= set(keys)
    missing = [k for k, f in keys.items() if "range" not in f.metadata]
    assert missing == []
    assert all(f.default in f.metadata["range"] for f in keys.values())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epochs": -3}}, r"train.epochs = -3 is out of range: allowed \[1, 100000\]"),
        ({"head": {"max_dets": 0}}, r"head.max_dets = 0 is out of range: allowed \[1, 10000\]"),
        ({"train": {"batch_size": 0}}, r"train.batch_size = 0 is out of range: allowed \[1, 65536\]"),
        ({"train": {"lr": -1}}, r"train.lr = -1.0 is out of range: allowed \(0, 10\]"),
        ({"train": {"lr": 0}}, r"train.lr = 0.0 is out of range"),
        ({"head": {"iou_threshold": 7}}, r"head.iou_threshold = 7.0 is out of range: allowed \(0, 1\]"),
        ({"head": {"score_threshold": 1}}, r"head.score_threshold = 1.0 is out of range: allowed \[0, 1\)"),
        ({"train": {"backbone_lr_scale": 1.5}}, r"train.backbone_lr_scale = 1.5 is out of range: allowed \[0, 1\]"),
        ({"input_size": 32}, r"input_size = 32 is out of range: allowed \[64, 2048\]"),
        ({"train": {"warmup_steps": -1}}, r"train.warmup_steps = -1 is out of range: allowed \[0, inf\)"),
    ],
)
def test_out_of_range_values_name_the_key_the_value_and_the_range(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_train_refuses_an_out_of_range_config_before_writing_anything(tmp_path, capsys):
    from serving.cli.main import main

    config = tmp_path / "polyhead.yaml"
    config.write_text("train: {epochs: -3}\n")
    assert main(["train", "--workdir", str(tmp_path / "w"), "--config", str(config)]) == 2
    assert "train.epochs = -3 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*"))
