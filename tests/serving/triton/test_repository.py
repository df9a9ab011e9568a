import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.triton.embedded_server import startup_models
from serving.triton.repository import (
    BACKEND_MODEL_PY,
    add_task_to_repository,
    build_repository,
    read_trunk_versions,
    set_live_trunk_version,
)
from shared.errors import ArtifactError, ConfigError, ContractError


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_generated_configs_parse_back_with_contract_inputs_and_outputs(workspace, fakes):
    summary = build_repository(workspace)
    repo = summary.path
    s, c, k = fakes.SIZE, fakes.CHANNELS, fakes.MAX_DETS
    trunk = parse(repo / "trunk/config.pbtxt")
    assert trunk.backend == "python" and trunk.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in trunk.input] == [
        ("images", mc.TYPE_UINT8, [3, s, s])
    ]
    assert [(o.name, list(o.dims)) for o in trunk.output] == [
        ("p3", [c, s // 8, s // 8]),
        ("p4", [c, s // 16, s // 16]),
        ("p5", [c, s // 32, s // 32]),
    ]
    head = parse(repo / "head_cars/config.pbtxt")
    assert [i.name for i in head.input] == ["p3", "p4", "p5"]
    assert {o.name: (o.data_type, list(o.dims)) for o in head.output} == {
        "num_dets": (mc.TYPE_INT64, [1]),
        "boxes": (mc.TYPE_FP32, [k, 4]),
        "scores": (mc.TYPE_FP32, [k]),
        "classes": (mc.TYPE_INT64, [k]),
    }
    assert json.loads(head.parameters["classes"].string_value) == fakes.TASKS["cars"]
    one = parse(repo / "detect_cars/config.pbtxt")
    assert one.platform == "ensemble"
    assert [st.model_name for st in one.ensemble_scheduling.step] == ["trunk", "head_cars"]
    assert sorted(o.name for o in one.output) == ["boxes", "classes", "num_dets", "scores"]
    fan = parse(repo / "detect/config.pbtxt")
    assert [st.model_name for st in fan.ensemble_scheduling.step] == [
        "trunk",
        *(f"head_{t}" for t in sorted(fakes.TASKS)),
    ]
    assert {o.name for o in fan.output} == {
        f"{t}_{o}" for t in fakes.TASKS for o in ("num_dets", "boxes", "scores", "classes")
    }
    assert (repo / "detect/1").is_dir() and (repo / "detect_cars/1").is_dir()
    assert summary.tasks == tuple(sorted(fakes.TASKS))


def test_trunk_gets_one_version_per_admitted_variant_recorded_in_versions_json(workspace):
    summary = build_repository(workspace)
    repo = summary.path
    assert summary.trunk_versions == {1: "ref", 2: "small"}  # "rejected" is not admitted
    assert read_trunk_versions(repo) == {1: "ref", 2: "small"}
    trunk = parse(repo / "trunk/config.pbtxt")
    assert json.loads(trunk.parameters["versions"].string_value) == {"1": "ref", "2": "small"}
    assert trunk.version_policy.WhichOneof("policy_choice") == "latest"
    assert trunk.version_policy.latest.num_versions == 1
    for v in ("1", "2"):
        assert (repo / "trunk" / v / "model.onnx").is_file()
        assert (repo / "trunk" / v / "model.py").read_text() == BACKEND_MODEL_PY.read_text()


def test_rebuild_keeps_version_numbers_and_leaves_no_temp_dirs(workspace, fakes):
    build_repository(workspace)
    fakes.export_trunk(workspace, "aaa_new", seed=5)  # sorts first by name, still gets the next number
    summary = build_repository(workspace)
    assert summary.trunk_versions == {1: "ref", 2: "small", 3: "aaa_new"}
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in summary.path.iterdir() if p.name.startswith(".")) == []


def test_set_live_trunk_version_pins_specific_version_and_rejects_unknown(workspace):
    repo = build_repository(workspace).path
    set_live_trunk_version(repo, 1)
    trunk = parse(repo / "trunk/config.pbtxt")
    assert list(trunk.version_policy.specific.versions) == [1]
    assert trunk.output[0].name == "p3"  # rest of the config intact
    with pytest.raises(ConfigError, match="trunk version 7 does not exist"):
        set_live_trunk_version(repo, 7)
    set_live_trunk_version(repo, None)
    assert parse(repo / "trunk/config.pbtxt").version_policy.latest.num_versions == 1


def test_live_variant_option_pins_that_variant(workspace):
    repo = build_repository(workspace, live_variant="ref").path
    assert list(parse(repo / "trunk/config.pbtxt").version_policy.specific.versions) == [1]
    with pytest.raises(ConfigError, match="not an admitted variant"):
        build_repository(workspace, live_variant="rejected")


def test_sha256_mismatch_raises_artifact_error_naming_the_fix(workspace):
    meta_path = workspace / "heads/people/head.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="re-export the head with"):
        build_repository(workspace)
    assert not (workspace / "model_repository").exists()  # nothing half-written


def test_head_with_other_input_size_is_a_contract_error(workspace):
    meta_path = workspace / "heads/cars/head.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "input_size": 128}))
    with pytest.raises(ContractError, match="head 'cars' expects input_size 128"):
        build_repository(workspace)


def test_onnxruntime_backend_uses_native_platform_gpu_instances_and_tensorrt(workspace):
    repo = build_repository(
        workspace,
        backend="onnxruntime",
        tensorrt=True,
        dynamic_batching=True,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=500,
    ).path
    trunk = parse(repo / "trunk/config.pbtxt")
    assert trunk.platform == "onnxruntime_onnx" and trunk.backend == ""
    assert trunk.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    acc = trunk.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert list(trunk.dynamic_batching.preferred_batch_size) == [4, 8]
    assert trunk.dynamic_batching.max_queue_delay_microseconds == 500
    assert not (repo / "trunk/1/model.py").exists() and (repo / "trunk/1/model.onnx").is_file()
    with pytest.raises(ConfigError, match="tensorrt=True needs backend='onnxruntime'"):
        build_repository(workspace, tensorrt=True)


def test_add_task_writes_head_and_ensembles_and_regenerates_fanout(workspace, fakes):
    repo = build_repository(workspace, max_batch_size=4).path
    task, classes = fakes.EXTRA_TASK
    fakes.export_head(workspace, task, classes, seed=99)
    summary = add_task_to_repository(repo, workspace, task)
    assert task in summary.tasks and summary.models[-1] == "detect"
    head = parse(repo / f"head_{task}/config.pbtxt")
    assert head.max_batch_size == 4  # options of the original build are kept
    assert json.loads(head.parameters["classes"].string_value) == classes
    assert [st.model_name for st in parse(repo / f"detect_{task}/config.pbtxt").ensemble_scheduling.step] == [
        "trunk",
        f"head_{task}",
    ]
    assert f"{task}_boxes" in {o.name for o in parse(repo / "detect/config.pbtxt").output}
    assert json.loads((repo / "build.json").read_text())["tasks"] == sorted([*fakes.TASKS, task])
    assert [p.name for p in repo.parent.iterdir() if p.name.startswith(".")] == []


def test_startup_models_put_ensembles_after_their_members(workspace):
    repo = build_repository(workspace).path
    order = startup_models(repo)
    assert set(order) == {
        "trunk",
        "head_cars",
        "head_people",
        "head_signs",
        "detect_cars",
        "detect_people",
        "detect_signs",
        "detect",
    }
    for ens in ("detect", "detect_cars"):
        for member in ("trunk", "head_cars"):
            assert order.index(member) < order.index(ens)
