"""variant.json / head.json: one schema (shared.artifact_records), written by publish, read by serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serving.triton.workspace_artifacts import read_heads, read_trunks
from shared.artifact_records import (
    HeadRecord,
    VariantRecord,
    read_head_record,
    read_variant_record,
    record_map_result,
    write_head_record,
    write_variant_record,
)
from shared.errors import ArtifactError
from shared.workspace import Workspace

#: The keys (in order) ``polyhead train`` wrote before the schema moved to shared.artifact_records.
VARIANT_KEYS = ["name", "input_size", "contract", "channels", "trunk_config", "params", "size_bytes", "sha256",
                "precision", "parity_max_abs_diff", "latency_ms", "map", "admitted", "role"]
HEAD_KEYS = ["task", "classes", "category_ids", "input_size", "max_dets", "score_threshold", "iou_threshold",
             "contract", "head_config", "params", "sha256", "map", "reference_trunk"]


@pytest.fixture(scope="module")
def published(tiny_workspace, tmp_path_factory) -> Workspace:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tiny_workspace(tmp_path_factory.mktemp("records"), 8, 4, {})
    finally:
        torch.set_num_threads(threads)
    return Workspace.at(root / "work")


def test_published_files_keep_their_keys_and_bytes(published: Workspace) -> None:
    for path, keys in ((published.variant("reference") / "variant.json", VARIANT_KEYS),
                       (published.head("signs") / "head.json", HEAD_KEYS)):
        text = path.read_text()
        raw = json.loads(text)
        assert list(raw) == keys, path
        assert text == json.dumps(raw, indent=2) + "\n"  # the format atomic_write_json always wrote
    assert set(json.loads((published.variant("reference") / "variant.json").read_text())["map"]) == {"signs"}
    assert set(json.loads((published.head("signs") / "head.json").read_text())["map"]) == {"reference"}


def test_serving_reads_what_publish_wrote(published: Workspace) -> None:
    raw_v = json.loads((published.variant("reference") / "variant.json").read_text())
    raw_h = json.loads((published.head("signs") / "head.json").read_text())
    [trunk] = read_trunks(published.root)
    assert (trunk.name, trunk.input_size, trunk.channels, trunk.sha256) == (
        raw_v["name"], raw_v["input_size"], raw_v["channels"], raw_v["sha256"])
    assert trunk.meta == raw_v
    [head] = read_heads(published.root)
    assert (head.task, list(head.classes), list(head.category_ids), head.input_size, head.max_dets, head.sha256) == (
        raw_h["task"], raw_h["classes"], raw_h["category_ids"], raw_h["input_size"], raw_h["max_dets"], raw_h["sha256"])
    assert head.meta == raw_h


def test_records_round_trip_key_for_key(published: Workspace, tmp_path: Path) -> None:
    for directory, read, write, name in (
        (published.variant("reference"), read_variant_record, write_variant_record, "variant.json"),
        (published.head("signs"), read_head_record, write_head_record, "head.json"),
    ):
        record = read(directory)
        original = (directory / name).read_bytes()
        assert list(record.to_json().items()) == list(json.loads(original).items())
        write(tmp_path, record)
        assert (tmp_path / name).read_bytes() == original


def _variant(**kw) -> dict:
    return {"name": "v", "input_size": 64, "channels": {"p3": 8, "p4": 8, "p5": 8}, "sha256": "ab", **kw}


def _head(**kw) -> dict:
    return {"task": "cars", "classes": ["car"], "input_size": 64, "max_dets": 10, "sha256": "ab", **kw}


def test_unknown_keys_are_kept_in_file_order() -> None:
    data = _variant(role="variant", admitted=False, parent="reference", pareto=True)
    record = VariantRecord.from_json(data, "x/variant.json")
    assert record.extra == {"role": "variant", "parent": "reference", "pareto": True}
    assert record.to_json() == data and not record.admitted


def test_with_extra_replaces_known_keys_in_place_and_appends_the_rest() -> None:
    record = VariantRecord.from_json(_variant(precision="fp32", admitted=True), "v")
    merged = record.with_extra({"admitted": False, "parent": "reference", "precision": "int8"})
    assert merged.to_json() == {**record.to_json(), "admitted": False, "parent": "reference", "precision": "int8"}
    assert list(merged.to_json()) == [*record.to_json(), "parent"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({k: v for k, v in _variant().items() if k != "sha256"}, r"x/variant.json lacks the key 'sha256'"),
        (_variant(input_size="64"), r"x/variant.json: 'input_size' must be a positive integer, got '64'"),
        (_variant(channels={"p3": 0}), r"'channels' must be an object"),
        (_variant(admitted="yes"), r"'admitted' must be true or false"),
        (_variant(map=[]), r"'map' must be an object"),
    ],
)
def test_variant_errors_name_the_file_and_the_key(data: dict, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        VariantRecord.from_json(data, "x/variant.json")


def test_older_variant_metadata_derives_channels_from_the_contract() -> None:
    data = {k: v for k, v in _variant().items() if k != "channels"}
    data["contract"] = {"p3": {"channels": 16, "stride": 8}}
    assert VariantRecord.from_json(data, "v").channels == {"p3": 16}


def test_head_category_ids_default_and_must_match_classes() -> None:
    assert HeadRecord.from_json(_head(classes=["a", "b"]), "h").category_ids == (1, 2)
    with pytest.raises(ArtifactError, match=r"h/head.json: 2 classes but 1 category_ids"):
        HeadRecord.from_json(_head(classes=["a", "b"], category_ids=[5]), "h/head.json")
    with pytest.raises(ArtifactError, match=r"'classes' must be a list of strings"):
        HeadRecord.from_json(_head(classes=[1]), "h/head.json")
    with pytest.raises(ArtifactError, match=r"lacks the key 'max_dets'"):
        HeadRecord.from_json({k: v for k, v in _head().items() if k != "max_dets"}, "h/head.json")


def test_reader_names_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"trunk variant metadata file .*variant.json does not exist; export"):
        read_variant_record(tmp_path)
    (tmp_path / "head.json").write_text("[1]")
    with pytest.raises(ArtifactError, match=r"head.json: head metadata must be a JSON object, got list"):
        read_head_record(tmp_path)
    (tmp_path / "head.json").write_text("{")
    with pytest.raises(ArtifactError, match=r"head.json: not valid JSON \(line 1"):
        read_head_record(tmp_path)


def test_writer_refuses_what_the_reader_would_refuse(tmp_path: Path) -> None:
    bad = HeadRecord(task="cars", classes=("a", "b"), category_ids=(1,), input_size=64, max_dets=10, sha256="ab")
    with pytest.raises(ArtifactError, match="2 classes but 1 category_ids"):
        write_head_record(tmp_path, bad)
    assert not (tmp_path / "head.json").exists()


def test_record_map_result_keeps_every_other_key_and_the_order(tmp_path: Path) -> None:
    data = _variant(flops=12, map={"a": {"map": 0.1}}, admitted=True, role="variant")
    (tmp_path / "variant.json").write_text(json.dumps(data))
    record_map_result(tmp_path / "variant.json", "b", {"map": 0.2, "map50": 0.3})
    after = json.loads((tmp_path / "variant.json").read_text())
    assert list(after) == list(data) and after["map"] == {"a": {"map": 0.1}, "b": {"map": 0.2, "map50": 0.3}}
