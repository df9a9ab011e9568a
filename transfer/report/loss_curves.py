"""Training loss curves (``checkpoints/<name>.history.json``) and the distillation fine-tunes' final losses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shared.artifacts import read_json
from transfer.report.section import Missing, Section, png_bytes, pyplot

HISTORY_SUFFIX = ".history.json"  # transfer.training.loop.history_path


def read_histories(checkpoints: Path) -> dict[str, dict[str, Any]]:
    """``{checkpoint name: {"start_epoch", "steps_per_epoch", "loss": [float]}}`` of every recorded run."""
    if not checkpoints.is_dir():
        return {}
    out = {}
    for path in sorted(checkpoints.glob(f"*{HISTORY_SUFFIX}")):
        record = read_json(path, "training history")
        out[path.name[: -len(HISTORY_SUFFIX)]] = {
            "start_epoch": int(record.get("start_epoch", 0)), "steps_per_epoch": int(record.get("steps_per_epoch", 1)),
            "loss": [float(v) for v in record.get("loss", [])]}
    return out


def finetune_data(variants: Mapping[str, dict]) -> dict[str, list[dict[str, Any]]]:
    """Distillation rounds from ``variant.json``'s ``compression`` steps, each chain once.

    A pruned variant lists its parents' rounds before its own and a quantized child repeats its
    parent's, so only the longest chains are kept, keyed by every variant that shares them
    (``"pruned-r2, pruned-r2-int8 (and pruned-r1)"``).

    Returns:
        ``{variants: [{"round", "steps", "final_loss", "holdout_feature_error"}]}``.
    """
    chains: dict[tuple, list[str]] = {}
    for name, meta in variants.items():
        rounds = tuple((r.get("steps"), r.get("final_loss"), r.get("holdout_feature_error"))
                       for r in meta.get("compression") or [] if r.get("step") == "distill")
        if rounds:
            chains.setdefault(rounds, []).append(name)
    out = {}
    for rounds, names in chains.items():
        prefixes = [n for other, ns in chains.items() if len(other) < len(rounds) and rounds[: len(other)] == other
                    for n in ns]
        if any(len(longer) > len(rounds) and longer[: len(rounds)] == rounds for longer in chains):
            continue  # a prefix of a longer chain: drawn with it
        key = ", ".join(names) + (f" (and {', '.join(prefixes)})" if prefixes else "")
        out[key] = [{"round": i + 1, "steps": steps, "final_loss": loss, "holdout_feature_error": error}
                    for i, (steps, loss, error) in enumerate(rounds)]
    return out


def _smooth(values: list[float], window: int) -> np.ndarray:
    """Moving average over ``window`` steps (shorter at the start)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_section(checkpoints: Path, variants: Mapping[str, dict]) -> Section:
    """Left: every recorded training run's loss per step; right: each pruned variant's distillation rounds."""
    histories, finetunes = read_histories(checkpoints), finetune_data(variants)
    data = {"training": histories, "finetune": finetunes}
    missing = []
    if not histories:
        missing.append(Missing("training loss history (checkpoints/<trunk>.history.json)",
                               "run `polyhead train --workdir W` (training records it since issue 17)"))
    if not finetunes:
        missing.append(Missing("distillation fine-tune losses", "run `polyhead compress --workdir W` (pruning rounds)"))
    caption = ("Total training loss per step (thin) and its moving average over an epoch; the distillation "
               "fine-tune of each pruning round records only its final loss and held-out feature error.")
    if not histories and not finetunes:
        return Section("losses", "Loss curves", caption, data=data, missing=tuple(missing))
    plt = pyplot()
    panels = int(bool(histories)) + int(bool(finetunes))
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    left, right = (axes[0][0], axes[0][-1])
    for i, (name, h) in enumerate(histories.items()):
        steps = h["start_epoch"] * h["steps_per_epoch"] + np.arange(len(h["loss"]))
        left.plot(steps, h["loss"], color=f"C{i}", alpha=0.3, lw=0.8)
        left.plot(steps, _smooth(h["loss"], max(1, h["steps_per_epoch"])), color=f"C{i}", label=name)
    if histories:
        left.set(xlabel="step", ylabel="total loss", title="training")
    for i, (name, rounds) in enumerate(finetunes.items()):
        xs = [r["round"] for r in rounds]
        right.plot(xs, [r["final_loss"] for r in rounds], "o-", color=f"C{i}", label=f"{name} final loss")
        right.plot(xs, [r["holdout_feature_error"] for r in rounds], "s--", color=f"C{i}", alpha=0.6,
                   label=f"{name} held-out feature error")
    if finetunes:
        right.set(xlabel="pruning round", title="distillation fine-tunes")
        right.set_xticks(sorted({r["round"] for rounds in finetunes.values() for r in rounds}))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return Section("losses", "Loss curves", caption, (("losses.png", png_bytes(fig)),), data, tuple(missing))
