"""Per-class and per-size (COCO small / medium / large) AP of every variant on the validation splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from transfer.evaluation.coco_map import AREAS, CocoMetrics
from transfer.report.section import Missing, Section, png_bytes, pyplot


def _grouped(ax, groups: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str) -> None:
    """Bars of every series (one colour each) per group; ``None`` values are left out."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        ax.bar(xs, [np.nan if v is None else 100 * v for v in values], width, label=name, color=f"C{i}")
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0, fontsize=8)
    ax.set(ylabel="AP@[.5:.95] (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3, axis="y")


def ap_section(metrics: Mapping[str, Mapping[str, CocoMetrics]], images: Mapping[str, int]) -> Section:
    """One row per task: AP per class, and AP per object size, a bar per variant.

    Args:
        metrics: Variant -> task -> COCO metrics on the validation split (the reference first).
        images: Task -> number of validation images scored.
    """
    tasks = sorted({t for per_task in metrics.values() for t in per_task})
    data = {t: {v: dict(m[t]) for v, m in metrics.items() if t in m} for t in tasks}
    caption = ("AP@[.5:.95] per class and per COCO object size (small < 32², medium < 96², larger) on "
               + ", ".join(f"{t} ({images.get(t, 0)} images)" for t in tasks)
               + "; onnxruntime, every variant with every head. '-' in the data: no ground truth of that size.")
    if not tasks:
        return Section("ap", "AP per class and per object size", caption, data=data,
                       missing=(Missing("validation detections", "a validation split for each head "
                                        "(`polyhead train` or `polyhead add-task --val-json`)"),))
    plt = pyplot()
    fig, axes = plt.subplots(len(tasks), 2, figsize=(13, 3.3 * len(tasks)), squeeze=False,
                             gridspec_kw={"width_ratios": (2, 1)})
    for (left, right), task in zip(axes, tasks):
        per_variant = data[task]
        classes = list(next(iter(per_variant.values()))["per_class"])
        _grouped(left, classes, {v: [m["per_class"][c]["map"] for c in classes] for v, m in per_variant.items()},
                 f"{task}: AP per class")
        _grouped(right, list(AREAS), {v: [m[f"map_{a}"] for a in AREAS] for v, m in per_variant.items()},
                 f"{task}: AP per object size")
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return Section("ap", "AP per class and per object size", caption, (("ap.png", png_bytes(fig)),), data)
