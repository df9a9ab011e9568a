"""The benchmarks' staged workspace serves every named variant, whatever its catalogue flags say."""

import json

from serving.bench.controller_bench import staging_workspace
from shared.workspace import Workspace


def test_staged_variants_are_admitted_and_on_every_device_front(workspace, tmp_path):
    ws = Workspace.at(workspace)
    path = ws.variant("small") / "variant.json"
    meta = json.loads(path.read_text())
    meta.update(admitted=False, max_map_drop=7.5, pareto_by_device={"cpu-x-2t": False, "cuda-y": True})
    path.write_text(json.dumps(meta))
    forced = staging_workspace(workspace, ["ref", "small"], tmp_path / "staged")
    assert forced == {"small": 7.5}
    staged = json.loads((Workspace.at(tmp_path / "staged").variant("small") / "variant.json").read_text())
    assert staged["admitted"] and staged["pareto"]
    assert staged["pareto_by_device"] == {"cpu-x-2t": True, "cuda-y": True}  # the repository builder reads these
    assert json.loads(path.read_text())["admitted"] is False  # the source workspace is not touched

