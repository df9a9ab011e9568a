"""Fixtures for monitoring tests: the serving fakes, Prometheus binaries, a workspace with metrics."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"


def _serving_fakes() -> ModuleType:
    """tests/serving/conftest.py as a plain module (its fake ONNX workspace builders)."""
    spec = importlib.util.spec_from_file_location("_polyhead_serving_fakes", ROOT / "tests/serving/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FAKES = _serving_fakes()

#: Accuracy (mAP per task) and latency written into the fake variants: "ref" accurate and slow.
VARIANT_METRICS = {
    "ref": {"map": 0.50, "latency_ms": 10.0},
    "small": {"map": 0.40, "latency_ms": 5.0},
}


def add_variant_metrics(workdir: Path) -> None:
    """Write ``map`` and ``latency_ms`` into the fake variants' variant.json (as compression does)."""
    for name, m in VARIANT_METRICS.items():
        path = workdir / "trunk" / name / "variant.json"
        meta = json.loads(path.read_text())
        meta["map"] = {t: {"map": m["map"], "map50": m["map"] + 0.2} for t in _FAKES.TASKS}
        meta["latency_ms"] = {"cpu-test": {"b1": m["latency_ms"], "b8": 6 * m["latency_ms"]}}
        path.write_text(json.dumps(meta))


@pytest.fixture(scope="session")
def fakes() -> SimpleNamespace:
    """The serving fakes (same helpers as tests/serving's ``fakes``) plus ``add_variant_metrics``."""
    return SimpleNamespace(
        SIZE=_FAKES.SIZE,
        TASKS=_FAKES.TASKS,
        make_workspace=_FAKES.make_workspace,
        random_images=_FAKES.random_images,
        add_variant_metrics=add_variant_metrics,
    )


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed: apt-get install -y --no-install-recommends prometheus")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not installed: apt-get install -y --no-install-recommends prometheus")
    return path
