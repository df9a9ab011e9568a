"""Access: model control needs the admin key, inference does not; live changes under load lose nothing."""

import urllib.error
import urllib.request

import pytest

from serving.bench.load_generator import BackgroundTraffic
from serving.client import AsyncDetector, Detector
from serving.triton.deployment_facts import ADMIN_KEY_ENV, ADMIN_KEY_HEADER
from serving.triton.embedded_server import EmbeddedTriton
from serving.triton.model_control import GRPC_ADMIN_HEADER, ModelControl, control_headers, restricted_flags
from serving.triton.repository import add_task_to_repository, set_live_trunk_version
from shared.errors import ServingError

KEY = "s3cret-Key_42"


@pytest.fixture(scope="module")
def work(tmp_path_factory, fakes):
    return fakes.make_workspace(tmp_path_factory.mktemp("access_work"))


@pytest.fixture(scope="module")
def server(work, server_factory):
    srv = server_factory(work, admin_key=KEY)
    srv.start()
    yield srv
    srv.stop()


def test_admin_key_is_read_from_the_environment_and_becomes_restricted_protocol_flags(monkeypatch, tmp_path):
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-env")
    cmd = EmbeddedTriton(tmp_path).command()
    assert f"--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:{ADMIN_KEY_HEADER}=from-env" in cmd
    assert f"--http-restricted-api=model-repository,shared-memory,trace,logging:{ADMIN_KEY_HEADER}=from-env" in cmd
    assert not any("restricted" in a for a in EmbeddedTriton(tmp_path, admin_key="").command())
    assert control_headers() == {GRPC_ADMIN_HEADER: "from-env"}
    assert control_headers("k", "http") == {ADMIN_KEY_HEADER: "k"}
    monkeypatch.delenv(ADMIN_KEY_ENV)
    assert control_headers() == {} and restricted_flags(None) == ()
    with pytest.raises(ServingError, match="must not contain"):
        EmbeddedTriton(tmp_path, admin_key="a:b=c")


@pytest.mark.triton
def test_unauthenticated_model_control_is_refused_while_inference_works(server, fakes):
    for key, hint in (("", "no key was sent"), ("wrong", "the key is wrong")):
        with ModelControl(server.url, key=key, timeout_s=10) as control:
            with pytest.raises(ServingError, match=f"load of model 'head_cars' refused.*{hint}"):
                control.load("head_cars")
            with pytest.raises(ServingError, match="unload of model 'trunk' refused"):
                control.unload("trunk")
            with pytest.raises(ServingError, match="repository index refused"):
                control.index()
    req = urllib.request.Request(f"{server.http_url}/v2/repository/models/trunk/unload", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403 and ADMIN_KEY_HEADER in refused.value.read().decode()
    with Detector(server.url, timeout_s=10) as det:  # a serving client: no key
        assert det.tasks() == sorted(fakes.TASKS)
        results = det.detect(fakes.random_images(3))
    assert len(results) == 3 and set(results[0].detections) == set(fakes.TASKS)


@pytest.mark.triton
def test_async_client_discovers_tasks_without_the_key(server, fakes):
    import asyncio

    async def run():
        async with AsyncDetector(server.url, timeout_s=10) as det:
            return await det.tasks(), await det.detect(fakes.random_images(1), "people")

    tasks, results = asyncio.run(run())
    assert tasks == sorted(fakes.TASKS) and list(results[0].detections) == ["people"]


@pytest.mark.triton
def test_authenticated_model_control_succeeds(server):
    with ModelControl(server.url, key=KEY, timeout_s=60) as control:
        control.reload("head_cars")
        states = {m.name: m.state for m in control.index()}
        assert states["head_cars"] == "READY" and "trunk" in control.ready_models()
    server.load("head_signs")  # the launcher's own (HTTP) control sends the key too


@pytest.mark.triton
def test_trunk_switch_and_task_hot_add_under_load_fail_no_request(server, work, fakes):
    images = fakes.random_images(4, seed=3)
    task, classes = fakes.EXTRA_TASK
    with ModelControl(server.url, key=KEY, timeout_s=120) as control:
        with BackgroundTraffic(server.url, images, None, threads=3) as all_tasks, BackgroundTraffic(
            server.url, images, "cars", threads=1
        ) as one_task:
            for version in (1, 2, 1, None):  # ref, small, ref, latest
                set_live_trunk_version(server.repository, version)
                control.load("trunk")
            fakes.export_head(work, task, classes, seed=7)
            add_task_to_repository(server.repository, work, task)
            for model in (f"head_{task}", f"detect_{task}", "detect"):
                control.load(model)
        assert all_tasks.failed == 0 and one_task.failed == 0, all_tasks.errors + one_task.errors
        assert all_tasks.ok > 5 and one_task.ok > 2
    with Detector(server.url) as det:
        assert task in det.tasks(refresh=True)
        assert set(det.detect(images[0])[0].detections) == {*fakes.TASKS, task}
