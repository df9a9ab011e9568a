"""k8s/training: the training Job renders, passes Kubernetes 1.30's schemas, and its torchrun line parses."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from torch.distributed.run import get_args_parser

from serving.cli.main import build_parser
from tests.k8s.manifests import K8S, one


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render k8s/training")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "training")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_every_resource_passes_the_schemas_strictly(docs: list[dict]) -> None:
    assert sorted(d["kind"] for d in docs) == ["Job", "NetworkPolicy", "PersistentVolumeClaim", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
        assert doc["metadata"]["namespace"] == "polyhead"


def test_torchrun_line_matches_the_job_and_the_cli(docs: list[dict]) -> None:
    job, service = one(docs, "Job", "polyhead-train"), one(docs, "Service", "polyhead-train")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "torch.distributed.run"]
    run = get_args_parser().parse_args(container["args"])
    assert job["spec"]["completionMode"] == "Indexed"
    assert int(run.nnodes) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert run.rdzv_backend == "c10d" and run.module and run.training_script == "serving.cli.main"
    # pod 0's name in the headless Service's domain, on the port the Service publishes
    assert run.rdzv_endpoint == f"{job['metadata']['name']}-0.{service['metadata']['name']}:29400"
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    args = build_parser().parse_args(run.training_script_args)
    assert (args.command, args.workdir, args.device, args.nproc) == ("train", "/var/lib/polyhead", "auto", 1)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
    assert claim[mounts[args.workdir]] == one(docs, "PersistentVolumeClaim", "polyhead-train-work")["metadata"]["name"]


def test_pods_run_restricted(docs: list[dict]) -> None:
    spec = one(docs, "Job", "polyhead-train")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
