"""Helpers of the k8s tests: render the kustomize overlays (needs `kubectl`, else tests skip), find manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "cpu")


def render(overlay: str) -> list[dict]:
    """`kubectl kustomize k8s/overlays/<overlay>` as a list of manifests."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays (needs kubectl >= 1.27)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    """Manifests of ``kind`` (and ``name``, ignoring kustomize's hash suffix) among ``docs``."""
    def named(doc: dict) -> bool:
        return name is None or doc["metadata"]["name"] == name or doc["metadata"]["name"].startswith(f"{name}-")

    return [d for d in docs if d["kind"] == kind and named(d)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    """The single manifest of ``kind`` named ``name``."""
    hits = [d for d in find(docs, kind, name) if d["metadata"]["name"] == name] or find(docs, kind, name)
    assert len(hits) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def container(deployment: dict, name: str, init: bool = False) -> dict:
    """Container ``name`` of a Deployment (an init container with ``init``)."""
    key = "initContainers" if init else "containers"
    found = [c for c in deployment["spec"]["template"]["spec"].get(key, []) if c["name"] == name]
    assert found, f"{deployment['metadata']['name']} has no {key[:-1]} {name!r}"
    return found[0]
