"""Figures from ``variant.json`` alone: the latency/mAP Pareto front per device and the task x variant mAP heat map."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from transfer.compression.catalogue import device_pareto, latency_of, mean_map
from transfer.report.section import Missing, Section, png_bytes, pyplot

COMPRESS_HINT = "run `polyhead compress --workdir W` (measures latency, evaluates every head on every variant)"


def common_tasks(variants: Mapping[str, dict]) -> list[str]:
    """Tasks evaluated on every variant (sorted): the ones a mean mAP can compare across variants."""
    sets = [set(meta.get("map", {})) for meta in variants.values()]
    return sorted(set.intersection(*sets)) if sets else []


def pareto_data(variants: Mapping[str, dict]) -> dict[str, Any]:
    """The points of :func:`pareto_section`, per device key.

    Returns:
        ``{"tasks": [...], "devices": {device: {variant: {"b1", "b8", "mean_map", "admitted", "front"}}}}``:
        ``b1`` / ``b8`` the ``latency_ms`` of ``variant.json``, ``mean_map`` the mean mAP@[.5:.95]
        over ``tasks`` (those evaluated on every variant), ``front`` the variant's recorded
        ``pareto_by_device`` flag for that device, or where none is recorded whether it is on the
        front of that device's admitted variants (:func:`~transfer.compression.catalogue.device_pareto`).
    """
    tasks = common_tasks(variants)
    admitted = [n for n, m in variants.items() if m.get("admitted")]
    devices: dict[str, dict[str, dict]] = {}
    keys = dict.fromkeys(k for m in variants.values() for k in (m.get("latency_ms") or {}))
    for device in keys:
        computed = device_pareto(variants, admitted, device, tasks)
        for name, meta in variants.items():
            if (lat := latency_of(meta, device)) is None:
                continue
            recorded = (meta.get("pareto_by_device") or {}).get(device)
            devices.setdefault(device, {})[name] = {
                "b1": lat[0], "b8": lat[1], "mean_map": mean_map(meta, tasks), "admitted": name in admitted,
                "front": bool(recorded) if recorded is not None else computed[name]}
    return {"tasks": tasks, "devices": devices}


def pareto_section(variants: Mapping[str, dict]) -> Section:
    """Latency (batch 1 and 8) against mean mAP, one row of two panels per device key."""
    data = pareto_data(variants)
    devices = data["devices"]
    caption = (f"Mean mAP@[.5:.95] over {', '.join(data['tasks']) or 'no common task'} against latency; filled: "
               "admitted, hollow: refused; the line joins the front of the admitted variants.")
    if not devices or not data["tasks"]:
        return Section("pareto", "Latency / mAP Pareto front", caption, data=data,
                       missing=(Missing("latency and mAP of the variants", COMPRESS_HINT),))
    plt = pyplot()
    fig, axes = plt.subplots(len(devices), 2, figsize=(11, 4 * len(devices)), squeeze=False)
    for row, (device, points) in zip(axes, devices.items()):
        for ax, batch in zip(row, ("b1", "b8")):
            for name, p in points.items():
                y = 100 * (p["mean_map"] or 0.0)
                color = "C0" if p["front"] else "C7"
                ax.scatter(p[batch], y, s=50, facecolors=color if p["admitted"] else "none", edgecolors=color)
                ax.annotate(name, (p[batch], y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            front = sorted((p[batch], 100 * (p["mean_map"] or 0.0)) for p in points.values() if p["front"])
            if front:
                ax.plot(*zip(*front), color="C0", lw=1)
            ax.set(xlabel=f"latency {batch} (ms)", ylabel="mean mAP (%)", title=f"{device}, batch {batch[1:]}")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return Section("pareto", "Latency / mAP Pareto front", caption, (("pareto.png", png_bytes(fig)),), data)


def map_table(variants: Mapping[str, dict]) -> dict[str, dict[str, float | None]]:
    """``{task: {variant: map}}`` from ``variant.json`` (``None`` where a head was not evaluated on it)."""
    tasks = sorted({t for meta in variants.values() for t in meta.get("map", {})})
    return {t: {name: (float(meta["map"][t]["map"]) if t in meta.get("map", {}) else None)
                for name, meta in variants.items()} for t in tasks}


def heatmap_section(variants: Mapping[str, dict]) -> Section:
    """Task x variant mAP@[.5:.95] heat map, numbers in the cells, grey where not evaluated."""
    table = map_table(variants)
    caption = "mAP@[.5:.95] (%) of every head on every trunk variant, from variant.json; '-': not evaluated."
    if not table:
        return Section("heatmap", "mAP per task and variant", caption, data=table,
                       missing=(Missing("mAP of any head on any variant", COMPRESS_HINT),))
    names, tasks = list(variants), list(table)
    grid = np.array([[np.nan if table[t][n] is None else 100 * table[t][n] for n in names] for t in tasks])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 0.6 * len(tasks) + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=max(1.0, np.nanmax(grid, initial=0)),
                      aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=9,
                color="black" if np.isnan(v) or v > 0.6 * np.nanmax(grid, initial=1) else "white")
    fig.colorbar(image, ax=ax, label="mAP (%)")
    fig.tight_layout()
    return Section("heatmap", "mAP per task and variant", caption, (("heatmap.png", png_bytes(fig)),), table)
