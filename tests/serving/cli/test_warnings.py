"""Counted fixes (the project's warnings) print as one ``polyhead: warning:`` line; others keep Python's format."""

from __future__ import annotations

import warnings

from serving.cli import demo_command, main
from transfer.data.coco import DataWarning


def test_project_warnings_are_one_line_and_others_keep_their_source(monkeypatch):
    seen = {}

    def command(args):  # what Python's warning printer writes while a command runs
        seen["ours"] = warnings.formatwarning("val.json: 2 boxes clipped", DataWarning, "coco.py", 7)
        seen["other"] = warnings.formatwarning("deprecated", UserWarning, "lib.py", 3)
        return 0

    monkeypatch.setattr(demo_command, "_cmd_demo", command)
    assert main.main(["demo"]) == 0
    assert seen["ours"] == "polyhead: warning: val.json: 2 boxes clipped\n"
    assert seen["other"].startswith("lib.py:3: UserWarning: deprecated")
    assert warnings.formatwarning is main._default_format_warning  # restored on the way out
