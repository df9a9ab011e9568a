"""mPC / rPC: the summary on hand-made figures, the rPC admission rule, and a real measurement on a workspace."""

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import ConfigError
from tests.transfer.evaluation.robustness_workspace import build_robustness_workspace
from transfer.compress import CompressSettings, run_compress
from transfer.compression.catalogue import admit_robustness, build_catalogue, rpc_drop_points
from transfer.evaluation.robustness import CLEAN, RobustnessSettings, is_current, summarise
from transfer.robustness_bench import run_robustness_bench

FEW = RobustnessSettings(corruptions=("gaussian_noise", "contrast"), max_images=3)


def test_summary_means_over_tasks_and_rpc_is_mpc_over_clean():
    maps = {"a": {CLEAN: 0.6, ("jpeg", 1): 0.5, ("jpeg", 2): 0.4, ("jpeg", 3): 0.3},
            "b": {CLEAN: 0.4, ("jpeg", 1): 0.4, ("jpeg", 2): 0.2, ("jpeg", 3): 0.0}}
    entry = summarise(maps, {"a": 10, "b": 7}, 12, seed=5, max_images=10)
    assert entry["per_task"]["a"]["mpc"] == pytest.approx(0.4)
    assert entry["per_task"]["a"]["rpc"] == pytest.approx(0.4 / 0.6)
    assert entry["per_task"]["b"]["per_corruption"] == {"jpeg": {"1": 0.4, "2": 0.2, "3": 0.0}}
    assert entry["clean_map"] == pytest.approx(0.5)
    assert entry["per_corruption"]["jpeg"] == pytest.approx({"1": 0.45, "2": 0.3, "3": 0.15})
    assert entry["mpc"] == pytest.approx(0.3)
    assert entry["rpc"] == pytest.approx(0.3 / 0.5)
    assert (entry["images"], entry["seed"], entry["per_task"]["b"]["images"]) == (12, 5, 7)
    zero = summarise({"a": {CLEAN: 0.0, ("jpeg", 1): 0.0}}, {"a": 1}, 1, 0, 1)
    assert zero["rpc"] is None and zero["mpc"] == 0.0


def _meta(m, rpc):
    meta = {"size_bytes": 1, "latency_ms": {"dev": {"b1": 1.0, "b8": 8.0}}, "map": {"t": {"map": m}}}
    return meta | ({"robustness": {"clean_map": m, "mpc": m * rpc, "rpc": rpc}} if rpc is not None else {})


def test_the_robustness_tolerance_admits_only_variants_within_p_rpc_points_of_the_reference():
    assert rpc_drop_points(0.60, 0.62) == pytest.approx(2.0)
    assert rpc_drop_points(None, 0.62) is None
    assert admit_robustness(2.0, 2.0)[0] and admit_robustness(-5.0, 2.0)[0]
    ok, why = admit_robustness(2.5, 2.0)
    assert not ok and "2.50 rPC points" in why
    metas = {"reference": _meta(0.50, 0.62), "close": _meta(0.50, 0.605),  # 1.5 points: admitted
             "fragile": _meta(0.50, 0.59),  # 3 points: rejected
             "sturdier": _meta(0.50, 0.70),  # more robust than the reference
             "unmeasured": _meta(0.50, None), "inaccurate": _meta(0.40, 0.62)}  # 10 mAP points: the mAP rule
    rows = build_catalogue(metas, "reference", 1.0, "dev", ["t"], robustness_tolerance=2.0)["variants"]
    assert {n for n, r in rows.items() if r["admitted"]} == {"reference", "close", "sturdier"}
    assert rows["fragile"]["rpc_drop"] == pytest.approx(3.0) and "3.00 rPC points" in rows["fragile"]["reason"]
    assert "not measured" in rows["unmeasured"]["reason"]
    assert "mAP points" in rows["inaccurate"]["reason"]
    off = build_catalogue(metas, "reference", 1.0, "dev", ["t"])["variants"]  # default: robustness plays no part
    assert {n for n, r in off.items() if r["admitted"]} == {"reference", "close", "fragile", "sturdier", "unmeasured"}
    assert off["fragile"]["rpc"] == pytest.approx(0.59)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_robustness_workspace(tmp_path_factory.mktemp("robust"))


@pytest.fixture()
def work(template, tmp_path) -> Path:
    shutil.copytree(template.parent, tmp_path / "copy")
    return tmp_path / "copy" / "work"


def test_a_measurement_writes_the_entry_into_variant_json_and_repeats_exactly(work):
    result = run_robustness_bench(work, settings=FEW, progress=False)
    meta = json.loads((work / "trunk/reference/variant.json").read_text())
    entry = meta["robustness"]
    assert {"clean_map", "mpc", "rpc", "per_corruption", "per_task", "images", "seed"} <= set(entry)
    assert entry["clean_map"] > 0.3  # the ground truth is the clean detections
    assert entry["rpc"] == pytest.approx(entry["mpc"] / entry["clean_map"])
    assert set(entry["per_corruption"]) == {"gaussian_noise", "contrast"}
    assert all(set(sev) == {"1", "2", "3"} for sev in entry["per_corruption"].values())
    assert entry["per_corruption"]["contrast"]["3"] < entry["clean_map"]  # contrast x 0.05 changes the detections
    assert (entry["images"], entry["per_task"]["photos"]["images"], entry["seed"]) == (3, 3, 0)
    assert "map" in meta and meta["admitted"] is True  # the rest of the file is kept
    row = result["variants"]["reference"]
    assert row["rpc"] == entry["rpc"] and row["rpc_drop_points"] == 0.0
    assert is_current(meta, ["photos"], FEW) and not is_current(meta, ["photos", "x"], FEW)
    again = run_robustness_bench(work, settings=FEW, progress=False)
    assert again["variants"]["reference"]["per_corruption"] == row["per_corruption"]  # seeded per image


def test_unknown_variant_task_and_corruption_names_are_refused_naming_the_choices(work):
    with pytest.raises(ConfigError, match="unknown variant 'tiny'; choose from reference"):
        run_robustness_bench(work, variants=["tiny"], settings=FEW)
    with pytest.raises(ConfigError, match="unknown task 'cars'; choose from photos"):
        run_robustness_bench(work, tasks=["cars"], settings=FEW)
    with pytest.raises(ConfigError, match="unknown corruption 'fog'; choose from gaussian_noise, gaussian_blur"):
        RobustnessSettings(corruptions=("fog",))
    assert "robustness" not in json.loads((work / "trunk/reference/variant.json").read_text())


def test_compress_with_a_robustness_tolerance_measures_the_candidates_and_records_their_rpc(work):
    settings = CompressSettings(rounds=0, int8=False, fp16=True, max_images=8, latency_repeats=2, robustness=FEW)
    report = run_compress(work, tolerance=100.0, progress=False, settings=settings, device="cpu",
                          robustness_tolerance=2.0)
    rows = report.catalogue["variants"]
    assert report.catalogue["robustness_tolerance_points"] == 2.0
    fp16 = json.loads((work / "trunk/fp16/variant.json").read_text())
    assert rows["fp16"]["rpc"] == fp16["robustness"]["rpc"] is not None
    assert rows["fp16"]["rpc_drop"] == pytest.approx(100 * (rows["reference"]["rpc"] - rows["fp16"]["rpc"]))
    assert rows["fp16"]["admitted"] == (rows["fp16"]["rpc_drop"] <= 2.0) == fp16["admitted"]
