"""`polyhead search` on a tiny workspace: variants in the catalogue, served unchanged; the bench on constructed rows."""

from __future__ import annotations

import numpy as np
import pytest

from serving.cli.main import main
from shared.artifacts import read_json
from shared.errors import ConfigError
from tests.tiny_workspace import build_tiny_workspace
from transfer.elastic.elastic_search import ElasticSettings, run_elastic_search
from transfer.elastic.sandwich import SandwichSettings
from transfer.elastic.search import SearchSettings
from transfer.elastic.search_bench import search_benchmark
from transfer.export.onnx_graphs import session

SETTINGS = ElasticSettings(SandwichSettings(steps=2, batch_size=4), SearchSettings(population=4, generations=1),
                           width_choices=(0.5, 1.0), train_images=8, calibration_images=8, max_images=4,
                           latency_samples=6, latency_repeats=2, keep=2)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = build_tiny_workspace(tmp_path_factory.mktemp("elastic"), 8, 4, {})
    return root / "work", run_elastic_search(root / "work", "cpu", (), SETTINGS, progress=False)


def test_search_writes_admissible_catalogue_variants_that_run_every_head(searched) -> None:
    work, report = searched
    assert report.published and len(report.state["evaluated"]) == 8
    assert (work / "elastic" / f"search-{report.device}.json").exists()
    assert set(report.latency["holdout_mape_pct"]) == {"b1", "b8"}
    catalogue = read_json(work / "trunk" / "catalogue.json")
    for key, name in report.published.items():
        meta = read_json(work / "trunk" / name / "variant.json")
        assert meta["elastic"]["key"] == key and meta["elastic"]["device"] == report.device
        assert report.device in meta["latency_ms"] and "signs" in meta["map"]
        assert name in catalogue["variants"] and "admitted" in catalogue["variants"][name]
        trunk = session(work / "trunk" / name / "model.onnx")
        feats = trunk.run(None, {"images": np.zeros((1, 3, 64, 64), np.uint8)})
        assert [f.shape for f in feats] == [(1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2)]
        head = session(work / "heads" / "signs" / "model.onnx")
        assert head.run(["num_dets"], dict(zip([i.name for i in head.get_inputs()], feats)))[0].shape == (1, 1)


def test_search_resumes_without_training_or_evaluating_again(searched) -> None:
    work, first = searched
    state = work / "elastic" / f"search-{first.device}.json"
    before = (work / "checkpoints" / "supernet.pt").stat().st_mtime_ns
    again = run_elastic_search(work, "cpu", (), SETTINGS, progress=False)
    assert (work / "checkpoints" / "supernet.pt").stat().st_mtime_ns == before
    assert again.state["front"] == first.state["front"] and read_json(state)["evaluated"].keys() == \
        first.state["evaluated"].keys()


def test_a_budget_no_subnetwork_meets_names_the_fastest_latency(searched) -> None:
    work, _ = searched
    with pytest.raises(ConfigError, match=r"no sub-network meets a 0.0001 ms budget .* the fastest \(the smallest "
                                          r"sub-network\) takes \d+\.\d+ ms"):
        run_elastic_search(work, "cpu", (0.0001,), SETTINGS, progress=False)


def test_cli_rejects_an_unknown_architecture_naming_the_choices(searched, capsys) -> None:
    work, _ = searched
    code = main(["search", "--workdir", str(work), "--arch", "huge", "--steps", "2", "--batch-size", "4",
                 "--population", "4", "--generations", "1", "--max-images", "4", "--latency-samples", "6",
                 "--train-images", "8", "--calibration-images", "8"])
    assert code == 2 and "unknown architecture 'huge'; choose one of ['largest', 'smallest']" in capsys.readouterr().err


def _row(b1: float, mean: float, admitted: bool = True, precision: str = "fp32") -> dict:
    return {"latency_b1_ms": b1, "latency_b8_ms": 8 * b1, "mean_map": mean, "admitted": admitted,
            "precision": precision, "max_map_drop": 100 * (0.6 - mean)}


def test_bench_interpolates_the_pruned_curve_at_equal_latency() -> None:
    rows = {"reference": _row(10, 0.60), "pruned-r1": _row(6, 0.40, False), "pruned-r2": _row(5, 0.45, False),
            "int8": _row(4, 0.59, False, "int8"),
            "elastic-a": _row(9, 0.60), "elastic-b": _row(7.5, 0.55), "elastic-c": _row(8, 0.50, False)}
    result = search_benchmark({"variants": rows, "device": "cpu-x", "tolerance_points": 1.0, "tasks": ["t"]})
    assert [p["variant"] for p in result["pruned_curve"]] == ["pruned-r2", "reference"]  # r1 is dominated
    assert [p["variant"] for p in result["front"]] == ["elastic-b", "elastic-a"]
    # at 7.5 ms the curve (5 ms, .45) -> (10 ms, .60) gives .525; at 9 ms .57
    assert result["front_gain_points"] == pytest.approx(((0.55 - 0.525) + (0.60 - 0.57)) * 50)
    assert result["operating_points_count"] == 2 and not result["targets"]["operating_points"]["met"]
    assert result["switch_ms"] is None and result["slo_within"] is None and result["memory_all_variants_ratio"] is None
