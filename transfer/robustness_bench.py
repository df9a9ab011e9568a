"""`polyhead bench robustness`: mPC / rPC of the workspace's trunk variants under common corruptions.

Names are checked before anything slow runs; every measured variant gets its ``robustness`` entry in
``variant.json`` (:mod:`transfer.evaluation.robustness`), and the result lists them side by side with
the robustness each variant loses against the reference in points (``100 x (reference rpc - rpc)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shared.artifacts import read_json
from shared.errors import ArtifactError
from shared.workspace import Workspace
from transfer.compress import _val_sets
from transfer.compression.catalogue import rpc_drop_points
from transfer.config import pick_names
from transfer.evaluation.robustness import RobustnessSettings, measure_variant
from transfer.export.publish import REFERENCE
from transfer.train import data_root, resolve_config


def run_robustness_bench(
    workdir: str | Path, variants: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
    settings: RobustnessSettings | None = None, progress: bool = True,
) -> dict:
    """Measure and record the robustness of ``variants`` (default: all) with the heads of ``tasks`` (default: all).

    Args:
        workdir: A workspace with a published reference trunk and heads.
        variants: Trunk variant names.
        tasks: Head names; each needs its validation split (see `polyhead compress`); default: every head
            that has one.
        settings: Corruptions, images per task, seed.
        progress: tqdm bars.

    Returns:
        ``{"reference", "tasks", "corruptions", "max_images", "seed",
        "variants": {name: {"clean_map", "mpc", "rpc", "rpc_drop_points", "per_corruption", "per_task",
        "images", "admitted"}}}``; ``rpc_drop_points``
        (:func:`~transfer.compression.catalogue.rpc_drop_points`) is against the reference when it was measured too,
        ``admitted`` the variant's catalogue flag.

    Raises:
        ConfigError: An unknown variant, task or corruption name (the message lists the choices).
        ArtifactError: A chosen head has no validation split.
    """
    settings = settings or RobustnessSettings()
    ws = Workspace.at(workdir)
    known = ws.variants()
    names = pick_names("variant", variants, [REFERENCE] * (REFERENCE in known) + [n for n in known if n != REFERENCE])
    chosen = pick_names("task", tasks, ws.tasks())
    cfg = resolve_config(ws, None)
    vals, skipped = _val_sets(ws, cfg, data_root(ws, cfg))
    chosen = [t for t in chosen if t in vals] if tasks is None else chosen  # by default: those that can be
    missing = {t: skipped[t] for t in chosen if t not in vals}
    if missing:
        raise ArtifactError("no validation split for " + "; ".join(f"{t}: {why}" for t, why in missing.items()))
    vals = {t: vals[t] for t in chosen}
    measured = {name: measure_variant(ws, name, vals, settings, progress) for name in names}
    ref_rpc = measured[REFERENCE]["rpc"] if REFERENCE in measured else None
    rows = {name: {"clean_map": e["clean_map"], "mpc": e["mpc"], "rpc": e["rpc"],
                   "rpc_drop_points": rpc_drop_points(e["rpc"], ref_rpc), "per_corruption": e["per_corruption"],
                   "per_task": e["per_task"], "images": e["images"],
                   "admitted": read_json(ws.variant(name) / "variant.json").get("admitted")}
            for name, e in measured.items()}
    return {"reference": REFERENCE, "tasks": chosen, "corruptions": list(settings.corruptions),
            "max_images": settings.max_images, "seed": settings.seed, "variants": rows}
