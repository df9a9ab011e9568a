import pytest

from shared.artifacts import atomic_directory, atomic_write_json, read_json, sha256_file, verify_sha256
from shared.errors import ArtifactError


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
