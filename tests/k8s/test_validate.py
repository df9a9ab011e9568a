"""Every overlay renders, passes Kubernetes 1.30's schemas (strict) and the CRD schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.manifests import OVERLAYS, find

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.json", "PrometheusRule": "prometheusrule.json"}
K8S_VERSION = "1.30"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_schemas_strictly(rendered: dict, overlay: str) -> None:
    checked = 0
    for doc in rendered[overlay]:
        if doc["kind"] in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
        checked += 1
    assert checked >= 15, f"{overlay}: only {checked} resources validated"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crds_pass_their_schemas(rendered: dict, overlay: str) -> None:
    for kind, schema_file in CRD_SCHEMAS.items():
        docs = find(rendered[overlay], kind)
        assert docs, f"{overlay} renders no {kind}"
        schema = json.loads((SCHEMAS / schema_file).read_text())
        for doc in docs:
            jsonschema.validate(doc, schema)


def test_crd_schemas_reject_unknown_fields() -> None:
    schema = json.loads((SCHEMAS / "servicemonitor.json").read_text())
    bad = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "15s"}]},
    }
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_restricted(rendered: dict, overlay: str) -> None:
    for dep in find(rendered[overlay], "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        name = dep["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        mounts_by_container = {}
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "memory" in c["resources"]["limits"], (name, c["name"])
            mounts_by_container[c["name"]] = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts_by_container[c["name"]], f"{name}/{c['name']}: read-only root needs /tmp"
        volumes = {v["name"] for v in pod["volumes"]}
        for c in pod["containers"] + pod.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}/{c['name']} mounts undefined volume {m['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_limit_only_in_gpu_overlay(rendered: dict, overlay: str) -> None:
    dep = [d for d in find(rendered[overlay], "Deployment") if d["metadata"]["name"] == "polyhead-triton"][0]
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1
