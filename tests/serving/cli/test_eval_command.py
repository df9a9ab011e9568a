"""``polyhead eval`` on a tiny real workspace: the printed report and the ``--json`` keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli.main import main as cli_main
from shared.workspace import Workspace
from transfer.data.synth import CLASSES

NEW_KEYS = ("per_class", "map_small", "map_medium", "map_large", "ar100")


@pytest.fixture(scope="module")
def tiny(tiny_workspace, tmp_path_factory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("evalcmd"), 2, 4, {})


def test_eval_json_has_the_new_metrics_and_the_records_keep_only_map_and_map50(tiny, tmp_path, capsys):
    ws = Workspace.at(tiny / "work")
    head_json = (ws.head("signs") / "head.json").read_text()
    out = tmp_path / "eval.json"
    code = cli_main(["eval", "--workdir", str(ws.root), "--task", "signs", "--val-json",
                     str(tiny / "data" / "signs" / "val.json"), "--images", str(tiny / "data" / "images"),
                     "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"map", "map50", *NEW_KEYS}
    assert list(result["per_class"]) == list(CLASSES["signs"])
    assert all(set(ap) == {"map", "map50"} for ap in result["per_class"].values())
    for key in ("map", "map50"):
        assert 0.0 <= result[key] <= 1.0
    for value in [result[k] for k in NEW_KEYS[1:]] + [v for ap in result["per_class"].values() for v in ap.values()]:
        assert value is None or 0.0 <= value <= 1.0

    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("signs: mAP@[.5:.95]="))
    assert lines[first] == f"signs: mAP@[.5:.95]={result['map']:.4f} mAP50={result['map50']:.4f}"
    def shown(v):
        return "-" if v is None else f"{v:.3f}"

    rows = lines[first + 2: first + 2 + len(CLASSES["signs"])]
    assert [row.split() for row in rows] == [[name, shown(ap["map"]), shown(ap["map50"])]
                                             for name, ap in result["per_class"].items()]
    summary = lines[first + 2 + len(CLASSES["signs"])].split()
    assert summary[1::2] == ["small", "medium", "large", "AR@100"]
    assert summary[2::2] == [shown(result[k]) for k in ("map_small", "map_medium", "map_large", "ar100")]

    assert (ws.head("signs") / "head.json").read_text() == head_json  # eval records nothing
    records = [json.loads(head_json)["map"], json.loads((ws.variant("reference") / "variant.json").read_text())["map"]]
    assert [set(r) for r in records] == [{"reference"}, {"signs"}]
    assert all(set(m) == {"map", "map50"} for r in records for m in r.values())
