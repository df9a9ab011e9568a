"""What ``polyhead bench variants`` reports: shares within the objective, served mAP, pooled rounds, its table.

Pure functions over :class:`~serving.bench.load_generator.Sample` lists and the result dict of
:func:`serving.bench.variants_bench.run_variants_bench` (no server).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from serving.bench.load_generator import Sample, percentiles_ms


def share_within(samples: Sequence[Sample], objective_s: float) -> float | None:
    """Share of requests answered within ``objective_s`` (failed ones count as outside)."""
    return sum(1 for s in samples if s.ok and s.latency_s <= objective_s) / len(samples) if samples else None


def within_by_phase(samples: Sequence[Sample], trace: Sequence[tuple[float, float]], objective_s: float
                    ) -> list[float | None]:  # fmt: skip
    """:func:`share_within` of the requests sent in each phase of ``trace`` (``(seconds, level)``).

    A request sent after the trace's end counts in its last phase; a phase nobody was sent in is ``None``.
    """
    ends = list(itertools.accumulate(seconds for seconds, _ in trace))
    phases: list[list[Sample]] = [[] for _ in trace]
    for s in samples:
        phases[min(sum(s.t >= e for e in ends), len(trace) - 1)].append(s)
    return [share_within(p, objective_s) for p in phases]


def served_map(counts: dict[str, float], maps: dict[str, float]) -> float | None:
    """Mean mAP per request of the variants that answered ``counts`` requests each (``None``: none answered)."""
    total = sum(counts.get(v, 0) for v in maps)
    return round(sum(counts.get(v, 0) * m for v, m in maps.items()) / total, 4) if total else None


def live_at(samples: Sequence[Sample], first: str, switches: Sequence[tuple]) -> dict[str, float]:
    """Requests per variant live when each was sent, from the reload controller's ``(t, from, to, s)`` switches."""
    counts: dict[str, float] = {}
    for s in samples:
        live = first
        for t, _, to, _ in switches:
            if t <= s.t:
                live = to
        counts[live] = counts.get(live, 0) + 1
    return counts


def pool_round(run: dict, samples: list[Sample], counts: dict[str, float], switches: list | None) -> None:
    """Add one round of a mode to its ``run`` (its samples as one more round, answers per variant, switches)."""
    run["rounds"].append(samples)
    for name, n in counts.items():
        run["counts"][name] = run["counts"].get(name, 0) + n
    if switches is not None:
        run.setdefault("switches", []).extend(switches)


def pooled(rounds: Sequence[Sequence[Sample]], objective_s: float) -> dict:
    """``{"samples": every round's samples, "by_round": each round's share within}``."""
    return {"samples": [s for r in rounds for s in r], "by_round": [share_within(r, objective_s) for r in rounds]}


def default_objective_ms(runs: dict[str, dict], best: str, fastest: str) -> float:
    """The default objective from the static runs so far (see the module docstring)."""
    def latencies(name: str) -> list[float]:
        return [s.latency_s for r in runs[f"static_{name}"]["rounds"] for s in r if s.ok]

    p99_fast, p95_best = float(np.percentile(latencies(fastest), 99)), float(np.percentile(latencies(best), 95))
    return round(1e3 * max(1.2 * p99_fast, math.sqrt(p99_fast * p95_best)), 1)


def run_figures(samples: Sequence[Sample], objective_s: float, trace: Sequence[tuple[float, float]]) -> dict:
    """One mode's figures: requests, failed, share within (overall and per phase), p50/p95/p99 in ms."""
    lat = [s.latency_s for s in samples if s.ok]
    by_phase = [None if w is None else round(w, 4) for w in within_by_phase(samples, trace, objective_s)]
    return {"requests": len(samples), "failed": sum(not s.ok for s in samples),
            "within": share_within(samples, objective_s), "within_by_phase": by_phase,
            **percentiles_ms(lat, (50, 95, 99))}  # fmt: skip


def targets(result: dict) -> dict[str, bool]:
    """Whether each target of issue 16 was met: switch < 1 ms, memory <= 1.3x, per-request >= 99 % (static < 95 %)."""
    within = result["slo_within"]
    return {"switch_below_1ms": result["switch_ms"] < 1.0,
            "memory_at_most_1.3x": result["memory_all_variants_ratio"] <= 1.3,
            "per_request_99_static_best_below_95": (within["per_request"] or 0) >= 0.99
            and (within["static_best"] or 0) < 0.95}  # fmt: skip


def format_table(result: dict) -> str:
    """Markdown: the three figures, then one row per mode of the trace."""
    met = targets(result)
    mem = result["memory_mib"]
    lines = [
        f"objective {result['objective_ms']:g} ms per request (fan-out over {len(result['tasks'])} tasks); "
        + _trace_text(result), "",
        "| figure | value | target | met |", "|---|---|---|---|",
        f"| switch_ms (p50 after a change - p50 after the same) | {result['switch_ms']:.3f} ms | < 1 ms | "
        f"{'yes' if met['switch_below_1ms'] else 'no'} |",
        f"| memory_all_variants_ratio (RSS) | {result['memory_all_variants_ratio']:.3f} "
        f"({mem['all']['rss_mib']:.0f} / {mem['one']['rss_mib']:.0f} MiB) | <= 1.3 | "
        f"{'yes' if met['memory_at_most_1.3x'] else 'no'} |",
        f"| slo_within per_request / static_best | {100 * (result['slo_within']['per_request'] or 0):.1f} % / "
        f"{100 * (result['slo_within']['static_best'] or 0):.1f} % | >= 99 % / < 95 % | "
        f"{'yes' if met['per_request_99_static_best_below_95'] else 'no'} |", "",
        "| mode | requests | failed | within objective | served mAP | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, f in result["runs"].items():
        label = f"{name} ({f['variant']})" if "variant" in f else name
        served = f"{f['served_map']:.3f}" if f.get("served_map") is not None else "-"
        lines.append(f"| {label} | {f['requests']} | {f['failed']} | {100 * (f['within'] or 0):.1f} % | {served} | "
                     f"{f['p50_ms']:.1f} | {f['p95_ms']:.1f} | {f['p99_ms']:.1f} |")  # fmt: skip
    phased = [(name, f["within_by_phase"]) for name, f in result["runs"].items() if f.get("within_by_phase")]
    if phased:
        lines += ["", "within the objective per phase (" + ", ".join(f"{s:g} s x {c:g}" for s, c in result["trace"])
                  + "):"]  # fmt: skip
        lines += [f"- {name}: " + " / ".join("-" if w is None else f"{100 * w:.0f} %" for w in phases)
                  + _rounds_text(result["runs"][name]) for name, phases in phased]  # fmt: skip
    return "\n".join(lines)


def _rounds_text(run: dict) -> str:
    rounds = run.get("by_round") or []
    return f"; by round {' / '.join(f'{100 * w:.1f} %' for w in rounds)}" if len(rounds) > 1 else ""


def _trace_text(result: dict) -> str:
    phases = ", ".join(f"{s:g} s x {c:g}" for s, c in result["trace"])
    if result.get("load") == "open":
        return (f"open-loop Poisson arrivals, trace {phases} x the most accurate variant's capacity "
                f"({result['capacity_per_s']:g} requests/s)")
    return f"closed-loop trace {phases} clients"
