"""Chosen sub-networks as catalogue variants: ``trunk/elastic-<id>/{model.onnx, variant.json}``.

Each is exported as a plain (physically smaller) ONNX trunk by
:func:`transfer.export.publish.publish_trunk` (parity checked), every head is evaluated on it with
onnxruntime over the whole validation split (:func:`transfer.export.publish.evaluate_head`), and
``variant.json`` records ``elastic``: the architecture, the space, the device and the search's
figures (predicted latency, the predictor's held-out error, the search's mAP). Then every catalogue
variant is timed side by side on the device and the catalogue is rebuilt with the existing
admission rule and tolerance (:func:`transfer.compression.catalogue.build_catalogue`), so
``add-task``, ``optimize`` and the repository builder use them unchanged. A variant whose
``variant.json`` records the same architecture and supernet is kept (resume).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from shared.artifacts import atomic_write_json, read_json
from shared.trunk import Trunk
from shared.workspace import Workspace
from transfer.compression.catalogue import build_catalogue
from transfer.compression.measure import measure_variants
from transfer.compression.prune import count_flops
from transfer.data.coco import CocoTask
from transfer.elastic.space import SubnetArch
from transfer.export.publish import REFERENCE, evaluate_head, publish_trunk

CATALOGUE = "catalogue.json"
PREFIX = "elastic-"


def variant_name(arch: SubnetArch) -> str:
    """``elastic-<first 8 hex digits of sha1(arch key)>``."""
    return PREFIX + hashlib.sha1(arch.key().encode()).hexdigest()[:8]


def publish_subnet(ws: Workspace, trunk: Trunk, arch: SubnetArch, input_size: int, check: torch.Tensor,
                   elastic: dict, vals: Mapping[str, CocoTask], log: Callable[[str], None]) -> str:
    """Export one recalibrated sub-network and evaluate every head on it; returns the variant name."""
    name, ref = variant_name(arch), read_json(ws.variant(REFERENCE) / "variant.json")
    path = ws.variant(name) / "variant.json"
    if path.exists():
        old = read_json(path).get("elastic") or {}
        if old.get("arch") == arch.to_dict() and old.get("supernet_sha256") == elastic["supernet_sha256"]:
            meta = read_json(path)
            missing = [t for t in vals if t not in meta.get("map", {})]
            for task in missing:
                evaluate_head(ws, task, name, vals[task], input_size)
            return name
    publish_trunk(ws, trunk, name, input_size, check, {
        "role": "variant", "precision": "fp32", "parent": REFERENCE, "parent_sha256": ref["sha256"],
        "flops": count_flops(trunk, input_size), "admitted": False,
        "compression": [{"step": "elastic", "arch": arch.to_dict(), "supernet_sha256": elastic["supernet_sha256"]}],
        "elastic": {**elastic, "arch": arch.to_dict(), "key": arch.key()}})
    for task, val in vals.items():
        result = evaluate_head(ws, task, name, val, input_size)
        log(f"{name}: {task} mAP {result['map']:.4f}")
    return name


def rebuild_catalogue(ws: Workspace, new: Sequence[str], device, tolerance: float | None = None,
                      repeats: int = 30, log: Callable[[str], None] | None = None) -> dict:
    """Time every catalogue variant plus ``new`` side by side on ``device`` and rebuild ``catalogue.json``.

    Keeps the existing catalogue's tolerance and tasks (default tolerance 1.0 point, tasks: every head
    evaluated on the reference) and records each variant's ``admitted`` / Pareto flags.
    """
    path = ws.trunk_dir / CATALOGUE
    old = read_json(path, "catalogue") if path.exists() else {}
    names = list(dict.fromkeys([*old.get("variants", [REFERENCE]), *new]))
    ref = read_json(ws.variant(REFERENCE) / "variant.json")
    tasks = list(old.get("tasks") or sorted(ref.get("map", {})))
    tolerance = float(old.get("tolerance_points", 1.0) if tolerance is None else tolerance)
    size = int(ref["input_size"])
    check = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)  # (1, 3, S, S)
    key, _, _ = measure_variants(ws, names, check, device, repeats, log)
    metas = {n: read_json(ws.variant(n) / "variant.json") for n in names}
    catalogue = build_catalogue(metas, REFERENCE, tolerance, key, tasks, old.get("robustness_tolerance_points"))
    catalogue["skipped_tasks"] = old.get("skipped_tasks", {})
    for name, row in catalogue["variants"].items():
        meta = metas[name]
        meta.update(admitted=row["admitted"], pareto=row["pareto"], pareto_by_device=row["pareto_by_device"],
                    max_map_drop=row["max_map_drop"])
        atomic_write_json(ws.variant(name) / "variant.json", meta)
    atomic_write_json(path, catalogue)
    return catalogue
