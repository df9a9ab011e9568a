"""Integration tests against the real embedded tritonserver (one server per module)."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.client import AsyncDetector, Detector, UnknownTaskError
from serving.client.protocol import prepare_batch
from serving.triton.embedded_server import EmbeddedTriton, free_port, group_processes
from serving.triton.repository import add_task_to_repository, build_repository, set_live_trunk_version
from shared.errors import InputError, ServingError

pytestmark = pytest.mark.triton
OUTS = ("num_dets", "boxes", "scores", "classes")


@pytest.fixture(scope="module")
def work(tmp_path_factory, fakes):
    return fakes.make_workspace(tmp_path_factory.mktemp("triton_work"))


@pytest.fixture(scope="module")
def server(work):
    summary = build_repository(work, max_batch_size=4)
    srv = EmbeddedTriton(summary.path, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.url)


def ort_reference(work, variant: str, task: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    trunk = ort.InferenceSession(
        str(work / "trunk" / variant / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    head = ort.InferenceSession(str(work / "heads" / task / "model.onnx"), providers=["CPUExecutionProvider"])
    p3, p4, p5 = trunk.run(["p3", "p4", "p5"], {"images": batch})
    return dict(zip(OUTS, head.run(list(OUTS), {"p3": p3, "p4": p4, "p5": p5}), strict=True))


def infer(client, model: str, batch: np.ndarray, outputs=None):
    inp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    req = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, [inp], outputs=req)


def assert_same(got: dict, ref: dict) -> None:
    np.testing.assert_array_equal(got["num_dets"], ref["num_dets"])
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-5, atol=1e-5)


def test_server_starts_quickly_with_every_model_ready(server, client, fakes):
    assert server.is_ready() and server.startup_s < 30
    ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert ready == {"trunk", "detect", *(f"{p}_{t}" for t in fakes.TASKS for p in ("head", "detect"))}


def test_single_task_ensemble_equals_onnxruntime(server, client, work, fakes):
    batch, _ = prepare_batch(fakes.random_images(3, seed=1), fakes.SIZE)
    for task in fakes.TASKS:
        result = infer(client, f"detect_{task}", batch)
        assert_same({n: result.as_numpy(n) for n in OUTS}, ort_reference(work, "small", task, batch))


def test_fanout_detect_returns_every_task_in_one_call(server, client, work, fakes):
    batch, _ = prepare_batch(fakes.random_images(4, seed=2), fakes.SIZE)
    result = infer(client, "detect", batch)
    for task in fakes.TASKS:
        got = {n: result.as_numpy(f"{task}_{n}") for n in OUTS}
        assert got["boxes"].shape == (4, fakes.MAX_DETS, 4)
        assert_same(got, ort_reference(work, "small", task, batch))


def test_detector_maps_boxes_to_original_pixels_and_drops_padding(server, work, fakes):
    images = fakes.random_images(6, seed=3)  # > max_batch_size 4: two calls
    batch, infos = prepare_batch(images, fakes.SIZE)
    with Detector(server.url) as det:
        assert det.tasks() == sorted(fakes.TASKS)
        results = det.detect(images)
    assert len(results) == 6
    for task, classes in fakes.TASKS.items():
        ref = ort_reference(work, "small", task, batch)
        for i, res in enumerate(results):
            n = int(ref["num_dets"][i, 0])
            dets = res[task]
            assert len(dets) == n
            if n:
                np.testing.assert_allclose(
                    [d.box for d in dets], infos[i].to_original(ref["boxes"][i, :n]), rtol=1e-5, atol=1e-4
                )
                assert [d.class_name for d in dets] == [classes[c] for c in ref["classes"][i, :n]]
                assert all(0 <= d.box[0] <= d.box[2] <= images[i].shape[1] for d in dets)


def test_detector_task_selection_and_async_agree(server, fakes):
    images = fakes.random_images(3, seed=4)
    with Detector(server.url) as det:
        one = det.detect(images, "people")
        two = det.detect(images, ["signs", "cars"])
        every = det.detect(images)

    async def run():
        async with AsyncDetector(server.url) as adet:
            return await adet.detect(images, ["signs", "cars"])

    assert list(one[0].detections) == ["people"] and one[0]["people"] == every[0]["people"]
    assert list(two[0].detections) == ["signs", "cars"] and two[1]["cars"] == every[1]["cars"]
    assert asyncio.run(run()) == two


def test_one_detector_shared_by_threads_survives_metadata_refreshes(server, fakes, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import serving.client.detector as detector_module

    monkeypatch.setattr(detector_module, "_TASKS_TTL_S", 0.0)  # every call re-reads the index, replacing the cache
    images = fakes.random_images(2, seed=5)
    with Detector(server.url) as det:
        expected = det.detect(images)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: det.detect(images, None if i % 2 else "people"), range(40)))
    assert all(r == expected for r in results[1::2])
    assert all(r[0]["people"] == expected[0]["people"] for r in results[::2])


def test_bad_requests_are_clear_errors_and_the_server_keeps_serving(server, client, fakes):
    good, _ = prepare_batch(fakes.random_images(1), fakes.SIZE)
    with pytest.raises(
        InferenceServerException, match=r"unexpected shape for input 'images'.*\[-1,3,64,64\]"
    ):
        infer(client, "detect_cars", np.zeros((1, 3, 32, 32), np.uint8))
    inp = grpcclient.InferInput("images", [1, 3, 64, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(
        InferenceServerException, match="data-type is .FP32., but model .detect. expects .UINT8."
    ):
        client.infer("detect", [inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        infer(client, "detect_nope", good)
    with Detector(server.url) as det:
        with pytest.raises(
            UnknownTaskError, match=r"\['nope'\] not served; served tasks: \['cars', 'people', 'signs'\]"
        ):
            det.detect(fakes.random_images(1)[0], "nope")
        with pytest.raises(InputError, match=r"image 0: shape \(64, 64\)"):
            det.detect(np.zeros((64, 64), np.uint8))
        with pytest.raises(InputError, match="dtype float32"):
            det.detect(np.zeros((8, 8, 3), np.float32))
        assert len(det.detect(fakes.random_images(2))) == 2
    assert infer(client, "detect_cars", good).as_numpy("boxes").shape == (1, fakes.MAX_DETS, 4)


def test_client_reports_unreachable_server_after_retries():
    det = Detector(f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.01, timeout_s=2)
    with pytest.raises(ServingError, match="unavailable after 3 attempts"):
        det.tasks()


def test_switching_live_trunk_version_changes_results_without_reloading_heads(server, client, work, fakes):
    batch, _ = prepare_batch(fakes.random_images(2, seed=5), fakes.SIZE)
    repo = server.repository
    set_live_trunk_version(repo, 1)  # "ref"
    server.load("trunk")
    try:
        got = infer(client, "detect_cars", batch)
        assert_same({n: got.as_numpy(n) for n in OUTS}, ort_reference(work, "ref", "cars", batch))
    finally:
        set_live_trunk_version(repo, None)
        server.load("trunk")
    got = infer(client, "detect_cars", batch)
    assert_same({n: got.as_numpy(n) for n in OUTS}, ort_reference(work, "small", "cars", batch))


def test_hot_added_task_is_served_while_existing_tasks_keep_answering(server, work, fakes):
    images = fakes.random_images(2, seed=6)
    stop, done, failures = threading.Event(), [0], []

    def traffic():
        with Detector(server.url) as det:
            while not stop.is_set():
                try:
                    det.detect(images, "cars" if done[0] % 2 else None)
                    done[0] += 1
                except Exception as err:  # noqa: BLE001
                    failures.append(repr(err))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.3)
        task, classes = fakes.EXTRA_TASK
        fakes.export_head(work, task, classes, seed=42)
        add_task_to_repository(server.repository, work, task)
        for model in (f"head_{task}", f"detect_{task}", "detect"):
            server.load(model)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert failures == [] and done[0] > 5
    batch, _ = prepare_batch(images, fakes.SIZE)
    with Detector(server.url) as det:
        assert task in det.tasks(refresh=True)
        res = det.detect(images)
        assert set(res[0].detections) == {*fakes.TASKS, task}
    fan = infer(grpcclient.InferenceServerClient(server.url), "detect", batch)
    assert_same({n: fan.as_numpy(f"{task}_{n}") for n in OUTS}, ort_reference(work, "small", task, batch))


def test_failed_model_load_names_the_model_and_stop_leaves_no_process(tmp_path, fakes):
    work = fakes.make_workspace(tmp_path / "w")
    repo = build_repository(work).path
    (repo / "head_people/1/model.onnx").unlink()  # the repo holds a hardlink: unlink, then write
    (repo / "head_people/1/model.onnx").write_bytes(b"not an onnx file")
    server = EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with pytest.raises(ServingError, match=r"(?s)exited.*head_people"):
        server.start()
    assert server.pid is None
    ok = EmbeddedTriton(
        repo,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        models=["trunk", "head_cars", "detect_cars"],
    )
    ok.start()
    pgid = ok.pid
    assert len(group_processes(pgid)) == 3  # server + trunk stub + head stub
    with pytest.raises(ServingError, match="load of model 'head_people' failed"):
        ok.load("head_people")
    ok.stop()
    assert group_processes(pgid) == [] and not ok.is_alive()


def test_serve_forever_reports_a_server_that_dies(tmp_path, fakes):
    repo = build_repository(fakes.make_workspace(tmp_path / "w")).path
    server = EmbeddedTriton(
        repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), models=["trunk"]
    )

    def kill_when_up():
        while server.startup_s is None:  # start() returned
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)

    threading.Thread(target=kill_when_up, daemon=True).start()
    with pytest.raises(ServingError, match=r"tritonserver died \(exit code -9\)"):
        server.serve_forever(poll_s=0.1)
    assert not server.is_alive()


def test_serve_forever_stops_cleanly_on_sigterm(tmp_path, fakes):
    repo = build_repository(fakes.make_workspace(tmp_path / "w")).path
    code = (
        "import sys; from serving.triton.embedded_server import EmbeddedTriton, free_port;"
        f"s = EmbeddedTriton({str(repo)!r}, grpc_port=free_port(), http_port=free_port(),"
        " metrics_port=free_port(), models=['trunk']);"
        "print('pg', flush=True); s.serve_forever(poll_s=0.1); print('stopped', flush=True)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "pg"
    deadline = time.monotonic() + 30
    while not _triton_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    server_pid = _triton_children(proc.pid)[0]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out
    assert group_processes(server_pid) == []


def _triton_children(ppid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            pids.append(int(stat.parent.name))
    return pids
