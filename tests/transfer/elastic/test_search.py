"""The search: a non-dominated front, resumable state, budgets, the latency predictor's error."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shared.artifacts import read_json
from shared.errors import ConfigError
from shared.trunk import TRUNK_SIZES
from transfer.elastic.latency_model import fit, holdout_error, subnet_features
from transfer.elastic.search import (
    SearchSettings,
    _seeds,
    choose,
    dominates,
    near_largest,
    pareto_front,
    run_search,
)
from transfer.elastic.space import ElasticSpace, SubnetArch

SPACE = ElasticSpace(TRUNK_SIZES["nano"], (0.5, 0.75, 1.0))  # 3^5 = 243 sub-networks


def _objectives(arch: SubnetArch) -> dict:
    """Constructed figures: latency grows with width; accuracy too, but not evenly across blocks."""
    w = np.array(arch.widths)
    return {"latency_ms": float(1 + w.sum()), "map": {"a": float((w * [0, 1, 3, 2, 5, 0.5]).sum() / 20)}}


def test_pareto_front_keeps_exactly_the_non_dominated_points() -> None:
    points = {"a": (1.0, 0.2), "b": (2.0, 0.5), "c": (2.5, 0.4), "d": (3.0, 0.6), "e": (1.0, 0.1)}
    assert pareto_front(points) == ["a", "b", "d"]


def test_search_returns_a_non_dominated_front(tmp_path) -> None:
    state = run_search(SPACE, _objectives, SearchSettings(population=6, generations=3), tmp_path / "s.json", {"v": 1},
                       progress=False)
    assert state["mode"] == "evolutionary"
    assert len(state["evaluated"]) <= 24
    points = {k: (v["latency_ms"], v["mean_map"]) for k, v in state["evaluated"].items()}
    front = state["front"]
    assert len(front) >= 3
    for k in front:
        assert not any(dominates(points[o], points[k]) for o in points)
    for k in set(points) - set(front):
        assert any(dominates(points[f], points[k]) for f in front)


def test_small_spaces_are_searched_exhaustively(tmp_path) -> None:
    space = ElasticSpace(TRUNK_SIZES["nano"], (0.5, 1.0))
    state = run_search(space, _objectives, SearchSettings(population=8, generations=3), tmp_path / "s.json", {},
                       progress=False)
    assert state["mode"] == "exhaustive" and len(state["evaluated"]) == 32


def test_an_interrupted_search_resumes_and_finds_the_same_front(tmp_path) -> None:
    settings = SearchSettings(population=5, generations=2, seed=4)
    whole = run_search(SPACE, _objectives, settings, tmp_path / "whole.json", {"v": 1}, progress=False)
    calls = []

    def interrupted(arch: SubnetArch) -> dict:
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(arch.key())
        return _objectives(arch)

    path = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        run_search(SPACE, interrupted, settings, path, {"v": 1}, progress=False)
    assert len(read_json(path)["evaluated"]) == 7
    again = []
    resumed = run_search(SPACE, lambda a: again.append(a.key()) or _objectives(a), settings, path, {"v": 1},
                         progress=False)
    assert not set(again) & set(calls)  # nothing evaluated twice
    assert len(calls) + len(again) == len(whole["evaluated"])
    assert resumed["front"] == whole["front"]
    fresh = []
    run_search(SPACE, lambda a: fresh.append(1) or _objectives(a), settings, path, {"v": 2}, progress=False)
    assert len(fresh) == len(whole["evaluated"])  # another signature starts afresh


def test_budgets_pick_the_most_accurate_fit_and_reject_impossible_ones(tmp_path) -> None:
    state = run_search(SPACE, _objectives, SearchSettings(population=6, generations=2), tmp_path / "s.json", {},
                       progress=False)
    done = state["evaluated"]
    fastest = min(v["latency_ms"] for v in done.values())
    picked = choose(state, keep=1, budgets_ms=(fastest + 0.6,))[0]
    assert done[picked]["latency_ms"] <= fastest + 0.6
    within = [v["mean_map"] for v in done.values() if v["latency_ms"] <= fastest + 0.6]
    assert done[picked]["mean_map"] == max(within)
    with pytest.raises(ConfigError, match=f"fastest evaluated one takes {fastest:.2f} ms"):
        choose(state, keep=3, budgets_ms=(fastest - 0.5,))
    assert len(choose(state, keep=4)) == min(4, len(state["front"]))


def test_latency_predictor_fits_linear_costs_and_reports_a_held_out_error() -> None:
    rng = np.random.default_rng(0)
    archs = [SPACE.sample(__import__("random").Random(i)) for i in range(20)]
    x = np.stack([subnet_features(SPACE, a, 64) for a in archs])
    true = np.array([0.5, 0.02, 0.01, 0.05])
    y = x @ true
    assert holdout_error(x, y)[0] < 1.0  # percent
    noisy = y * (1 + 0.1 * rng.standard_normal(len(y)))
    err, n = holdout_error(x, noisy)
    assert n == 5 and 0.5 < err < 40
    assert np.allclose(x @ fit(x, y), y, rtol=0.02)


def test_near_largest_is_one_step_down_and_seeds_the_search() -> None:
    largest, near = SPACE.largest(), near_largest(SPACE)
    assert near and largest not in near and len({a.key() for a in near}) == len(near)
    for arch in near:
        SPACE.validate(arch)
        depth_steps = sum(a != b for a, b in zip(arch.depths, largest.depths))
        narrowed = {w for w, full in zip(arch.widths, largest.widths) if w != full}
        assert (depth_steps, narrowed) in ((1, set()), (0, {SPACE.width_choices[-2]})), arch.key()
    assert _seeds(SPACE, 2 + len(near), random.Random(0))[2:] == near
