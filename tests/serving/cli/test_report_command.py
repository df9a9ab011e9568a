"""``polyhead report`` on a tiny real workspace: it writes the page, prints its path and what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cli.main import main as cli_main
from transfer.report.page import read_page_data


@pytest.fixture(scope="module")
def tiny(tiny_workspace, tmp_path_factory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("reportcmd"), 2, 4, {"int8": False}) / "work"


def test_report_prints_the_page_and_each_missing_figure_with_its_command(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert cli_main(["report", "--workdir", str(tiny), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"report: {out / 'index.html'} (")
    assert (out / "index.html").is_file()
    missing = [line for line in lines if line.startswith("  missing: ")]
    # untrained by the loop, never pruned, no corruption benchmark: each named with the command that makes it
    assert any("training loss history" in line and f"polyhead train --workdir {tiny}" in line for line in missing)
    assert any("a pruned variant" in line and "polyhead compress" in line for line in missing)
    assert any("robustness of reference, int8" in line for line in missing)
    data = read_page_data((out / "index.html").read_text())
    assert data["heatmap"]["figures"] == ["heatmap.png"] and data["channels"]["figures"] == []
    assert len(data["heatmap"]["missing"]) == 0 and len(data["channels"]["missing"]) == 1


def test_report_writes_under_the_workspace_by_default(tiny: Path, capsys) -> None:
    assert cli_main(["report", "--workdir", str(tiny)]) == 0
    assert (tiny / "report" / "index.html").is_file()
    assert f"report: {tiny / 'report' / 'index.html'}" in capsys.readouterr().out


def test_report_on_a_directory_without_a_trunk_exits_2_naming_polyhead_train(tmp_path: Path, capsys) -> None:
    assert cli_main(["report", "--workdir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "run `polyhead train" in capsys.readouterr().err
