"""The per-request variants benchmark's pure parts: the trace, the share within the objective, the table."""

import pytest

from serving.bench.load_generator import Sample
from serving.bench.variants_bench import parse_trace
from serving.bench.variants_figures import format_table, live_at, served_map, share_within, targets
from shared.errors import ConfigError


def test_a_trace_is_seconds_x_clients_items_and_a_bad_item_is_named():
    assert parse_trace("4x1, 2.5x8") == ((4.0, 1), (2.5, 8))
    for bad in ("4x0", "4-1", "x3", ""):
        with pytest.raises(ConfigError, match="SECONDSxCLIENTS"):
            parse_trace(bad)
    # open loop: a load factor (a multiple of the capacity), 0 allowed, a fraction allowed
    assert parse_trace("4x0.3,2x1.25,1x0", load="open") == ((4.0, 0.3), (2.0, 1.25), (1.0, 0.0))
    for bad in ("4x-1", "4xfast", "0x1"):
        with pytest.raises(ConfigError, match=r"SECONDSxLOAD \(a multiple of the capacity"):
            parse_trace(bad, load="open")


def test_served_map_weights_each_variant_by_the_requests_it_answered():
    maps = {"ref": 0.6, "small": 0.4}
    assert served_map({"ref": 3, "small": 1}, maps) == 0.55
    assert served_map({"other": 5}, maps) is None
    # the reload controller's switches: the variant live when each request was sent
    samples = [Sample(t, 0.01, True) for t in (0.5, 1.5, 2.5, 3.5)]
    assert live_at(samples, "ref", [(1.0, "ref", "small", 0.4), (3.0, "small", "ref", 0.3)]) == {"ref": 2, "small": 2}


def test_failed_and_slow_requests_count_as_outside_the_objective():
    samples = [Sample(0, 0.01, True), Sample(0, 0.03, True), Sample(0, 0.001, False, "boom"), Sample(0, 0.02, True)]
    assert share_within(samples, 0.02) == 0.5
    assert share_within([], 0.02) is None


def result(per_request, static_best, switch_ms=0.2, ratio=1.1):
    run = {"requests": 10, "failed": 0, "within": per_request, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    return {"objective_ms": 50.0, "tasks": ["a", "b"], "trace": [[4.0, 1], [2.0, 8]], "switch_ms": switch_ms,
            "memory_all_variants_ratio": ratio, "memory_mib": {"one": {"rss_mib": 100.0}, "all": {"rss_mib": 110.0}},
            "slo_within": {"per_request": per_request, "static_best": static_best},
            "runs": {"per_request": {**run, "served_map": 0.512},
                     "static_best": {**run, "within": static_best, "variant": "ref"}}}


def test_the_targets_and_the_table_say_which_were_met():
    assert targets(result(0.995, 0.9)) == {"switch_below_1ms": True, "memory_at_most_1.3x": True,
                                           "per_request_99_static_best_below_95": True}
    missed = targets(result(0.98, 0.97, switch_ms=1.5, ratio=1.4))
    assert not any(missed.values())
    table = format_table(result(0.98, 0.97))
    assert "| static_best (ref) | 10 | 0 | 97.0 % | - |" in table
    assert "98.0 % / 97.0 % | >= 99 % / < 95 % | no |" in table
    assert "| per_request | 10 | 0 | 98.0 % | 0.512 |" in table
    assert "closed-loop trace 4 s x 1, 2 s x 8 clients" in table
    opened = format_table({**result(0.99, 0.5), "load": "open", "trace": [[2.0, 1.25]], "capacity_per_s": 80.0})
    assert "trace 2 s x 1.25 x the most accurate variant's capacity (80 requests/s)" in opened
    phased = result(0.99, 0.5)
    phased["runs"]["per_request"].update(within_by_phase=[1.0, 0.975], by_round=[0.991, 0.985])
    assert "- per_request: 100 % / 98 %; by round 99.1 % / 98.5 %" in format_table(phased)


def test_within_is_split_by_the_phase_each_request_was_sent_in():
    from serving.bench.variants_figures import within_by_phase

    samples = [Sample(t, lat, True) for t, lat in [(0.5, 0.01), (3.9, 0.09), (4.0, 0.01), (5.5, 0.2), (9.0, 0.01)]]
    # phases [0, 4), [4, 6), [6, 7): the last sample, sent after the trace's end, counts in the last phase
    assert within_by_phase(samples, [(4.0, 1), (2.0, 8), (1.0, 1)], 0.05) == [0.5, 0.5, 1.0]
    assert within_by_phase(samples[:1], [(4.0, 1), (2.0, 8)], 0.05) == [1.0, None]


def test_search_serving_figures_hold_only_admitted_variants_and_need_a_second_one(tmp_path):
    from serving.bench.variants_bench import add_serving_figures

    # a refused front point is not served: with none admitted there is nothing to switch to
    search = {"front": [{"variant": "elastic-refused"}], "operating_points": [], "switch_ms": None}
    assert add_serving_figures(search, tmp_path) is search
    assert search["switch_ms"] is None
    assert "the admitted variants are ['reference'], per-request needs two" in search["serving_note"]


def test_rounds_of_a_mode_are_pooled_with_each_rounds_share_kept():
    from serving.bench.variants_figures import pool_round, pooled

    run = {"rounds": [], "counts": {}}
    pool_round(run, [Sample(0.0, 0.01, True), Sample(1.0, 0.5, True)], {"a": 2}, None)
    pool_round(run, [Sample(0.0, 0.01, True)], {"a": 0, "b": 1}, [(1.0, "a", "b", 0.3)])
    figures = pooled(run["rounds"], 0.1)
    assert len(figures["samples"]) == 3 and figures["by_round"] == [0.5, 1.0]
    assert run["counts"] == {"a": 2, "b": 1} and run["switches"] == [(1.0, "a", "b", 0.3)]
