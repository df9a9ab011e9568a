"""The per-request variants mode of a repository: the trunk holds every variant, a request picks one.

``polyhead export --variants per-request`` (``RepositoryOptions.variants="per_request"``, in_trunk
layout, recorded in ``build.json`` so rebuilds and hot-adds keep it) builds the trunk as usual (one
version directory per variant, ``versions.json`` unchanged) and adds:

- ``variants_model.py`` and ``variant_choice.py`` beside ``model.py`` in every version directory
  (:func:`place_backend`), and ``default_model_filename: "variants_model.py"`` in the config: the
  loaded version's backend opens every version's ``model.onnx`` and serves all of them, the heads
  shared (:mod:`serving.triton.backend.variants_model`);
- the config parameter ``variant_table`` (:func:`variant_table`): per variant its accuracy (mean
  mAP over the tasks every variant was evaluated on) and ``latency_ms`` at batch 1 and 8 on the one
  device key all of them have (:func:`transfer.export.device_keys.comparison_key`);
- the config parameter ``shared_cpu_arena: "1"``: every onnxruntime session of the trunk's process
  (variants and heads) allocates from one CPU arena, so holding six variants costs their weights,
  not six peak-sized arenas.

A request's variant: the request parameter ``variant`` (Triton's ensembles forward request
parameters to their composing models, so ``detect`` and ``detect_<task>`` take it as ``trunk``
does), else the default in ``<repository>/live_variant.json`` (:func:`write_live_variant`; the
backend re-reads it when it changes: no reload, no model-control call), else the variant of the
trunk version Triton loaded. ``auto`` lets the backend choose per execute
(:mod:`serving.triton.backend.variant_choice`).
"""

from __future__ import annotations

import importlib.util
import json
import py_compile
import shutil
from collections.abc import Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from serving.triton.backend.variant_choice import AUTO, DEFAULT_HEADROOM, LIVE_VARIANT_FILE
from serving.triton.model_names import TRUNK_MODEL
from serving.triton.workspace_artifacts import TrunkArtifact
from shared.artifacts import atomic_write_json, read_json
from shared.errors import ArtifactError, ConfigError
from transfer.export.device_keys import comparison_key

__all__ = ["AUTO", "LIVE_VARIANT_FILE", "configure_trunk", "held_variants", "place_backend", "read_live_variant",
           "variant_table", "write_live_variant"]

BACKEND_DIR = Path(__file__).resolve().parent / "backend"
#: The python files of the mode, copied beside ``model.py`` (the first is the model file Triton loads).
BACKEND_FILES = ("variants_model.py", "variant_choice.py")


def place_backend(version_dir: Path) -> None:
    """Copy :data:`BACKEND_FILES` into ``version_dir`` and write their ``__pycache__`` now.

    Precompiled for the same reason as ``model.py`` (``repository.precompile_backend``): a cache
    written after the load would make Triton see the model as modified.
    """
    for name in BACKEND_FILES:
        target = Path(version_dir) / name
        shutil.copy2(BACKEND_DIR / name, target)
        py_compile.compile(str(target), cfile=importlib.util.cache_from_source(str(target)), doraise=True)


def variant_table(trunks: Sequence[TrunkArtifact]) -> list[dict]:
    """``[{"name", "accuracy", "b1_ms", "b8_ms"}]`` of ``trunks``, most accurate first.

    Accuracy: mean ``map`` over the tasks every variant has; latency: ``latency_ms`` on one device
    key common to all (``None`` for every variant when there is none).
    """
    metas = {t.name: t.meta for t in trunks}
    maps = {n: m.get("map") if isinstance(m.get("map"), dict) else {} for n, m in metas.items()}
    common = set.intersection(*(set(v) for v in maps.values())) if maps else set()
    tables = [m.get("latency_ms") if isinstance(m.get("latency_ms"), dict) else {} for m in metas.values()]
    key = comparison_key(next(iter(tables[0]), ""), tables)[0] if tables else None
    rows = []
    for name, meta in metas.items():
        values = [float(v["map"] if isinstance(v, dict) else v) for t, v in maps[name].items() if t in common]
        entry = (meta.get("latency_ms") or {}).get(key) if key else None
        entry = entry if isinstance(entry, dict) else {}
        rows.append({"name": name, "accuracy": sum(values) / len(values) if values else 0.0,
                     "b1_ms": _number(entry.get("b1")), "b8_ms": _number(entry.get("b8")), "device": key})
    return sorted(rows, key=lambda r: (-r["accuracy"], r["name"]))


def configure_trunk(cfg: mc.ModelConfig, trunks: Sequence[TrunkArtifact]) -> None:
    """Make ``trunk``'s config load :data:`BACKEND_FILES` and carry :func:`variant_table` of ``trunks``."""
    cfg.default_model_filename = BACKEND_FILES[0]
    cfg.parameters["variant_table"].string_value = json.dumps(variant_table(trunks))
    cfg.parameters["shared_cpu_arena"].string_value = "1"  # the variants take turns: one arena serves all


def held_variants(repo: Path) -> list[str]:
    """The variants a per-request repository's trunk holds, most accurate first.

    Raises:
        ConfigError: ``repo`` was not built with ``--variants per-request``.
    """
    from serving.triton.model_configs import read_config

    cfg = read_config(Path(repo) / TRUNK_MODEL / "config.pbtxt")
    if "variant_table" not in cfg.parameters:
        raise ConfigError(f"{repo} serves one trunk variant at a time; rebuild it with "
                          "`polyhead export --variants per-request` to choose the variant per request")
    return [row["name"] for row in json.loads(cfg.parameters["variant_table"].string_value)]


def write_live_variant(repo: Path, variant: str, objective_ms: float | None = None,
                       headroom: float = DEFAULT_HEADROOM) -> Path:
    """Set the default variant of requests without one: a held variant, or ``auto`` (with ``objective_ms``).

    Written atomically; the backend takes it on its next execute.

    Raises:
        ConfigError: ``variant`` is neither held nor ``auto``, ``auto`` without a positive
            objective, or ``headroom`` outside ``(0, 1]``.
    """
    held = held_variants(repo)
    if variant != AUTO and variant not in held:
        raise ConfigError(f"variant {variant!r} is not held by {repo}; held variants: {held} (or '{AUTO}')")
    if variant == AUTO and not (objective_ms is not None and objective_ms > 0):
        raise ConfigError(f"variant '{AUTO}' needs a latency objective in milliseconds > 0, got {objective_ms!r}")
    if not 0 < headroom <= 1:
        raise ConfigError(f"headroom must lie in (0, 1], got {headroom!r}")
    path = Path(repo) / LIVE_VARIANT_FILE
    atomic_write_json(path, {"variant": variant, "objective_ms": objective_ms, "headroom": headroom})
    return path


def read_live_variant(repo: Path) -> dict | None:
    """The default-variant file's content (``None``: no file, the loaded version's variant applies).

    Raises:
        ArtifactError: The file exists but is not a JSON object.
    """
    path = Path(repo) / LIVE_VARIANT_FILE
    if not path.is_file():
        return None
    data = read_json(path, "default variant", fix="write it again with write_live_variant", expect=dict)
    if "variant" not in data:
        raise ArtifactError(f"{path} names no 'variant'; write it again with write_live_variant")
    return data


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
