"""Fixtures shared by every test package; the helpers behind them are importable modules of ``tests``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.repository import build_repository
from tests import fake_workspace
from tests.tiny_workspace import build_tiny_workspace


@pytest.fixture(scope="session")
def tiny_workspace() -> Callable[..., Path]:
    """:func:`tests.tiny_workspace.build_tiny_workspace`, for module-scoped templates."""
    return build_tiny_workspace


@pytest.fixture(scope="session")
def fakes() -> SimpleNamespace:
    """The fake serving workspace's helpers and constants (:mod:`tests.fake_workspace`)."""
    return SimpleNamespace(**{k: v for k, v in vars(fake_workspace).items() if not k.startswith("_")})


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_workspace.make_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture()
def workspace(workspace_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the fake workspace (tests may modify it)."""
    dst = tmp_path / "work"
    shutil.copytree(workspace_template, dst)
    return dst


def make_server(work: Path, **kwargs: object) -> EmbeddedTriton:
    """A (not started) server on free ports over a freshly built repository of ``work``."""
    repo = kwargs.pop("repo", None) or build_repository(work, max_batch_size=4).path
    kwargs.setdefault("admin_key", "")  # tests never inherit a developer's POLYHEAD_ADMIN_KEY
    return EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **kwargs)


@pytest.fixture(scope="session")
def server_factory() -> Callable[..., EmbeddedTriton]:
    """:func:`make_server`."""
    return make_server


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed: apt-get install -y --no-install-recommends prometheus")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")
