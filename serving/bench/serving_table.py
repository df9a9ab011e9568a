"""Markdown tables of :func:`serving.bench.serving_bench.run_serving_bench` results."""

from __future__ import annotations

from serving.triton import model_configs as mcfg


def format_table(result: dict) -> str:
    """Markdown table of :func:`run_serving_bench` output, then latency, batching and targets."""
    others = [x for x in mcfg.HEADS_LAYOUTS if x != result["heads_layout"]]
    lines = ["| N tasks | shared img/s (clients) | in-process img/s | speed-up vs in-process / ceiling "
             "(fraction) | CPU ms/img shared / in-process (compute): CPU speed-up over the ceiling "
             "| independent img/s (clients) | speed-up "
             "| shared p50 / p95 ms "
             "| independent p95 ms | RSS shared / independent MiB | PSS shared / independent MiB | Triton / ort p50 ms "
             + "".join(f"| {x} img/s, RSS / PSS MiB " for x in others) + "| errors |",
             "|---" * (13 + len(others)) + "|"]
    for r in result["rows"]:
        errors = (r["independent"]["errors"] + r["inprocess"]["errors"]
                  + sum(side["errors"] for side in r["layouts"].values()))
        alt = "".join(f"{r['layouts'][x]['img_per_s']:.1f}, {r['layouts'][x]['rss_mib']:.0f} / "
                      f"{r['layouts'][x]['pss_mib']:.0f} | " for x in others)
        lines.append(
            f"| {r['tasks']} | {r['shared_images_per_s']:.1f} ({r['shared']['concurrency']}) | "
            f"{r['inprocess_images_per_s']:.1f} ({r['inprocess']['concurrency']}) | "
            f"{r['speedup_vs_inprocess']:.2f}x / {r['ceiling_speedup']:.2f}x ({r['fraction_of_ceiling']:.0%}) | "
            f"{r['shared_cpu_ms_per_image']:.1f} ({r['shared_compute_ms_per_image']:.1f}) / "
            f"{r['inprocess_cpu_ms_per_image']:.1f} ({r['inprocess_compute_ms_per_image']:.1f}): "
            f"{r['cpu_fraction_of_ceiling']:.0%} of the ceiling | "
            f"{r['independent_images_per_s']:.1f} ({r['independent']['concurrency']}) | "
            f"{r['speedup']:.2f}x | {r['shared_p50_ms']:.1f} / {r['shared_p95_ms']:.1f} | "
            f"{r['independent_p95_ms']:.1f} | {r['shared_rss_mb']:.0f} / {r['independent_rss_mb']:.0f} "
            f"({r['rss_fraction']:.0%}) | {r['shared_pss_mb']:.0f} / {r['independent_pss_mb']:.0f} "
            f"({r['pss_fraction']:.0%}) | {r['triton_p50_ms']:.2f} / {r['ort_p50_ms']:.2f} | {alt}{errors} |")
    lines += [f"N={f['tasks']}: FAILED ({f['error'][:200]})" for f in result.get("failed", [])]
    lat, cost = result["latency"], result["cost"]
    lines += ["", f"Shared side: heads layout `{result['heads_layout']}`; beside it: {', '.join(others)}. "
              f"CPU: {result['cpu']}, {result['cpus']} cores.",
              *(f"- {name}: {what}" for name, what in result["baselines"].items()),
              f"T = {cost['trunk_ms']:.2f} ms, H = {cost['head_ms']:.2f} ms.",
              f"Latency, N={lat['tasks']}: Triton `detect` p50 {lat['triton_p50_ms']:.2f} ms vs in-process "
              f"onnxruntime p50 {lat['ort_p50_ms']:.2f} ms = {lat['ratio']:.2f}x"]
    if "dynamic_batching" in result:
        b = result["dynamic_batching"]
        lines.append(f"Dynamic batching, `detect`, N={b['tasks']}, concurrency {b['concurrency']}: "
                     f"off {b['off_images_per_s']:.1f} img/s, on {b['on_images_per_s']:.1f} img/s = "
                     f"{b['gain']:.2f}x")
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        if "ceiling_target" in t:
            lines.append(f"Target N={t['tasks']}: shared / in-process >= {t['ceiling_target']:.0%} of the ceiling; "
                         f"got {t['fraction_of_ceiling']:.0%}: {verdict}")
        elif "tasks" in t:
            beside = ", ".join(f"{x} {'met' if ok else 'missed'}" for x, ok in t["layouts_met"].items() if x in others)
            lines.append(f"Target N={t['tasks']} vs independent: >= {t['speedup_target']:.0f}x img/s and <= "
                         f"{t['memory_target']:.0%} memory; got {t['speedup']:.2f}x, RSS {t['rss_fraction']:.0%} "
                         f"(PSS {t['pss_fraction']:.0%}): {verdict} ({beside})")
        else:
            lines.append(f"Target Triton p50 <= {t['latency_target']}x onnxruntime; got "
                         f"{t['latency_ratio']:.2f}x: {verdict}")
    return "\n".join(lines)
