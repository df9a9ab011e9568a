"""The per-request variants benchmark's pure parts: the trace, the share within the objective, the table."""

import pytest

from serving.bench.load_generator import Sample
from serving.bench.variants_bench import format_table, parse_trace, share_within, targets
from shared.errors import ConfigError


def test_a_trace_is_seconds_x_clients_items_and_a_bad_item_is_named():
    assert parse_trace("4x1, 2.5x8") == ((4.0, 1), (2.5, 8))
    for bad in ("4x0", "4-1", "x3", ""):
        with pytest.raises(ConfigError, match="SECONDSxCLIENTS"):
            parse_trace(bad)


def test_failed_and_slow_requests_count_as_outside_the_objective():
    samples = [Sample(0, 0.01, True), Sample(0, 0.03, True), Sample(0, 0.001, False, "boom"), Sample(0, 0.02, True)]
    assert share_within(samples, 0.02) == 0.5
    assert share_within([], 0.02) is None


def result(per_request, static_best, switch_ms=0.2, ratio=1.1):
    run = {"requests": 10, "failed": 0, "within": per_request, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    return {"objective_ms": 50.0, "tasks": ["a", "b"], "trace": [[4.0, 1], [2.0, 8]], "switch_ms": switch_ms,
            "memory_all_variants_ratio": ratio, "memory_mib": {"one": {"rss_mib": 100.0}, "all": {"rss_mib": 110.0}},
            "slo_within": {"per_request": per_request, "static_best": static_best},
            "runs": {"per_request": run, "static_best": {**run, "within": static_best, "variant": "ref"}}}


def test_the_targets_and_the_table_say_which_were_met():
    assert targets(result(0.995, 0.9)) == {"switch_below_1ms": True, "memory_at_most_1.3x": True,
                                           "per_request_99_static_best_below_95": True}
    missed = targets(result(0.98, 0.97, switch_ms=1.5, ratio=1.4))
    assert not any(missed.values())
    table = format_table(result(0.98, 0.97))
    assert "| static_best (ref) | 10 | 0 | 97.0 % |" in table and "98.0 % / 97.0 % | >= 99 % / < 95 % | no |" in table


def test_search_serving_figures_hold_only_admitted_variants_and_need_a_second_one(tmp_path):
    from serving.bench.variants_bench import add_serving_figures

    # a refused front point is not served: with none admitted there is nothing to switch to
    search = {"front": [{"variant": "elastic-refused"}], "operating_points": [], "switch_ms": None}
    assert add_serving_figures(search, tmp_path) is search
    assert search["switch_ms"] is None
    assert "the admitted variants are ['reference'], per-request needs two" in search["serving_note"]
