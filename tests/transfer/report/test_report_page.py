"""polyhead report on a small real workspace: the page renders in headless Chromium; its numbers are the workspace's."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import ArtifactError
from shared.trunk import TrunkConfig
from tests.transfer.report.report_workspace import DISTILL_ROUNDS, ROBUSTNESS, TASKS, build_report_workspace
from transfer.data.coco import load_coco
from transfer.evaluate import evaluate_task
from transfer.report import build_report
from transfer.report.page import read_page_data

SECTIONS = ("pareto", "heatmap", "ap", "channels", "similarity", "robustness", "losses", "detections")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report")
    work = build_report_workspace(root)
    result = build_report(work, root / "out")
    page = result.path.read_text()
    return {"work": work, "data_root": root / "data", "result": result, "page": page, "data": read_page_data(page)}


def variant_json(work: Path, name: str) -> dict:
    return json.loads((work / "trunk" / name / "variant.json").read_text())


def render(page: Path) -> tuple[str, list[str]]:
    """Chromium's DOM of ``page`` after load, and the console lines it logged."""
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium missing: "
                                    "sudo apt-get install -y --no-install-recommends chromium")


@needs_chromium
def test_the_page_loads_in_headless_chromium_with_every_image_decoded_and_no_console_message(built: dict) -> None:
    dom, console = render(built["result"].path)
    images = len(re.findall(r"<img ", built["page"]))
    assert images == len(SECTIONS)  # the workspace has something for every figure
    assert f'data-images-decoded="{images}/{images}"' in dom
    assert console == []
    for key in SECTIONS:
        assert f'<section id="{key}">' in dom


@needs_chromium
def test_the_render_check_sees_a_broken_image_and_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(built_page_with_faults())
    dom, console = render(page)
    assert 'data-images-decoded="0/1"' in dom
    assert any("Uncaught ReferenceError" in line for line in console)


def built_page_with_faults() -> str:
    from transfer.report.page import render_page
    from transfer.report.section import Section

    broken = Section("bad", "Broken", "a PNG that is not one", (("bad.png", b"not a png"),), data={})
    return render_page("faults", [], [broken], []).replace("</body>", "<script>undefinedFunction();</script></body>")


def test_every_figure_is_a_png_with_varied_pixels(built: dict) -> None:
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', built["page"])
    assert len(uris) == len(built["result"].figures) == len(SECTIONS)
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as png:
            assert png.format == "PNG" and min(png.size) >= 100
            pixels = np.asarray(png.convert("L"), dtype=np.float64)
        assert pixels.std() > 5.0  # not one flat colour
        assert (pixels < 128).mean() > 0.001  # some dark ink: text, lines, bars


def test_pareto_points_are_the_latency_and_mean_map_of_each_variant_json(built: dict) -> None:
    devices = built["data"]["pareto"]["data"]["devices"]
    assert devices
    for device, points in devices.items():
        assert set(points) == {"reference", "pruned-r1", "copy"}
        for name, point in points.items():
            meta = variant_json(built["work"], name)
            assert point["b1"] == meta["latency_ms"][device]["b1"]
            assert point["b8"] == meta["latency_ms"][device]["b8"]
            assert point["mean_map"] == pytest.approx(np.mean([meta["map"][t]["map"] for t in TASKS]))
            assert point["admitted"] == meta["admitted"]
        assert not points["pruned-r1"]["front"]  # refused variants are never on the front


def test_the_heat_map_holds_every_heads_map_on_every_variant(built: dict) -> None:
    table = built["data"]["heatmap"]["data"]
    assert set(table) == set(TASKS)
    for task in TASKS:
        for name in ("reference", "pruned-r1", "copy"):
            assert table[task][name] == variant_json(built["work"], name)["map"][task]["map"]


def test_kept_channels_are_the_pruned_hidden_widths_against_the_references_defaults(built: dict) -> None:
    rows = built["data"]["channels"]["data"]["variants"]
    pruned, ref = variant_json(built["work"], "pruned-r1"), variant_json(built["work"], "reference")
    assert rows["pruned-r1"]["hidden"] == pruned["trunk_config"]["backbone"]["hidden"]
    assert ref["trunk_config"]["backbone"]["hidden"] is None  # unpruned: the architecture's defaults
    assert rows["reference"]["hidden"] == list(TrunkConfig.from_dict(ref["trunk_config"]).backbone.default_hidden())
    assert rows["pruned-r1"]["pruned"] and not rows["copy"]["pruned"]
    assert all(0 < k <= 1 for k in rows["pruned-r1"]["kept"]) and min(rows["pruned-r1"]["kept"]) < 1
    assert rows["pruned-r1"]["channels"] == pruned["channels"]


def test_feature_similarity_is_one_for_the_same_trunk_and_lower_for_the_pruned_one(built: dict) -> None:
    cka = built["data"]["similarity"]["data"]
    assert set(cka["reference"]) == {"p3", "p4", "p5"}
    for level in ("p3", "p4", "p5"):
        assert cka["reference"][level] == pytest.approx(1.0)
        assert cka["copy"][level] == pytest.approx(1.0)
        assert 0.0 < cka["pruned-r1"][level] < 0.999


def test_ap_per_class_and_size_match_polyhead_eval_of_the_same_variant(built: dict) -> None:
    ap = built["data"]["ap"]["data"]
    for task in TASKS:
        val = load_coco(built["data_root"] / task / "val.json", built["data_root"] / "images", name=task)
        for name in ("reference", "pruned-r1"):
            expected = evaluate_task(built["work"], task, val, name)
            got = ap[task][name]
            assert got["per_class"] == expected["per_class"]
            assert [got[f"map_{a}"] for a in ("small", "medium", "large")] == \
                [expected[f"map_{a}"] for a in ("small", "medium", "large")]
            assert got["map"] == pytest.approx(variant_json(built["work"], name)["map"][task]["map"])


def test_robustness_is_drawn_for_the_variant_that_has_it_and_listed_missing_for_the_others(built: dict) -> None:
    section = built["data"]["robustness"]
    assert section["figures"] == ["robustness.png"]
    assert section["data"]["pruned-r1"]["per_corruption"] == ROBUSTNESS["per_corruption"]
    assert section["data"]["pruned-r1"]["rpc"] == ROBUSTNESS["rpc"]
    [line] = section["missing"]
    assert "robustness of reference, copy" in line
    assert any("robustness of reference, copy" in m.line() and "polyhead bench robustness --workdir" in m.line()
               for m in built["result"].missing)


def test_loss_curves_are_the_recorded_training_history_and_distillation_rounds(built: dict) -> None:
    losses = built["data"]["losses"]["data"]
    history = json.loads((built["work"] / "checkpoints" / "nano.history.json").read_text())
    assert losses["training"]["nano"]["loss"] == history["loss"] and len(history["loss"]) == 2  # 8 images / 4
    [rounds] = losses["finetune"].values()
    assert rounds == [{"round": 1, "steps": 4, "final_loss": DISTILL_ROUNDS[1]["final_loss"],
                       "holdout_feature_error": DISTILL_ROUNDS[1]["holdout_feature_error"]}]


def test_detections_show_the_ground_truth_of_the_images_drawn(built: dict) -> None:
    section = built["data"]["detections"]["data"]
    assert section["images"] and len(section["images"]) <= 4
    assert list(section["boxes_drawn"]) == ["ground truth", "reference", "copy", "pruned-r1"]  # the page's order
    for task in TASKS:
        val = load_coco(built["data_root"] / task / "val.json", built["data_root"] / "images", name=task)
        for im_id, im in val.images.items():
            name = Path(im.file_name).name
            if name in section["images"] and val.annotations[im_id]:
                assert section["boxes_drawn"]["ground truth"][name][task] == len(val.annotations[im_id])


def test_a_workspace_without_histories_or_pruning_says_which_command_makes_them(built: dict, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(built["work"], work)
    (work / "checkpoints" / "nano.history.json").unlink()
    shutil.rmtree(work / "trunk" / "pruned-r1")
    result = build_report(work, tmp_path / "out")
    lines = [m.line() for m in result.missing]
    assert any("training loss history" in line and f"polyhead train --workdir {work}" in line for line in lines)
    assert any("a pruned variant" in line and "polyhead compress" in line for line in lines)
    assert any("distillation fine-tune" in line for line in lines)
    assert "channels.png" not in result.figures and "pareto.png" in result.figures
    page = result.path.read_text()
    assert "a pruned variant" in page and "Missing" in page


def test_a_workspace_without_a_reference_trunk_is_refused_with_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="polyhead train"):
        build_report(tmp_path, tmp_path / "out")
