"""Several Triton replicas keep the controller's variant: a shared repository pins it, and the controller reconciles."""

import shutil

import pytest
import tritonclient.grpc as grpcclient

from serving.controller import Controller, ControllerConfig, Policy, TrunkSwitcher, Variant
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.repository import build_repository

pytestmark = pytest.mark.triton


def serve(repo) -> EmbeddedTriton:
    return EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), admin_key="")


def ready_versions(url: str) -> list[int]:
    return [int(v) for v in grpcclient.InferenceServerClient(url).get_model_metadata("trunk").versions]


class UnderObjective:
    """Prometheus as the controller sees it: every task well inside its objective (no decision)."""

    def p95(self, source="client"):
        return {"cars": 0.001, "people": 0.001}


@pytest.fixture()
def repo(workspace):
    summary = build_repository(workspace, max_batch_size=4)
    return summary.path, {n: v for v, n in summary.trunk_versions.items()}


def test_a_replica_started_after_a_switch_on_a_shared_repository_serves_the_chosen_variant(repo):
    path, by_name = repo
    assert by_name["ref"] != max(by_name.values())  # unpinned, a replica would serve the latest version
    with serve(path) as first:
        TrunkSwitcher(first.url, path).apply(Variant("ref", by_name["ref"], 0.5, 10.0))
        assert ready_versions(first.url) == [by_name["ref"]]
        with serve(path) as second:  # e.g. a scale-up reading the same volume
            assert ready_versions(second.url) == [by_name["ref"]]


def test_the_controller_brings_a_replica_of_another_repository_copy_to_its_variant(repo, tmp_path):
    path, by_name = repo
    copy = tmp_path / "synced-copy"  # what a replica's init container syncs from S3: no pin in it
    shutil.copytree(path, copy)
    small = Variant("small", by_name["small"], 0.4, 5.0)
    ref = Variant("ref", by_name["ref"], 0.5, 10.0)
    with serve(path) as first, serve(copy) as late:
        TrunkSwitcher(first.url).apply(ref)  # the switch happened before `late` joined
        assert ready_versions(late.url) == [max(by_name.values())]
        both = TrunkSwitcher(f"{first.url},{late.url}")
        assert len(both.replicas()) == 2
        policy = Policy([ref, small], ControllerConfig({"cars": 0.05}), live="ref", delays=both.batch_delay())
        ctl = Controller(policy, UnderObjective(), both)
        assert ctl.step() is None  # nothing to decide ...
        assert ready_versions(late.url) == [by_name["ref"]]  # ... but the late replica was reconciled
        assert ready_versions(first.url) == [by_name["ref"]]
        assert ctl.reconcile() == []  # every replica agrees now: no reload
        # the reconciled replica still answers
        detect = grpcclient.InferenceServerClient(late.url).get_model_metadata("detect")
        assert detect.name == "detect"
