"""Robustness of each variant under common corruptions, drawn from ``variant.json``'s ``robustness`` entry.

The entry: ``{"clean_map": float, "mpc": float, "rpc": float, "per_corruption": {name: {severity: map}}}``
(mPC: mean mAP over corruptions and severities; rPC = mPC / clean mAP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transfer.report.section import Missing, Section, png_bytes, pyplot

#: Where the entry comes from: the corruption benchmark (``transfer.robustness_bench``) writes it.
ROBUSTNESS_HINT = "run `polyhead bench robustness --workdir W` (writes variant.json's `robustness`)"


def robustness_data(variants: Mapping[str, dict]) -> dict[str, dict[str, Any]]:
    """``{variant: robustness entry}`` of the variants that have one, severities as sorted string keys."""
    out = {}
    for name, meta in variants.items():
        entry = meta.get("robustness")
        if isinstance(entry, dict) and isinstance(entry.get("per_corruption"), dict):
            per = {c: {str(s): float(v) for s, v in sorted(sev.items(), key=lambda kv: float(kv[0]))}
                   for c, sev in entry["per_corruption"].items()}
            out[name] = {**{k: entry.get(k) for k in ("clean_map", "mpc", "rpc")}, "per_corruption": per}
    return out


def robustness_section(variants: Mapping[str, dict]) -> Section:
    """One panel per corruption: mAP against severity, a line per variant (clean mAP dashed)."""
    data = robustness_data(variants)
    absent = [n for n in variants if n not in data]
    caption = ("mAP under each corruption by severity; mPC / rPC per variant in the data block"
               + (f"; no robustness entry: {', '.join(absent)}" if absent else "") + ".")
    missing = (Missing(f"robustness of {', '.join(absent)}", ROBUSTNESS_HINT),) if absent else ()
    if not data:
        return Section("robustness", "Robustness per corruption", caption, data=data, missing=missing)
    corruptions = sorted({c for entry in data.values() for c in entry["per_corruption"]})
    cols = min(4, len(corruptions))
    rows = math.ceil(len(corruptions) / cols)
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3 * rows), squeeze=False)
    for ax, corruption in zip(axes.flat, corruptions):
        for i, (name, entry) in enumerate(data.items()):
            curve = entry["per_corruption"].get(corruption)
            if curve:
                ax.plot([float(s) for s in curve], [100 * v for v in curve.values()], "o-", color=f"C{i}",
                        label=f"{name} (rPC {entry['rpc']:.2f})" if entry.get("rpc") is not None else name)
            if entry.get("clean_map") is not None:
                ax.axhline(100 * entry["clean_map"], color=f"C{i}", ls="--", lw=0.8)
        ax.set(title=corruption, xlabel="severity", ylabel="mAP (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(corruptions):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return Section("robustness", "Robustness per corruption", caption, (("robustness.png", png_bytes(fig)),),
                   data, missing)
