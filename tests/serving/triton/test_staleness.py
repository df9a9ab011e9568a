"""A repository knows what it was built from: ``polyhead serve`` rebuilds one the workspace has outgrown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli.serving_commands import repository_to_serve
from serving.triton.repository import add_task_to_repository, build_repository, read_options
from serving.triton.staleness import stale_reasons
from tests.fake_workspace import export_head


def _unadmit(work: Path, variant: str) -> None:
    path = work / "trunk" / variant / "variant.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "admitted": False}))


def test_a_fresh_build_is_up_to_date_and_every_change_is_named(workspace: Path) -> None:
    repo = build_repository(workspace, max_batch_size=4).path
    assert stale_reasons(workspace, repo) == []
    export_head(workspace, "bikes", ["bike"], seed=40)  # a new task (an offline add-task)
    export_head(workspace, "signs", ["stop", "yield", "speed"], seed=41)  # a retrained head
    _unadmit(workspace, "small")
    assert stale_reasons(workspace, repo) == [
        "head 'bikes' added", "head 'signs' changed", "trunk variant 'small' removed",
    ]


def test_a_hot_add_keeps_the_record_up_to_date(workspace: Path) -> None:
    repo = build_repository(workspace, max_batch_size=4, heads_layout="in_trunk").path
    export_head(workspace, "bikes", ["bike"], seed=40)
    add_task_to_repository(repo, workspace, "bikes")
    assert stale_reasons(workspace, repo) == []


def test_a_repository_without_sources_counts_as_stale(workspace: Path) -> None:
    repo = build_repository(workspace, max_batch_size=4).path
    build = json.loads((repo / "build.json").read_text())
    del build["sources"]
    (repo / "build.json").write_text(json.dumps(build))
    assert stale_reasons(workspace, repo) == ["it was built before repositories recorded their sources"]


@pytest.mark.parametrize("layout", ["shared", "in_trunk"])
def test_serve_rebuilds_a_stale_repository_with_its_own_options_and_names_what_changed(
    workspace: Path, layout: str, capsys: pytest.CaptureFixture
) -> None:
    repo = build_repository(workspace, max_batch_size=4, heads_layout=layout).path
    assert repository_to_serve(workspace, "per_task") == repo and capsys.readouterr().out == ""  # up to date
    export_head(workspace, "bikes", ["bike"], seed=40)
    assert repository_to_serve(workspace, "per_task") == repo
    out = capsys.readouterr().out
    assert "no longer matches the workspace (head 'bikes' added); rebuilding it" in out
    assert f"{layout.replace('_', '-')} heads" in out
    assert read_options(repo).heads_layout == layout and read_options(repo).max_batch_size == 4  # options kept
    assert "bikes" in json.loads((repo / "build.json").read_text())["tasks"]
    assert stale_reasons(workspace, repo) == []
