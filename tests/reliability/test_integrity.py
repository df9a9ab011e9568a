"""Integrity at load: every leaf's config records its file's sha256 and the backend refuses a changed file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from serving.client import Detector
from serving.triton.model_configs import read_config
from serving.triton.repository import build_repository, set_live_trunk_version
from shared.errors import ServingError

SHA_FIX = "rebuild the repository with `polyhead export`"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tamper(path: Path) -> None:
    """Re-save the ONNX file with another doc_string: still a valid model, different bytes."""
    model = onnx.load(str(path))
    model.doc_string = "tampered after the repository was built"
    path.unlink()  # never write through a link into the workspace
    onnx.save(model, str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime still takes it


def test_every_leaf_config_records_the_sha256_of_its_file(workspace):
    repo = build_repository(workspace, max_batch_size=2).path
    trunk = read_config(repo / "trunk/config.pbtxt")
    versions = json.loads(trunk.parameters["versions"].string_value)
    shas = json.loads(trunk.parameters["sha256_by_version"].string_value)
    assert set(shas) == set(versions) and len(versions) == 2
    for version, variant in versions.items():
        assert shas[version] == _sha(repo / "trunk" / version / "model.onnx")
        assert shas[version] == json.loads((workspace / "trunk" / variant / "variant.json").read_text())["sha256"]
    for head in repo.glob("head_*"):
        assert read_config(head / "config.pbtxt").parameters["sha256"].string_value == _sha(head / "1/model.onnx")
    set_live_trunk_version(repo, 1)  # rewriting the trunk config keeps the recorded hashes
    assert json.loads(read_config(repo / "trunk/config.pbtxt").parameters["sha256_by_version"].string_value) == shas


@pytest.mark.triton
def test_a_changed_head_file_fails_its_load_with_the_sha_message_while_the_others_serve(
    workspace, server_factory, fakes
):
    server = server_factory(workspace, strict=False)
    head_file = server.repository / "head_people/1/model.onnx"
    _tamper(head_file)
    with server:
        assert set(server.failed_models) == {"head_people", "detect_people", "detect"}
        reason = server.failed_models["head_people"]
        assert "model 'head_people' version 1" in reason and "sha256" in reason and SHA_FIX in reason, reason
        images = fakes.random_images(2)
        with Detector(server.url, timeout_s=30) as det:
            assert det.tasks() == ["cars", "signs"]
            assert set(det.detect(images)[0].detections) == {"cars", "signs"}
        with pytest.raises(ServingError, match=r"(?s)head_people.*sha256.*polyhead export"):
            server.load("head_people")
        # the fix: the workspace's verified file back in place (what `polyhead export` copies)
        head_file.unlink()
        shutil.copy2(workspace / "heads/people/model.onnx", head_file)
        for model in ("head_people", "detect_people", "detect"):
            server.load(model)
        with Detector(server.url, timeout_s=30) as det:
            assert det.tasks(refresh=True) == sorted(fakes.TASKS)
            assert set(det.detect(images)[0].detections) == set(fakes.TASKS)


@pytest.mark.triton
def test_switching_to_a_changed_trunk_version_is_refused_and_the_live_one_keeps_serving(
    workspace, server_factory, fakes
):
    with server_factory(workspace) as server:  # version 2 ("small", the latest) is live
        _tamper(server.repository / "trunk/1/model.onnx")
        set_live_trunk_version(server.repository, 1)
        with pytest.raises(ServingError, match=r"(?s)trunk.*version 1.*sha256.*polyhead export"):
            server.load("trunk")
        with Detector(server.url, timeout_s=30) as det:
            assert set(det.detect(fakes.random_images(2))[0].detections) == set(fakes.TASKS)
