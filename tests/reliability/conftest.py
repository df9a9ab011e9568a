"""Reliability tests reuse the serving tests' tiny real workspace (ONNX trunk variants + heads)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from serving.repository import build_repository
from serving.server import EmbeddedTriton, free_port


def _serving_fakes() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "serving" / "conftest.py"
    spec = importlib.util.spec_from_file_location("polyhead_serving_fakes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKES = _serving_fakes()
fakes = FAKES.fakes
workspace_template = FAKES.workspace_template
workspace = FAKES.workspace


def make_server(work: Path, **kwargs: object) -> EmbeddedTriton:
    """A (not started) server on free ports over a freshly built repository of ``work``."""
    repo = kwargs.pop("repo", None) or build_repository(work, max_batch_size=4).path
    kwargs.setdefault("admin_key", "")  # tests never inherit a developer's POLYHEAD_ADMIN_KEY
    return EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **kwargs)


@pytest.fixture(scope="session")
def server_factory():
    """``make_server`` for test modules (they cannot import conftest)."""
    return make_server
