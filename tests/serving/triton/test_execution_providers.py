"""GPU execution providers of the python backend: written by ``polyhead export --device``, honoured at load.

This machine's onnxruntime is the CPU build: a cuda repository must load, serve the CPU's detections
and say in the server log that it fell back and how to fix it.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc

from serving.cli.main import build_parser, main
from serving.cli.serving_commands import repository_to_serve
from serving.client.protocol import prepare_batch
from serving.triton import model_configs as mcfg
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.execution_providers import CPU, CUDA, TENSORRT, execution_providers
from serving.triton.repository import add_task_to_repository, build_repository, read_options
from shared.errors import ConfigError

OUTS = ("num_dets", "boxes", "scores", "classes")
GPU_CHAIN = [TENSORRT, CUDA, CPU]
#: layout -> the python-backend leaves (models with an instance group) of the fake workspace
LEAVES = {"per_task": ("trunk", "head_cars", "head_people", "head_signs"), "shared": ("trunk", "heads"),
          "in_trunk": ("trunk",)}


def providers(cfg: mc.ModelConfig, parameter: str = "execution_providers") -> list[dict]:
    return json.loads(cfg.parameters[parameter].string_value)


def mark_int8(work, variant: str) -> None:
    path = work / "trunk" / variant / "variant.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "precision": "int8"}))


def test_cpu_repository_asks_for_the_cpu_provider_on_cpu_instances(workspace):
    repo = build_repository(workspace, heads_layout="in_trunk").path
    trunk = mcfg.read_config(repo / "trunk" / "config.pbtxt")
    assert providers(trunk) == [{"name": CPU}]
    assert "execution_providers_by_version" not in trunk.parameters
    assert [g.kind for g in trunk.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert read_options(repo).device == "cpu"


@pytest.mark.parametrize("layout", sorted(LEAVES))
def test_cuda_repository_asks_every_leaf_for_tensorrt_cuda_then_cpu_on_auto_instances(workspace, layout):
    mark_int8(workspace, "small")
    opts = mcfg.RepositoryOptions(heads_layout=layout, device="cuda")
    repo = build_repository(workspace, options=opts).path
    for model in LEAVES[layout]:
        cfg = mcfg.read_config(repo / model / "config.pbtxt")
        chain = providers(cfg)
        assert [p["name"] for p in chain] == GPU_CHAIN, model
        trt, cuda = chain[0]["options"], chain[1]["options"]
        assert trt["trt_fp16_enable"] == "1" and trt["trt_int8_enable"] == "0"  # fp32 graphs, FP16 by default
        assert trt["device_id"] == cuda["device_id"] == "0"
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_AUTO], model
    trunk = mcfg.read_config(repo / "trunk" / "config.pbtxt")
    versions = {n: v for v, n in json.loads(trunk.parameters["versions"].string_value).items()}
    by_version = providers(trunk, "execution_providers_by_version")
    assert set(by_version) == {versions["small"]}  # only the int8 variant differs from the default
    assert by_version[versions["small"]][0]["options"]["trt_int8_enable"] == "1"
    assert read_options(repo).device == "cuda"
    for model in ("detect", "detect_cars"):  # ensembles have no instances and no providers
        cfg = mcfg.read_config(repo / model / "config.pbtxt")
        assert not cfg.instance_group and "execution_providers" not in cfg.parameters


def test_a_cuda_repository_stays_cuda_through_hot_adds_and_the_rebuild_of_serve(workspace, fakes, capsys):
    repo = build_repository(workspace, options=mcfg.RepositoryOptions(heads_layout="in_trunk", device="cuda")).path
    task, classes = fakes.EXTRA_TASK
    fakes.export_head(workspace, task, classes, seed=42)
    add_task_to_repository(repo, workspace, task)
    trunk = mcfg.read_config(repo / "trunk" / "config.pbtxt")
    assert trunk.parameters["heads_dir"].string_value == "heads/2"
    assert [p["name"] for p in providers(trunk)] == GPU_CHAIN
    fakes.export_head(workspace, "extra", ["thing"], seed=43)  # the workspace moves on: serve rebuilds
    assert repository_to_serve(workspace, "per_task") == repo
    assert "rebuilding it" in capsys.readouterr().out
    assert read_options(repo).device == "cuda" and read_options(repo).heads_layout == "in_trunk"
    trunk = mcfg.read_config(repo / "trunk" / "config.pbtxt")
    assert [p["name"] for p in providers(trunk)] == GPU_CHAIN
    assert "extra_num_dets" in {o.name for o in trunk.output}


def test_export_command_writes_the_device_it_is_given(workspace, capsys):
    assert build_parser().parse_args(["export"]).device == "cpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--device", "tpu"])
    assert main(["export", "--workdir", str(workspace), "--device", "cuda"]) == 0
    assert "python backend, cuda, in-trunk heads" in capsys.readouterr().out
    trunk = mcfg.read_config(workspace / "model_repository" / "trunk" / "config.pbtxt")
    assert [p["name"] for p in providers(trunk)] == GPU_CHAIN


def test_device_and_precision_are_validated_with_the_bad_value_named():
    with pytest.raises(ConfigError, match="'tpu'"):
        mcfg.RepositoryOptions(device="tpu")
    with pytest.raises(ConfigError, match="'int4'"):
        execution_providers("cuda", "int4")
    assert execution_providers("cuda", "fp32", "FP32")[0]["options"]["trt_fp16_enable"] == "0"
    assert execution_providers("cuda", "fp16", "FP32")[0]["options"]["trt_fp16_enable"] == "1"
    assert execution_providers("cpu", "int8") == [{"name": CPU}]


def detections(repo, batch: np.ndarray) -> tuple[dict[str, np.ndarray], str]:
    """The fan-out's outputs for ``batch`` from a server on ``repo``, and the server log."""
    server = EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                            admin_key="")
    with server:
        inp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        result = grpcclient.InferenceServerClient(server.url).infer("detect", [inp])
        outputs = {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    return outputs, server.log_path.read_text(errors="replace")


@pytest.mark.triton
def test_a_cuda_repository_serves_the_cpu_detections_and_logs_the_fallback(workspace, tmp_path, fakes):
    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # the CPU build of onnxruntime
    mark_int8(workspace, "small")  # the live version's model.onnx reads the per-version providers
    cpu = build_repository(workspace, out=tmp_path / "cpu", max_batch_size=4, heads_layout="in_trunk").path
    cuda = build_repository(workspace, out=tmp_path / "cuda", options=mcfg.RepositoryOptions(
        max_batch_size=4, heads_layout="in_trunk", device="cuda")).path
    batch, _ = prepare_batch(fakes.random_images(3, seed=7), fakes.SIZE)
    want, cpu_log = detections(cpu, batch)
    got, cuda_log = detections(cuda, batch)
    assert set(got) == set(want) == {f"{t}_{o}" for t in fakes.TASKS for o in OUTS}
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert int(sum(want[f"{t}_num_dets"].sum() for t in fakes.TASKS)) > 0  # something was detected
    fallback = "asked for by the config are not available"
    warning = [ln for ln in cuda_log.splitlines() if fallback in ln]
    assert warning and warning[0].startswith("W"), cuda_log[-2000:]
    assert "'TensorrtExecutionProvider', 'CUDAExecutionProvider'" in warning[0]
    assert "CPUExecutionProvider" in warning[0] and "install onnxruntime-gpu" in warning[0]
    assert fallback not in cpu_log


@pytest.mark.triton
def test_unknown_or_malformed_providers_fail_the_load_naming_the_bad_value(workspace):
    repo = build_repository(workspace, max_batch_size=4, heads_layout="per_task").path
    bad = {"head_cars": '[{"name": "CUDAExecutonProvider"}]', "head_people": '[{"name": "CPUExecutionProvider"',
           "head_signs": '{"name": "CPUExecutionProvider"}'}
    for model, value in bad.items():
        path = repo / model / "config.pbtxt"
        cfg = mcfg.read_config(path)
        cfg.parameters["execution_providers"].string_value = value
        mcfg.write_config(cfg, path)
    server = EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                            admin_key="", strict=False)
    with server:
        failed = server.failed_models
        assert {"head_cars", "head_people", "head_signs", "detect"} <= set(failed) and "trunk" not in failed
        assert "unknown execution provider 'CUDAExecutonProvider'" in failed["head_cars"], failed["head_cars"]
        assert "CUDAExecutionProvider" in failed["head_cars"]  # the known names, to fix the typo
        assert "parameter execution_providers is not JSON" in failed["head_people"], failed["head_people"]
        assert "must be a JSON list" in failed["head_signs"], failed["head_signs"]
