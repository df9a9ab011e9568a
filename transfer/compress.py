"""`polyhead compress`: build the trunk's compression variants, evaluate every head on them, catalogue them.

Variants (each ``trunk/<name>/model.onnx`` + ``variant.json``, written atomically):

- ``pruned-r1 .. pruned-rN``: cyclic pruning of the hidden channels, each round fine-tuned by
  feature distillation towards the reference trunk (:mod:`transfer.compression.prune`);
- ``int8``, ``pruned-rN-int8``: INT8 static QDQ of the reference / last pruned trunk;
- ``fp16``: FP16 of the reference trunk (:mod:`transfer.compression.quantize`).

Every existing head is evaluated on every variant (COCO mAP via onnxruntime). A variant is
*admitted* only if no head loses more than ``tolerance`` mAP points against the reference (the
same on every device); the admitted latency/accuracy Pareto set is marked per device
(``pareto_by_device``; ``pareto``: the device this run measured on). Re-running skips variants
whose ``variant.json`` records the current parent's sha256 and the same settings. The admission and Pareto rules live
in :mod:`transfer.compression.catalogue` so they can be tested on constructed numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.artifacts import atomic_directory, atomic_write_bytes, atomic_write_json, read_json, sha256_file
from shared.errors import ArtifactError, ConfigError
from shared.trunk import Trunk, TrunkConfig
from shared.workspace import Workspace
from transfer.compression.catalogue import DEFAULT_TOLERANCE_POINTS, build_catalogue
from transfer.compression.measure import measure_variants
from transfer.compression.prune import (
    PruneSettings,
    count_flops,
    distill_finetune,
    feature_error,
    hidden_widths,
    load_images,
    load_trunk,
    prune_trunk,
    save_trunk,
    trunk_features,
)
from transfer.compression.quantize import QuantSettings, convert_fp16, feature_parity, parity_problem, quantize_int8
from transfer.data.coco import CocoTask, load_coco
from transfer.evaluation.robustness import RobustnessSettings, is_current, measure_variant
from transfer.export.latency import flushed_latency
from transfer.export.onnx_graphs import session
from transfer.export.publish import REFERENCE, device_name, evaluate_head, publish_trunk
from transfer.train import data_root, resolve_config
from transfer.training.devices import DevicePlan, plan_device
from transfer.training.multitask_model import load_checkpoint

CATALOGUE = "catalogue.json"


@dataclass(frozen=True)
class CompressSettings:
    """What `polyhead compress` builds.

    Attributes:
        rounds: Prune -> fine-tune rounds (variants ``pruned-r1`` .. ``pruned-r<rounds>``).
        prune: Settings of every round.
        quant: INT8/FP16 settings and parity tolerances.
        int8: Build ``int8`` and ``pruned-r<rounds>-int8``.
        fp16: Build ``fp16``.
        max_images: Cap on fine-tune images (task train images first, then unlabelled ones).
        latency_repeats: Timed runs per batch size when every variant is re-measured at the end.
        robustness: What ``robustness_tolerance`` measures (corruptions, images per task, seed).
    """

    rounds: int = 2
    prune: PruneSettings = field(default_factory=PruneSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    int8: bool = True
    fp16: bool = True
    max_images: int = 800
    latency_repeats: int = 30
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)


@dataclass
class CompressReport:
    """Outcome of :func:`run_compress`.

    Attributes:
        catalogue: The ``trunk/catalogue.json`` content (variants with metrics, admission, Pareto).
        path: Where it was written.
        built: Variants built by this run (others were up to date).
        seconds: Wall time.
    """

    catalogue: dict
    path: Path
    built: list[str]
    seconds: float


Log = Callable[[str], None]


def _fresh(ws: Workspace, name: str, parent: str, settings: dict) -> bool:
    """Whether ``name`` exists, was built from ``parent``'s current file and with ``settings``."""
    path = ws.variant(name) / "variant.json"
    if not path.exists() or not (ws.variant(name) / "model.onnx").exists():
        return False
    meta, parent_meta = read_json(path), read_json(ws.variant(parent) / "variant.json")
    return meta.get("parent_sha256") == parent_meta["sha256"] and meta.get("settings") == settings


def _task_images(cfg, root: Path) -> list[Path]:
    """Training images of every trunk task (deduplicated, sorted), then unlabelled images if any."""
    from transfer.training.loop import load_tasks

    files = set()
    for task in load_tasks(cfg, root, "train").values():
        files |= {task.images_dir / im.file_name for im in task.images.values()}
    unlabeled = root / cfg.data.images / "unlabeled"
    extra = sorted(unlabeled.rglob("*.jpg")) + sorted(unlabeled.rglob("*.png")) if unlabeled.is_dir() else []
    return sorted(files) + extra


def _val_sets(ws: Workspace, cfg, root: Path) -> tuple[dict[str, CocoTask], dict[str, str]]:
    """Validation set of every head: ``head.json``'s ``val_json``/``images`` if recorded, else the data dir."""
    found, skipped = {}, {}
    for task in ws.tasks():
        meta = read_json(ws.head(task) / "head.json")
        val_json = Path(meta.get("val_json") or root / task / "val.json")
        images = Path(meta.get("images") or root / cfg.data.images)
        if not val_json.exists():
            skipped[task] = f"no validation file ({val_json}); record val_json/images in head.json"
            continue
        found[task] = load_coco(val_json, images, name=task)
    return found, skipped


def _publish_onnx(
    ws: Workspace, name: str, data: bytes, parent: str, check: np.ndarray, extra: dict, repeats: int
) -> None:
    """Write a quantized variant atomically, metadata inherited from its float parent."""
    parent_meta = read_json(ws.variant(parent) / "variant.json")
    with atomic_directory(ws.variant(name), replace=True) as tmp:
        atomic_write_bytes(tmp / "model.onnx", data)
        latency = flushed_latency({name: tmp / "model.onnx"}, check[:1], repeats, rounds=1)[name]
        keep = ("input_size", "contract", "trunk_config", "params", "flops")
        meta = {"name": name, **{k: parent_meta[k] for k in keep if k in parent_meta},
                "size_bytes": len(data), "sha256": sha256_file(tmp / "model.onnx"),
                "latency_ms": {device_name(): latency}, "map": {}, "admitted": False, **extra}
        atomic_write_json(tmp / "variant.json", meta)


def _build_pruned(ws, reference: Trunk, images: torch.Tensor, holdout: torch.Tensor, settings: CompressSettings,
                  input_size: int, progress: bool, log: Log, heads: tuple = (),
                  plan: DevicePlan | None = None) -> tuple[list[str], list[str]]:
    """Prune -> fine-tune rounds; returns (variant names, names built now).

    ``heads``: the checkpoint's frozen heads, for response distillation (``settings.prune.response_weight``).
    """
    names, built = [], []
    parent_name, parent = REFERENCE, reference
    target = holdout_target = None
    for r in range(1, settings.rounds + 1):
        name, ckpt = f"pruned-r{r}", ws.checkpoints / f"pruned-r{r}.pt"
        sett = {"round": r, **settings.prune.to_dict()}
        if _fresh(ws, name, parent_name, sett) and ckpt.exists():
            parent_name, parent = name, load_trunk(ckpt)[0]
            names.append(name)
            continue
        if target is None:
            target, holdout_target = trunk_features(reference, images, plan=plan), trunk_features(reference, holdout)
        t0 = time.perf_counter()
        trunk = prune_trunk(parent, settings.prune)
        before = feature_error(trunk, holdout_target, holdout)
        losses = distill_finetune(trunk, images, target, settings.prune, progress, heads, plan)
        after = feature_error(trunk, holdout_target, holdout)
        log(f"{name}: hidden {sum(hidden_widths(parent))} -> {sum(hidden_widths(trunk))} channels, "
            f"feature error {before:.3f} -> {after:.3f} in {time.perf_counter() - t0:.0f} s")
        save_trunk(ckpt, trunk, {"parent": parent_name})
        parent_meta = read_json(ws.variant(parent_name) / "variant.json")
        steps = list(parent_meta.get("compression", [])) + [
            {"step": "prune", "method": "torch-pruning BNScalePruner", "ratio": settings.prune.ratio,
             "hidden": list(hidden_widths(trunk))},
            {"step": "distill", "target": REFERENCE, "steps": settings.prune.steps, "images": len(images),
             "final_loss": losses[-1] if losses else None, "holdout_feature_error": after},
        ]
        publish_trunk(ws, trunk, name, input_size, holdout[:4], {
            "role": "variant", "precision": "fp32", "parent": parent_name, "parent_sha256": parent_meta["sha256"],
            "settings": sett, "compression": steps, "flops": count_flops(trunk, input_size), "admitted": False,
            "checkpoint": str(ckpt.relative_to(ws.root))})
        built.append(name)
        names.append(name)
        parent_name, parent = name, trunk
    return names, built


def _build_quantized(ws, jobs: list[tuple[str, str, str]], calib: np.ndarray, check: np.ndarray,
                     settings: CompressSettings, log: Log) -> list[str]:
    """``(name, parent, precision)`` jobs; returns the names built now."""
    built = []
    for name, parent, precision in jobs:
        sett = settings.quant.to_dict()
        if _fresh(ws, name, parent, sett):
            continue
        parent_meta = read_json(ws.variant(parent) / "variant.json")
        float_bytes = (ws.variant(parent) / "model.onnx").read_bytes()
        if precision == "int8":
            data, info = quantize_int8(float_bytes, calib, settings.quant)
        else:
            data, info = convert_fp16(float_bytes)
        errors = feature_parity(session(float_bytes, threads=2), session(data, threads=2), check)
        problem = parity_problem(errors, precision, settings.quant)  # recorded; the catalogue rejects it
        log(f"{name}: {precision} from {parent}, rel RMSE {errors['rel_rmse']:.3f}, rel max {errors['rel_max']:.3f}"
            + (f" - {problem}" if problem else ""))
        steps = list(parent_meta.get("compression", [])) + [{"step": "quantize", "precision": precision, **info}]
        _publish_onnx(ws, name, data, parent, check, {
            "role": "variant", "precision": precision, "parent": parent, "parent_sha256": parent_meta["sha256"],
            "settings": sett, "compression": steps, "parity": errors, "parity_problem": problem},
            settings.latency_repeats)
        built.append(name)
    return built


def run_compress(
    workdir: str | Path, tolerance: float = DEFAULT_TOLERANCE_POINTS, progress: bool = True,
    settings: CompressSettings | None = None, log: Log | None = None, device: str = "auto",
    robustness_tolerance: float | None = None,
) -> CompressReport:
    """Build, evaluate and catalogue the trunk's compression variants (resumable, interrupt-safe).

    Args:
        workdir: Workspace holding a trained reference trunk (`polyhead train`).
        tolerance: Max mAP@[.5:.95] loss, in points (1.0 = 0.01 absolute), of any head for admission.
        progress: Show progress bars while fine-tuning.
        settings: What to build (defaults: 2 prune rounds, INT8, FP16).
        log: Called with one line per finished step (the CLI prints them).
        device: ``auto`` | ``cpu`` | ``cuda``: where the pruned trunks' distillation fine-tune runs
            (autocast on CUDA) and where every variant's latency is measured at the end, side by side
            (:func:`transfer.compression.measure.measure_variants`: onnxruntime on the CPU; on CUDA
            onnxruntime's CUDA provider or else the torch trunk in the variant's precision). The
            catalogue's ``device`` is that key; add other devices with `polyhead measure`.
        robustness_tolerance: Also admit only variants whose rPC under corruptions is at most this many
            points (100 x rPC) under the reference's; the reference and the variants the mAP rule admits are
            measured (:mod:`transfer.evaluation.robustness`, ``settings.robustness``; kept while current).
            ``None`` (default): robustness is not measured.

    Returns:
        A :class:`CompressReport`; ``trunk/catalogue.json`` holds the same catalogue.
    """
    t0, settings, log = time.perf_counter(), settings or CompressSettings(), log or (lambda _msg: None)
    plan = plan_device(device)  # a clear error (no CUDA) before anything is written
    ws = Workspace.at(workdir)
    ref_meta = read_json(ws.require(ws.variant(REFERENCE) / "variant.json", "run `polyhead train` first"))
    cfg = resolve_config(ws, None)
    root, input_size = data_root(ws, cfg), int(ref_meta["input_size"])
    ckpt = ws.require(ws.checkpoints / f"{cfg.trunk}.pt", "run `polyhead train` first")
    model = load_checkpoint(ckpt)[0].eval()
    reference, heads = model.trunk, tuple(h.requires_grad_(False) for h in model.heads.values())
    if reference.cfg != TrunkConfig.from_dict(ref_meta["trunk_config"]):
        raise ArtifactError(f"{ckpt} does not hold the published reference trunk; rerun `polyhead train`")
    if "flops" not in ref_meta:
        ref_meta["flops"] = count_flops(reference, input_size)
        atomic_write_json(ws.variant(REFERENCE) / "variant.json", ref_meta)
    vals, skipped = _val_sets(ws, cfg, root)
    holdout = torch.cat([load_images([t.images_dir / im.file_name for im in list(t.images.values())[:32]], input_size)
                         for t in list(vals.values())[:1]]) if vals else None
    images = load_images(_task_images(cfg, root)[: settings.max_images], input_size)
    holdout = images[-32:] if holdout is None else holdout
    pruned, built = _build_pruned(ws, reference, images, holdout, settings, input_size, progress, log, heads, plan)
    jobs = []
    if settings.int8:
        jobs.append(("int8", REFERENCE, "int8"))
        jobs += [(f"{pruned[-1]}-int8", pruned[-1], "int8")] if pruned else []
    if settings.fp16:
        jobs.append(("fp16", REFERENCE, "fp16"))
    built += _build_quantized(ws, jobs, images.numpy(), holdout[:8].numpy(), settings, log)
    names = [REFERENCE, *pruned, *(name for name, _, _ in jobs)]
    for name in names:
        done = read_json(ws.variant(name) / "variant.json")["map"]
        for task, val in vals.items():
            if task not in done:
                result = evaluate_head(ws, task, name, val, input_size)
                log(f"{name}: {task} mAP {result['map']:.4f}")
    # Every variant again, side by side on this run's device, so the catalogue compares like with like.
    key, _, _ = measure_variants(ws, names, holdout[:8].numpy(), plan.device, settings.latency_repeats)
    metas = {name: read_json(ws.variant(name) / "variant.json") for name in names}
    if robustness_tolerance is not None and vals:  # the reference and the mAP rule's candidates, each once
        first = build_catalogue(metas, REFERENCE, tolerance, key, list(vals))["variants"]
        for name in (n for n, row in first.items() if row["admitted"] or n == REFERENCE):
            if not is_current(metas[name], list(vals), settings.robustness):
                entry = measure_variant(ws, name, vals, settings.robustness, progress)
                log(f"{name}: mPC {entry['mpc']:.4f} of clean {entry['clean_map']:.4f}, rPC {entry['rpc'] or 0:.3f}")
                metas[name] = read_json(ws.variant(name) / "variant.json")
    catalogue = build_catalogue(metas, REFERENCE, tolerance, key, list(vals), robustness_tolerance)
    catalogue["skipped_tasks"] = skipped
    for name, row in catalogue["variants"].items():
        meta = metas[name]
        meta.update(admitted=row["admitted"], pareto=row["pareto"], pareto_by_device=row["pareto_by_device"],
                    max_map_drop=row["max_map_drop"])
        atomic_write_json(ws.variant(name) / "variant.json", meta)
    path = ws.trunk_dir / CATALOGUE
    atomic_write_json(path, catalogue)
    return CompressReport(catalogue, path, built, time.perf_counter() - t0)


def run_compress_bench(
    workdir: str | Path, repeats: int = 30, reports: dict[str, str | Path] | None = None, variant: str | None = None
) -> dict:
    """`polyhead bench compress`: best admitted variant vs the teacher (see :func:`compress_benchmark`).

    The teacher's size and latency come from its architecture (``cfg.teacher``, default ``teacher``)
    exported at the same input size; its mAP from ``checkpoints/<teacher>.pt`` when one was trained.
    ``reports`` maps result keys (``distillation``, ``add_task``) to JSON files written by
    ``bench/distill.py`` and ``bench/add_task.py``, included as they are. The best admitted variant and
    the reference are timed again, interleaved with the teacher, so the ratios come from one run.
    ``variant`` compares that catalogue variant instead of the best admitted one (``admitted`` in the
    result says whether it is).

    Raises:
        ConfigError: If ``variant`` is not in the catalogue.
    """
    included = {key: read_json(path) for key, path in (reports or {}).items()}  # fail before the slow part
    from shared.trunk import trunk_config
    from transfer.compression.catalogue import best_admitted, compress_benchmark, load_catalogue, teacher_footprint
    from transfer.evaluation.coco_map import coco_map
    from transfer.evaluation.predict import detect_split, torch_detector
    from transfer.train import post_config

    ws = Workspace.at(workdir)
    catalogue = load_catalogue(ws.trunk_dir)
    if variant is not None and variant not in catalogue["variants"]:  # fail before the slow part
        raise ConfigError(f"no variant '{variant}' in the catalogue (have {sorted(catalogue['variants'])}); "
                          "run `polyhead compress` or pick one of those")
    cfg = resolve_config(ws, None)
    input_size = int(read_json(ws.variant(REFERENCE) / "variant.json")["input_size"])
    vals, _ = _val_sets(ws, cfg, data_root(ws, cfg))
    if not vals:
        raise ArtifactError(f"no head in {ws.heads_dir} has validation data; run `polyhead train`")
    first = next(iter(vals.values()))
    check = load_images([first.images_dir / im.file_name for im in list(first.images.values())[:1]], input_size)
    teacher_name = cfg.teacher or "teacher"
    best = variant or best_admitted(catalogue)
    compare = {n: ws.variant(n) / "model.onnx" for n in dict.fromkeys((best, REFERENCE))}
    teacher = teacher_footprint(trunk_config(teacher_name), input_size, check.numpy(), repeats, compare)
    teacher["trunk"] = teacher_name
    for name, lat in teacher["side_by_side"].items():  # the variants' latency from this same run
        catalogue["variants"][name] |= {"latency_b1_ms": lat["b1"], "latency_b8_ms": lat["b8"]}
    teacher_maps = None
    ckpt = ws.checkpoints / f"{teacher_name}.pt"
    if ckpt.exists():
        model = load_checkpoint(ckpt)[0]
        teacher_maps = {t: coco_map(v, detect_split(v, input_size, torch_detector(model, t, post_config(cfg))))["map"]
                        for t, v in vals.items() if t in model.heads}
    teacher["map"] = teacher_maps
    result = compress_benchmark(catalogue, teacher, teacher_maps, best) | included
    return result | {"admitted": bool(catalogue["variants"][best]["admitted"]),
                     "chosen_by": "--variant" if variant else "best admitted"}
