"""`polyhead search`: train the supernet once, then search its sub-networks for the device's Pareto front.

Steps (each resumable; state under ``WORK/elastic/``, never under ``WORK/trunk/`` where every
directory is a variant):

1. the supernet: the workspace's trained trunk, hidden channels sorted by importance, sandwich-
   trained with in-place distillation (:mod:`transfer.elastic.sandwich`) on every head's training
   images (:mod:`transfer.elastic.train_images`) ->
   ``checkpoints/supernet.pt`` (kept while it records the same reference and settings);
2. the device's latency table and predictor (``elastic/latency-<device key>.json``);
3. the search (``elastic/search-<device key>.json``), every candidate recalibrated and evaluated
   with every head on the first ``max_images`` validation images of each task;
4. the chosen front points (one per ``--budget-ms``, then up to ``keep``) as catalogue variants,
   admitted by the catalogue's tolerance rule (:mod:`transfer.elastic.catalogue_variants`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.artifacts import read_json, sha256_file
from shared.errors import ArtifactError, ConfigError
from shared.workspace import Workspace
from transfer.compression.measure import admission_rule, device_key_of
from transfer.compression.prune import load_images, trunk_features
from transfer.elastic.catalogue_variants import publish_subnet, rebuild_catalogue
from transfer.elastic.latency_model import build_latency_table
from transfer.elastic.sandwich import SandwichSettings, load_supernet, save_supernet, train_supernet
from transfer.elastic.search import SearchSettings, choose, run_search, settings_dict
from transfer.elastic.space import ElasticSpace, SubnetArch
from transfer.elastic.subnet_eval import SubnetEvaluator
from transfer.elastic.supernet import ElasticTrunk, sort_channels
from transfer.elastic.train_images import supernet_train_images
from transfer.export.onnx_graphs import session
from transfer.export.publish import REFERENCE
from transfer.train import data_root, resolve_config
from transfer.training.devices import resolve_device
from transfer.training.multitask_model import load_checkpoint

Log = Callable[[str], None]


@dataclass(frozen=True)
class ElasticSettings:
    """What `polyhead search` does.

    Attributes:
        sandwich: Supernet training.
        search: Population, generations, seed.
        width_choices: Hidden-width fractions per block.
        max_drop: Most trailing blocks dropped in a stage of more than 3 blocks (1 in shorter ones).
        train_images: Training images for the supernet (every head's, shared out by head, then unlabelled
            ones: :mod:`transfer.elastic.train_images`).
        calibration_images: Images for BatchNorm recalibration of every sub-network.
        max_images: Validation images per task in the search's mAP.
        latency_samples: Sub-networks timed for the latency predictor.
        latency_repeats: Timed runs per sample and batch size.
        keep: Front points published as variants (besides one per budget).
        archs: Extra architectures (``largest``, ``smallest`` or JSON) evaluated and published.
    """

    sandwich: SandwichSettings = field(default_factory=SandwichSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    width_choices: tuple[float, ...] = (0.75, 1.0)
    max_drop: int = 1
    train_images: int = 400
    calibration_images: int = 400
    max_images: int = 50
    latency_samples: int = 24
    latency_repeats: int = 20
    keep: int = 8
    archs: tuple[str, ...] = ()


@dataclass
class SearchReport:
    """Outcome of :func:`run_elastic_search`.

    Attributes:
        device: The ``latency_ms`` key searched for.
        front: Front keys, fastest first, with their figures (``state["evaluated"]``).
        state: The search state (``evaluated``, ``front``, ``mode``).
        latency: The latency table (``holdout_mape_pct`` per batch size).
        published: Variant names written.
        catalogue: The rebuilt catalogue.
        seconds: Wall time.
    """

    device: str
    state: dict
    latency: dict
    published: dict[str, str]
    catalogue: dict
    seconds: float


def _relative(path: Path, root: Path) -> str:
    """``path`` under ``root`` as a portable string (the record of which images the supernet saw)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _supernet(ws: Workspace, cfg, images: torch.Tensor, drawn: str, settings: ElasticSettings, progress: bool,
              log: Log) -> tuple[ElasticTrunk, str]:
    """Load the current supernet checkpoint or train one; returns it and its file's sha256."""
    ckpt_path = ws.require(ws.checkpoints / f"{cfg.trunk}.pt", "run `polyhead train` first")
    ref_sha = read_json(ws.variant(REFERENCE) / "variant.json")["sha256"]
    record = {"reference_sha256": ref_sha, "sandwich": settings.sandwich.to_dict(),
              "width_choices": list(settings.width_choices), "max_drop": settings.max_drop, "images": len(images),
              "images_sha256": drawn}
    path = ws.checkpoints / "supernet.pt"
    if path.exists():
        supernet, state = load_supernet(path)
        if state.get("record") == record:
            return supernet, sha256_file(path)
    model = load_checkpoint(ckpt_path)[0].eval()
    space = ElasticSpace(model.trunk.cfg, settings.width_choices, settings.max_drop)
    supernet = ElasticTrunk(sort_channels(model.trunk), space)
    target = trunk_features(model.trunk, images)
    t0 = time.perf_counter()
    losses = train_supernet(supernet, images, target, list(model.heads.values()), settings.sandwich, progress)
    log(f"supernet: {space.size():.3g} sub-networks, {len(losses)} sandwich steps in {time.perf_counter() - t0:.0f} s"
        + (f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""))
    save_supernet(path, supernet, {"record": record, "losses": losses})
    return supernet, sha256_file(path)


def run_elastic_search(workdir: str | Path, device: str = "auto", budgets_ms: Sequence[float] = (),
                       settings: ElasticSettings | None = None, progress: bool = True,
                       log: Log | None = None) -> SearchReport:
    """Supernet, latency predictor, search and catalogue variants for ``device`` (see the module docstring).

    Args:
        workdir: Workspace with a trained trunk and heads (`polyhead train`).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``: where latency is measured (training runs on the CPU).
        budgets_ms: Batch-1 latency budgets; for each, the most accurate front point within it is published.
        settings: What to do (defaults: :class:`ElasticSettings`).
        progress: Progress bars.
        log: Called with one line per finished step.

    Raises:
        ConfigError: A bad device or architecture, or a budget under the fastest sub-network's latency.
        ArtifactError: A workspace without a trained trunk or validation data.
    """
    t0, settings, log = time.perf_counter(), settings or ElasticSettings(), log or (lambda _m: None)
    torch_device = resolve_device(device)
    ws = Workspace.at(workdir)
    ref = read_json(ws.require(ws.variant(REFERENCE) / "variant.json", "run `polyhead train` first"))
    cfg, size = resolve_config(ws, None), int(ref["input_size"])
    from transfer.compress import _val_sets  # the validation split of every head, as compress reads it

    vals, _ = _val_sets(ws, cfg, data_root(ws, cfg))
    if not vals:
        raise ArtifactError(f"no head in {ws.heads_dir} has validation data; run `polyhead train`")
    root = data_root(ws, cfg)
    files = supernet_train_images(ws, cfg, root, settings.train_images)
    images = load_images(files, size)
    drawn = hashlib.sha256("\n".join(_relative(f, root) for f in files).encode()).hexdigest()
    supernet, supernet_sha = _supernet(ws, cfg, images, drawn, settings, progress, log)
    space = supernet.space
    extra = [space.parse(a) for a in settings.archs]  # unknown architectures fail before the slow part
    key = device_key_of(torch_device)
    folder = ws.root / "elastic"
    predictor, table = build_latency_table(supernet, size, torch_device, key, folder / f"latency-{key}.json",
                                           settings.latency_samples, settings.latency_repeats, progress=progress)
    log(f"latency predictor on {key}: held-out MAPE b1 {table['holdout_mape_pct']['b1']:.1f} %, "
        f"b8 {table['holdout_mape_pct']['b8']:.1f} % ({len(table['samples'])} sub-networks timed)")
    smallest = next(s["b1"] for s in table["samples"] if s["key"] == space.smallest().key())
    for budget in budgets_ms:  # fail before the search: nothing can be faster than the smallest sub-network
        if budget < smallest:
            raise ConfigError(f"no sub-network meets a {budget:g} ms budget on {key}; the fastest (the smallest "
                              f"sub-network) takes {smallest:.2f} ms measured: raise --budget-ms to at least that")
    calib = images[: settings.calibration_images]
    heads = {t: session(ws.head(t) / "model.onnx") for t in vals}
    evaluator = SubnetEvaluator(supernet, calib, vals, heads, size, settings.max_images)

    def objectives(arch: SubnetArch) -> dict:
        pred = predictor.predict(arch)
        return {"latency_ms": pred["b1"], "latency_b8_ms": pred["b8"], "map": evaluator.evaluate(arch)}

    signature = {"supernet_sha256": supernet_sha, "device": key, "max_images": settings.max_images,
                 "calibration_images": len(calib), "search": settings_dict(settings.search),
                 "latency_coef": table["coef"]}
    state = run_search(space, objectives, settings.search, folder / f"search-{key}.json", signature, progress)
    done = state["evaluated"]
    for arch in extra:
        if arch.key() not in done:
            done[arch.key()] = {"arch": arch.to_dict(), **objectives(arch)}
            done[arch.key()]["mean_map"] = sum(done[arch.key()]["map"].values()) / len(vals)
    largest = done.get(space.largest().key())
    tolerance = admission_rule(ws)[0]
    keys = choose(state, settings.keep, tuple(budgets_ms), tolerance, largest and largest["mean_map"])
    keys += [a.key() for a in extra if a.key() not in keys]
    published = {}
    first = next(iter(vals.values()))
    check = load_images([first.images_dir / im.file_name for im in list(first.images.values())[:4]], size)
    for k in keys:
        arch = SubnetArch.from_dict(done[k]["arch"])
        figures = {"device": key, "predicted_latency_ms": {"b1": done[k]["latency_ms"], "b8": done[k]["latency_b8_ms"]},
                   "predictor_holdout_mape_pct": table["holdout_mape_pct"], "search_map": done[k]["map"],
                   "search_max_images": settings.max_images, "supernet_sha256": supernet_sha,
                   "space": space.to_dict()}
        published[k] = publish_subnet(ws, evaluator.subnet(arch), arch, size, check, figures, vals, log)
    catalogue = rebuild_catalogue(ws, list(published.values()), torch_device, log=log)
    return SearchReport(key, state, table, published, catalogue, time.perf_counter() - t0)
