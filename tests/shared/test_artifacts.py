import json

import pytest

from shared.artifacts import atomic_directory, atomic_write_json, read_json, sha256_file, verify_sha256
from shared.errors import ArtifactError, DataError


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "heads" / "cats"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list((tmp_path / "heads").iterdir()) == []


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    target = tmp_path / "v"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ArtifactError, match="already exists"), atomic_directory(target):
        pass
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def test_sha256_mismatch_is_reported(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"abc")
    verify_sha256(f, sha256_file(f), "re-export")
    f.write_bytes(b"abd")
    with pytest.raises(ArtifactError, match="re-export"):
        verify_sha256(f, "0" * 64, "re-export")


def test_read_json_errors_name_the_file(tmp_path):
    atomic_write_json(tmp_path / "ok.json", {"a": 1})
    assert read_json(tmp_path / "ok.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ArtifactError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_atomic_write_json_formats(tmp_path):
    data = {"b": 1, "a": [1, 2]}
    atomic_write_json(tmp_path / "meta.json", data)  # workspace metadata
    assert (tmp_path / "meta.json").read_text() == json.dumps(data, indent=2) + "\n"
    atomic_write_json(tmp_path / "build.json", data, sort_keys=True, trailing_newline=False)  # model repository
    assert (tmp_path / "build.json").read_text() == json.dumps(data, indent=2, sort_keys=True)
    atomic_write_json(tmp_path / "train.json", data, indent=None, trailing_newline=False)  # synthetic COCO
    assert (tmp_path / "train.json").read_text() == json.dumps(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.json", "meta.json", "train.json"]  # no temp left


def test_read_json_raises_the_callers_error_class_with_its_fix(tmp_path):
    with pytest.raises(DataError, match=r"annotation file .*nothere.json does not exist; check the path"):
        read_json(tmp_path / "nothere.json", "annotation", error=DataError, missing_fix="check the path")
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(DataError, match=r"bad.json: not valid JSON \(line 1, column 7: .*\); fix it"):
        read_json(tmp_path / "bad.json", error=DataError, fix="fix it")
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ArtifactError, match="latin1.json: not UTF-8 text"):
        read_json(tmp_path / "latin1.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="deep.json: JSON nested too deeply"):
        read_json(tmp_path / "deep.json")
    (tmp_path / "list.json").write_text("[]")
    assert read_json(tmp_path / "list.json") == []
    with pytest.raises(ArtifactError, match="list.json: metadata must be a JSON object, got list"):
        read_json(tmp_path / "list.json", expect=dict)
    with pytest.raises(ArtifactError, match="cannot read metadata file"):
        read_json(tmp_path)  # a directory
