"""Hosted heads: one ``heads`` model (shared layout) or the ``trunk`` itself (in_trunk) hosts every head.

Shared: two backend processes for any N; in_trunk: one.
"""

import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from serving.bench.load_generator import BackgroundTraffic
from serving.client import Detector
from serving.client.protocol import prepare_batch
from serving.triton import model_configs as mcfg
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.hot_add import TritonHotAdd
from serving.triton.processes import group_processes
from serving.triton.repository import add_task_to_repository, build_repository, live_heads_version, read_options
from shared.errors import ConfigError

OUTS = ("num_dets", "boxes", "scores", "classes")


def ort_reference(work, variant: str, task: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    cpu = ["CPUExecutionProvider"]
    trunk = ort.InferenceSession(str(work / "trunk" / variant / "model.onnx"), providers=cpu)
    head = ort.InferenceSession(str(work / "heads" / task / "model.onnx"), providers=cpu)
    p3, p4, p5 = trunk.run(["p3", "p4", "p5"], {"images": batch})
    return dict(zip(OUTS, head.run(list(OUTS), {"p3": p3, "p4": p4, "p5": p5}), strict=True))


def assert_same(got: dict, ref: dict) -> None:
    np.testing.assert_array_equal(got["num_dets"], ref["num_dets"])
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-5, atol=1e-5)


#: layout -> (backend processes plus tritonserver, directory of the live head files' generations)
HOSTED = {"shared": (3, "heads"), "in_trunk": (2, "trunk/heads")}


def infer(url: str, model: str, batch: np.ndarray) -> grpcclient.InferResult:
    inp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    return grpcclient.InferenceServerClient(url).infer(model, [inp])


def test_shared_layout_has_one_heads_model_and_ensembles_map_only_their_task(workspace, fakes):
    summary = build_repository(workspace, heads_layout="shared")
    repo = summary.path
    assert "heads" in summary.models and not any(m.startswith("head_") for m in summary.models)
    assert not list(repo.glob("head_*"))
    heads = mcfg.read_config(repo / "heads" / "config.pbtxt")
    assert {o.name for o in heads.output} == {f"{t}_{o}" for t in fakes.TASKS for o in OUTS}
    assert sorted(p.name for p in (repo / "heads" / "1").glob("*.onnx")) == sorted(f"{t}.onnx" for t in fakes.TASKS)
    one = mcfg.read_config(repo / "detect_cars" / "config.pbtxt")
    assert [s.model_name for s in one.ensemble_scheduling.step] == ["trunk", "heads"]
    assert dict(one.ensemble_scheduling.step[1].output_map) == {f"cars_{o}": o for o in OUTS}
    assert one.parameters["classes"].string_value == '["car", "truck"]'
    fan = mcfg.read_config(repo / "detect" / "config.pbtxt")
    assert [s.model_name for s in fan.ensemble_scheduling.step] == ["trunk", "heads"]
    assert set(fan.ensemble_scheduling.step[1].output_map) == {f"{t}_{o}" for t in fakes.TASKS for o in OUTS}


def test_in_trunk_layout_serves_heads_from_the_trunk_model_with_one_step_ensembles(workspace, fakes):
    summary = build_repository(workspace, heads_layout="in_trunk")
    repo = summary.path
    assert summary.models == ("trunk", *(f"detect_{t}" for t in sorted(fakes.TASKS)), "detect")
    assert not list(repo.glob("head*"))
    trunk = mcfg.read_config(repo / "trunk" / "config.pbtxt")
    assert {o.name for o in trunk.output} == {"p3", "p4", "p5"} | {f"{t}_{o}" for t in fakes.TASKS for o in OUTS}
    assert trunk.parameters["heads_dir"].string_value == "heads/1"
    assert trunk.parameters["intra_op_num_threads"].string_value == "1"  # requests run side by side instead
    assert trunk.parameters["request_workers"].string_value == "2" and trunk.HasField("dynamic_batching")
    files = sorted(p.name for p in (repo / "trunk" / "heads" / "1").glob("*.onnx"))
    assert files == sorted(f"{t}.onnx" for t in fakes.TASKS)
    one = mcfg.read_config(repo / "detect_cars" / "config.pbtxt")
    assert [s.model_name for s in one.ensemble_scheduling.step] == ["trunk"]
    assert dict(one.ensemble_scheduling.step[0].output_map) == {f"cars_{o}": o for o in OUTS}
    fan = mcfg.read_config(repo / "detect" / "config.pbtxt")
    assert [s.model_name for s in fan.ensemble_scheduling.step] == ["trunk"]
    assert set(fan.ensemble_scheduling.step[0].output_map) == {f"{t}_{o}" for t in fakes.TASKS for o in OUTS}


@pytest.mark.parametrize("layout", ["shared", "in_trunk"])
def test_hosted_layouts_need_the_python_backend(workspace, layout):
    with pytest.raises(ConfigError, match=f"heads_layout='{layout}' needs backend='python'"):
        build_repository(workspace, backend="onnxruntime", heads_layout=layout)
    with pytest.raises(ConfigError, match="heads_layout must be one of"):
        build_repository(workspace, heads_layout="fused")


@pytest.mark.parametrize("layout", ["shared", "in_trunk"])
def test_add_task_writes_a_new_heads_version_and_keeps_only_the_previous(workspace, fakes, layout):
    repo = build_repository(workspace, heads_layout=layout).path
    host = mcfg.heads_host(read_options(repo))
    root = repo / HOSTED[layout][1]
    for i, task in enumerate(("boats", "planes")):
        fakes.export_head(workspace, task, ["a", "b"], seed=50 + i)
        summary = add_task_to_repository(repo, workspace, task)
        assert task in summary.tasks and live_heads_version(repo, read_options(repo)) == i + 2
    assert sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) == [2, 3]
    cfg = mcfg.read_config(repo / host / "config.pbtxt")
    outs = {o.name for o in cfg.output}
    assert {f"planes_{o}" for o in OUTS} <= outs and {f"cars_{o}" for o in OUTS} <= outs
    assert (root / "3" / "boats.onnx").read_bytes() == (workspace / "heads/boats/model.onnx").read_bytes()
    if layout == "in_trunk":  # the trunk config moved to the new generation and kept its features
        assert cfg.parameters["heads_dir"].string_value == "heads/3"
        assert [o.name for o in cfg.output][:3] == ["p3", "p4", "p5"]


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["shared", "in_trunk"])
def test_hosted_heads_serve_every_task_in_fixed_backend_processes_and_hot_add_without_failures(
    tmp_path, fakes, layout
):
    work = fakes.make_workspace(tmp_path / "w")
    repo = build_repository(work, max_batch_size=4, heads_layout=layout).path
    images = fakes.random_images(3, seed=3)
    batch, _ = prepare_batch(images, fakes.SIZE)
    processes = HOSTED[layout][0]
    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        # shared: tritonserver + one stub for the trunk + one for every head; in_trunk: one stub in all
        assert len(group_processes(server._proc.pid)) == processes
        for task in fakes.TASKS:
            got = infer(server.url, f"detect_{task}", batch)
            assert_same({n: got.as_numpy(n) for n in OUTS}, ort_reference(work, "small", task, batch))
        fan = infer(server.url, "detect", batch)
        for task in fakes.TASKS:
            assert_same({n: fan.as_numpy(f"{task}_{n}") for n in OUTS}, ort_reference(work, "small", task, batch))

        task, classes = fakes.EXTRA_TASK
        fakes.export_head(work, task, classes, seed=42)
        with (
            BackgroundTraffic(server.url, images, None, threads=1) as fanout,
            BackgroundTraffic(server.url, images, "cars", threads=1) as one,
        ):
            time.sleep(0.3)
            live = TritonHotAdd(server.url)
            live.check(repo, task)
            live.add(repo, work, task)
            time.sleep(0.3)
        assert fanout.failed == one.failed == 0, fanout.errors + one.errors
        assert fanout.ok > 2 and one.ok > 2
        # shared: the trunk is never reloaded; in_trunk: once, onto the new heads
        loads = server.log_path.read_text().count("successfully loaded 'trunk'")
        assert loads == (1 if layout == "shared" else 2)
        deadline = time.monotonic() + 15  # the old heads version's stub exits after the swap
        while len(group_processes(server._proc.pid)) > processes and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(group_processes(server._proc.pid)) == processes  # still one process hosting the heads
        with Detector(server.url) as det:
            assert task in det.tasks(refresh=True)
            [result] = det.detect(images[:1])
            assert set(result.detections) == {*fakes.TASKS, task}
            assert all(d.class_name in classes for d in result.detections[task])
        fan = infer(server.url, "detect", batch)
        assert_same({n: fan.as_numpy(f"{task}_{n}") for n in OUTS}, ort_reference(work, "small", task, batch))


def _snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["shared", "in_trunk"])
def test_failed_hot_add_of_a_hosted_head_restores_the_repository_and_keeps_serving(
    tmp_path, fakes, monkeypatch, layout
):
    import serving.triton.hot_add as hot_add

    work = fakes.make_workspace(tmp_path / "w")
    repo = build_repository(work, max_batch_size=4, heads_layout=layout).path
    images = fakes.random_images(2, seed=4)
    real_add = hot_add.add_task_to_repository

    def add_broken_head(repo_, work_, task):  # the new head reaches the repository corrupted: its load fails
        summary = real_add(repo_, work_, task)
        live = live_heads_version(repo_, read_options(repo_))
        (repo_ / HOSTED[layout][1] / str(live) / f"{task}.onnx").write_bytes(b"not an onnx model")
        return summary

    monkeypatch.setattr(hot_add, "add_task_to_repository", add_broken_head)
    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        task, classes = fakes.EXTRA_TASK
        fakes.export_head(work, task, classes, seed=42)
        before = _snapshot(repo)
        with pytest.raises(Exception, match="restored"):
            TritonHotAdd(server.url).add(repo, work, task)
        assert _snapshot(repo) == before
        with Detector(server.url) as det:
            assert det.tasks(refresh=True) == sorted(fakes.TASKS)
            assert set(det.detect(images)[0].detections) == set(fakes.TASKS)
            assert set(det.detect(images, tasks=["cars"])[0].detections) == {"cars"}


def test_command_line_spells_the_layout_per_task_and_passes_per_task_on():
    from serving.cli.main import build_parser
    from serving.cli.options import LAYOUTS, default_layout

    parser = build_parser()
    assert LAYOUTS == mcfg.HEADS_LAYOUTS
    assert parser.parse_args(["export", "--heads-layout", "per-task"]).heads_layout == "per_task"
    assert parser.parse_args(["export", "--heads-layout", "in-trunk"]).heads_layout == "in_trunk"
    assert parser.parse_args(["export"]).heads_layout is None  # resolved by the backend:
    assert default_layout("python") == "in_trunk" and default_layout("onnxruntime") == "per_task"
    assert parser.parse_args(["serve"]).heads_layout == "in_trunk"
    assert parser.parse_args(["bench", "serving"]).heads_layout == "in_trunk"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--heads-layout", "fused"])


@pytest.mark.triton
def test_in_trunk_variant_switch_then_hot_add_keeps_the_live_variant_and_serves_its_features(tmp_path, fakes):
    from serving.controller import TrunkSwitcher, Variant

    work = fakes.make_workspace(tmp_path / "w")
    summary = build_repository(work, max_batch_size=4, heads_layout="in_trunk", live_variant="ref")
    by_name = {n: v for v, n in summary.trunk_versions.items()}
    batch, _ = prepare_batch(fakes.random_images(2, seed=5), fakes.SIZE)
    with EmbeddedTriton(summary.path, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        client = grpcclient.InferenceServerClient(server.url)
        got = infer(server.url, "detect_cars", batch)
        assert_same({n: got.as_numpy(n) for n in OUTS}, ort_reference(work, "ref", "cars", batch))
        # no local repository (as in Kubernetes): trunk/config.pbtxt still pins `ref`, only the server knows
        TrunkSwitcher(server.url).apply(Variant("small", by_name["small"], 0.4, 5.0))
        fan = infer(server.url, "detect", batch)
        for task in fakes.TASKS:  # every head now reads the small variant's features
            assert_same({n: fan.as_numpy(f"{task}_{n}") for n in OUTS}, ort_reference(work, "small", task, batch))

        task, classes = fakes.EXTRA_TASK
        fakes.export_head(work, task, classes, seed=42)
        TritonHotAdd(server.url).add(summary.path, work, task)
        served = client.get_model_config("trunk").config
        assert list(served.version_policy.specific.versions) == [by_name["small"]]  # the served switch survived
        assert served.parameters["heads_dir"].string_value == "heads/2"
        fan = infer(server.url, "detect", batch)
        for name in (*fakes.TASKS, task):
            assert_same({n: fan.as_numpy(f"{name}_{n}") for n in OUTS}, ort_reference(work, "small", name, batch))
