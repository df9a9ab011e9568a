"""Faults with the real server: a killed tritonserver, broken head files, a failed reload."""

import os
import signal
import threading
import time

import pytest

from serving.client import Detector
from serving.triton.embedded_server import group_processes
from shared.errors import ServingError

pytestmark = pytest.mark.triton

TIMEOUT_S, RETRIES, BACKOFF_S = 5.0, 2, 0.1
#: Longest a failing call may take: every attempt times out, plus the backoffs, plus slack for a
#: loaded 2-core machine.
CALL_BOUND_S = TIMEOUT_S * (RETRIES + 1) + BACKOFF_S * (2**RETRIES) + 10.0


def _corrupt(path):
    path.unlink()  # the repository holds a hard link to the workspace's file: unlink, then write
    path.write_bytes(b"\x08\x01garbage, not a protobuf")


def _clients_until_stopped(url, images, stop, log, threads=4):
    """Threads calling detect() in a loop, logging (seconds, exception or None) per call."""

    def run():
        with Detector(url, timeout_s=TIMEOUT_S, retries=RETRIES, backoff_s=BACKOFF_S) as det:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    det.detect(images)
                    log.append((time.monotonic() - t0, None))
                except Exception as err:  # noqa: BLE001 - the test asserts on the type
                    log.append((time.monotonic() - t0, err))

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers


def test_killed_server_gives_bounded_clear_errors_and_a_restart_recovers_every_task(workspace, server_factory, fakes):
    server = server_factory(workspace)
    server.start()
    images = fakes.random_images(2)
    stop, log = threading.Event(), []
    workers = _clients_until_stopped(server.url, images, stop, log)
    try:
        deadline = time.monotonic() + 60
        while sum(err is None for _, err in log) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        served_before = len(log)
        os.kill(server.pid, signal.SIGKILL)  # the server only: its stubs are orphaned mid-request
        while sum(err is not None for _, err in log) < 8 and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        assert not server.is_alive()
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=CALL_BOUND_S + 5)
    assert not any(w.is_alive() for w in workers), "a client hung"
    after = log[served_before:]
    errors = [(s, e) for s, e in after if e is not None]
    assert len(errors) >= 8
    assert all(isinstance(e, ServingError) for _, e in errors), {type(e).__name__ for _, e in errors}
    assert max(s for s, _ in errors) < CALL_BOUND_S
    assert all(server.url in str(e) for _, e in errors), [str(e) for _, e in errors][:3]
    assert any("unavailable after 3 attempts" in str(e) for _, e in errors)
    pgid = server.pid or 0
    server.stop()  # what `polyhead serve` does once it sees the death: reap the orphaned stubs
    assert group_processes(pgid) == []
    server.start()  # same ports, same repository
    try:
        with Detector(server.url, timeout_s=30) as det:
            assert det.tasks() == sorted(fakes.TASKS)
            for task in fakes.TASKS:
                assert list(det.detect(images, task)[1].detections) == [task]
            assert set(det.detect(images)[0].detections) == set(fakes.TASKS)
    finally:
        server.stop()


def test_broken_head_files_fail_alone_when_starting_lenient(workspace, server_factory, fakes):
    server = server_factory(workspace, strict=False)
    _corrupt(server.repository / "head_people/1/model.onnx")
    (server.repository / "head_signs/1/model.onnx").unlink()
    with server:
        assert set(server.failed_models) == {"head_people", "detect_people", "head_signs", "detect_signs", "detect"}
        assert "head_people/1/model.onnx" in server.failed_models["head_people"]
        assert "head_signs" in server.failed_models["head_signs"]
        assert "head_people" in server.failed_models["detect_people"]
        assert server.is_ready()
        with Detector(server.url, timeout_s=30) as det:
            assert det.tasks() == ["cars"]
            assert list(det.detect(fakes.random_images(2))[0].detections) == ["cars"]
        with pytest.raises(ServingError, match=r"load of model 'head_people' failed.*head_people"):
            server.load("head_people")
        # repaired on disk (e.g. add-task rerun): loading it and its ensembles brings the task back
        fakes.export_head(workspace, "people", fakes.TASKS["people"], seed=11)
        os.unlink(server.repository / "head_people/1/model.onnx")
        os.link(workspace / "heads/people/model.onnx", server.repository / "head_people/1/model.onnx")
        for model in ("head_people", "detect_people"):
            server.load(model)
        with Detector(server.url, timeout_s=30) as det:
            assert det.tasks() == ["cars", "people"]


def test_strict_start_with_a_deleted_head_names_it(workspace, server_factory):
    server = server_factory(workspace)
    (server.repository / "head_cars/1/model.onnx").unlink()
    with pytest.raises(ServingError, match=r"(?s)exited.*head_cars"):
        server.start()
    assert not server.is_alive()


def test_failed_reload_of_a_corrupted_head_keeps_every_task_serving(workspace, server_factory, fakes):
    with server_factory(workspace) as server:
        _corrupt(server.repository / "head_cars/1/model.onnx")
        with pytest.raises(ServingError, match=r"load of model 'head_cars' failed.*head_cars"):
            server.load("head_cars")
        with Detector(server.url, timeout_s=30) as det:
            served = det.tasks(refresh=True)
            results = det.detect(fakes.random_images(2))
        assert served == sorted(fakes.TASKS), served
        assert set(results[0].detections) == set(fakes.TASKS)
