"""Generate the Triton model repository ``WORK/model_repository`` from the workspace's artifacts.

Layout::

    model_repository/
      versions.json              # {"trunk": {"1": "<variant>", ...}}  version -> variant
      build.json                 # RepositoryOptions, input size, channels, tasks, sources (sha256)
      trunk/config.pbtxt         # version_policy latest 1, or specific (set_live_trunk_version)
      trunk/<v>/model.onnx (+ model.py for the python backend)
      head_<task>/config.pbtxt, head_<task>/1/model.onnx (+ model.py)
      detect_<task>/config.pbtxt, detect_<task>/1/     # ensemble trunk -> head_<task>
      detect/config.pbtxt, detect/1/                   # ensemble trunk -> every head (fan-out)

With ``heads_layout="shared"`` (python backend) the ``head_<task>`` models are replaced by one
``heads/<v>/<task>.onnx ... + model.py`` model hosting every head; a hot-add writes version
``v + 1`` holding every head and the live version moves to it when ``heads`` is reloaded.
With ``heads_layout="in_trunk"`` (python backend) there are no head models at all: the head files
lie in ``trunk/heads/<g>/<task>.onnx`` and ``trunk`` serves their outputs too; a hot-add writes
generation ``g + 1`` holding every head and ``trunk`` is reloaded onto it.
Every ``detect_<task>`` config carries its task's metadata (``classes``, ``max_dets``, ...).

Every write is atomic: whole builds go to a sibling temp directory swapped in by rename; model
directories added to a live repository are renamed into place; configs are replaced by rename.
ONNX files are verified against the sha256 in their metadata before they are linked in.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import py_compile
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.triton import model_configs as mcfg
from serving.triton import per_request_variants as per_request
from serving.triton.model_names import FANOUT_MODEL, TRUNK_MODEL, head_model, task_model
from serving.triton.workspace_artifacts import (
    HeadArtifact,
    check_compatible,
    check_head,
    read_head,
    read_heads,
    read_trunks,
    verify_sha256,
)
from shared.artifacts import atomic_write_json, read_json
from shared.contract import FEATURE_STRIDES
from shared.errors import ArtifactError, ConfigError

#: Byte format of ``build.json`` / ``versions.json`` (sorted keys, no final newline), unchanged since first written.
_JSON_FORMAT = {"sort_keys": True, "trailing_newline": False}

BACKEND_MODEL_PY = Path(__file__).resolve().parent / "backend" / "model.py"


@dataclass(frozen=True)
class RepositorySummary:
    """What a repository build produced.

    Attributes:
        path: The repository directory.
        trunk_versions: Trunk version number -> variant name.
        tasks: Served task names, sorted.
        models: Every model name, in a valid load order (ensembles after their members).
        input_size: Square input side the models take.
        options: The options it was built with.
    """

    path: Path
    trunk_versions: dict[int, str]
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    input_size: int
    options: mcfg.RepositoryOptions


def build_repository(
    workdir: Path,
    out: Path | None = None,
    backend: str = "python",
    max_batch_size: int = 8,
    dynamic_batching: bool = False,
    preferred_batch_sizes: tuple[int, ...] = (),
    max_queue_delay_us: int = 100,
    trunk_instances: int = 1,
    head_instances: int = 1,
    trunk_threads: int = 0,
    head_threads: int = 1,
    tensorrt: bool = False,
    live_variant: str | None = None,
    heads_layout: str = "per_task",
    options: mcfg.RepositoryOptions | None = None,
) -> RepositorySummary:
    """Build the whole repository from ``WORK/trunk`` and ``WORK/heads`` and swap it into place.

    Trunk version numbers are stable across rebuilds: variants already in ``out/versions.json``
    keep their number, new admitted variants get the next numbers in name order. By default the
    highest version is live (``version_policy latest 1``).

    Args:
        workdir: The workspace directory.
        out: Repository directory (default ``WORK/model_repository``).
        backend: ``"python"`` or ``"onnxruntime"`` (see :class:`RepositoryOptions`).
        max_batch_size: Largest batch per request/execution.
        dynamic_batching: Enable the dynamic batcher on trunk and heads.
        preferred_batch_sizes: Dynamic batcher's preferred batch sizes.
        max_queue_delay_us: Dynamic batcher's queue delay.
        trunk_instances: Trunk instance count.
        head_instances: Instance count of each head.
        trunk_threads: onnxruntime intra-op threads per trunk instance (0: the layout's default).
        head_threads: onnxruntime intra-op threads per head instance.
        tensorrt: Add the TensorRT accelerator (onnxruntime backend only).
        live_variant: Pin this variant live (``version_policy specific``) instead of the latest.
        heads_layout: ``"per_task"`` or ``"shared"`` (see :class:`RepositoryOptions`).
        options: All the options at once (e.g. :func:`read_options` of the previous build), instead of the above.

    Returns:
        The :class:`RepositorySummary`.

    Raises:
        ArtifactError: Missing/corrupt artifacts or sha256 mismatch.
        ContractError: Variants or heads that disagree on input size or channels.
        ConfigError: Invalid options.
    """
    opts = options or mcfg.RepositoryOptions(
        backend=backend,
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        preferred_batch_sizes=tuple(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        trunk_instances=trunk_instances,
        head_instances=head_instances,
        trunk_threads=trunk_threads,
        head_threads=head_threads,
        tensorrt=tensorrt,
        heads_layout=heads_layout,
    )
    workdir = Path(workdir)
    out = Path(out) if out is not None else workdir / "model_repository"
    trunks, heads = read_trunks(workdir), read_heads(workdir)
    if not heads:
        raise ArtifactError(f"no head under {workdir / 'heads'}; train and export at least one task first")
    input_size, channels = check_compatible(trunks, heads)
    versions = _assign_versions(out, [t.name for t in trunks])
    live = None
    if live_variant is not None:
        by_name = {n: v for v, n in versions.items()}
        if live_variant not in by_name:
            raise ConfigError(f"live_variant {live_variant!r} is not an admitted variant: {sorted(by_name)}")
        live = by_name[live_variant]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        by_variant = {t.name: t for t in trunks}
        for version, variant in versions.items():
            trunk = by_variant[variant]
            verify_sha256(trunk.onnx, trunk.sha256, f"re-export trunk variant '{variant}' (polyhead export)")
            _place_leaf(trunk.onnx, tmp / TRUNK_MODEL / str(version), opts)
            if opts.variants == "per_request":
                per_request.place_backend(tmp / TRUNK_MODEL / str(version))
        shas = {v: by_variant[n].sha256 for v, n in versions.items()}  # checked by the backend at load
        precisions = {v: by_variant[n].meta.get("precision") or "fp32" for v, n in versions.items()}
        in_trunk = opts.heads_layout == "in_trunk"
        if in_trunk:
            _write_head_files(tmp / TRUNK_MODEL / mcfg.IN_TRUNK_HEADS_DIR / "1", heads, {})
        trunk_cfg = mcfg.trunk_config(input_size, channels, versions, opts, live, shas, heads if in_trunk else None,
                                      precisions=precisions)
        if opts.variants == "per_request":
            per_request.configure_trunk(trunk_cfg, trunks)
        mcfg.write_config(trunk_cfg, tmp / TRUNK_MODEL / "config.pbtxt")
        if opts.heads_layout == "shared":
            _write_shared_heads(tmp / mcfg.HEADS_MODEL, 1, heads, channels, opts, {})
        for head in heads:
            if opts.heads_layout == "per_task":
                _write_head(tmp, head, channels, opts)
            _write_task_ensemble(tmp, head, opts)
        _write_fanout(tmp, {h.task: h.max_dets for h in heads}, input_size, opts)
        atomic_write_json(
            tmp / "versions.json", {TRUNK_MODEL: {str(v): n for v, n in versions.items()}}, **_JSON_FORMAT
        )
        tasks = tuple(h.task for h in heads)
        sources = {"trunk": {t.name: t.sha256 for t in trunks}, "heads": {h.task: h.sha256 for h in heads}}
        _write_build(tmp, opts, input_size, channels, tasks, sources)
        _swap_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out, versions, tasks, input_size, opts)


def add_task_to_repository(repo: Path, workdir: Path, task: str) -> RepositorySummary:
    """Add (or replace) ``task``'s head and ``detect_<task>`` and regenerate ``detect``, atomically.

    Safe while the server runs in explicit model-control mode: nothing is loaded until the caller
    loads :func:`hot_add_models` in order, e.g. ``head_x``, ``detect_x``, ``detect`` (per-task
    layout) or ``heads``, ``detect_x``, ``detect`` (shared layout: a new ``heads`` version holding
    every head, the previous version's files copied, the new one verified) or ``trunk``,
    ``detect_x``, ``detect`` (in_trunk layout: a new generation of head files, same copying).

    Args:
        repo: An existing repository made by :func:`build_repository`.
        workdir: The workspace holding ``heads/<task>``.
        task: Task name.

    Returns:
        The updated :class:`RepositorySummary`.

    Raises:
        ArtifactError: Unknown repository, missing head or sha256 mismatch.
        ContractError: Head incompatible with the served trunk.
    """
    repo = Path(repo)
    build = _read_build(repo)
    opts = _options(build)
    input_size, channels = int(build["input_size"]), {k: int(v) for k, v in build["channels"].items()}
    head = read_head(workdir, task)
    check_head(head, input_size, channels)
    others: dict[str, HeadArtifact] = {}  # shared / in_trunk layout: the served heads kept beside the new one
    host = mcfg.heads_host(opts)
    if host is not None:
        others = {h.task: h for h in _served_heads(repo, opts) if h.task != task}
        heads_dir = heads_root(repo, opts)
        previous = live_heads_version(repo, opts)
        heads, served = [*others.values(), head], {t: h.onnx for t, h in others.items()}
        if host == mcfg.HEADS_MODEL:
            _write_shared_heads(heads_dir, previous + 1, heads, channels, opts, served)
        else:
            _write_head_files(heads_dir / str(previous + 1), heads, served)
            _set_trunk_heads(repo, heads, previous + 1)
        for old in heads_dir.iterdir():  # keep the previous version only (restored on a failed load)
            if old.is_dir() and old.name.isdigit() and int(old.name) < previous:
                shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}-add-", dir=repo.parent))
    try:
        if opts.heads_layout == "per_task":
            _write_head(tmp, head, channels, opts)
        _write_task_ensemble(tmp, head, opts)
        for model_dir in tmp.iterdir():  # head_<task> (per-task layout) and detect_<task>
            _swap_dir(model_dir, repo / model_dir.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if host is not None:
        heads = {t: h.max_dets for t, h in others.items()} | {task: head.max_dets}
    else:
        heads = {}
        for cfg_path in sorted(repo.glob(f"{head_model('*')}/config.pbtxt")):
            cfg = mcfg.read_config(cfg_path)
            heads[cfg.parameters["task"].string_value] = int(cfg.parameters["max_dets"].string_value)
    _write_fanout(repo, heads, input_size, opts)
    tasks = tuple(sorted(heads))
    sources = build.get("sources", {"trunk": {}, "heads": {}})
    _write_build(repo, opts, input_size, channels, tasks, sources | {"heads": sources["heads"] | {task: head.sha256}})
    versions = {int(v): n for v, n in json.loads((repo / "versions.json").read_text())[TRUNK_MODEL].items()}
    return _summary(repo, versions, tasks, input_size, opts)


def hot_add_models(opts: mcfg.RepositoryOptions, task: str) -> tuple[str, ...]:
    """The models to load, in order, after :func:`add_task_to_repository` wrote ``task``."""
    return (mcfg.heads_host(opts) or head_model(task), task_model(task), FANOUT_MODEL)


def read_options(repo: Path) -> mcfg.RepositoryOptions:
    """The :class:`RepositoryOptions` a repository was built with (from ``build.json``).

    Raises:
        ArtifactError: If ``repo`` is not a polyhead repository.
    """
    return _options(_read_build(Path(repo)))


def live_heads_version(repo: Path, opts: mcfg.RepositoryOptions) -> int:
    """Highest version (shared layout) or generation (in_trunk) of the head files: the live one; 0 if none."""
    root = heads_root(Path(repo), opts)
    return max((int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()), default=0)


def heads_root(repo: Path, opts: mcfg.RepositoryOptions) -> Path:
    """``heads/`` (shared layout: its versions) or ``trunk/heads/`` (in_trunk: generations of head files)."""
    if opts.heads_layout == "in_trunk":
        return repo / TRUNK_MODEL / mcfg.IN_TRUNK_HEADS_DIR
    return repo / mcfg.HEADS_MODEL


def _options(build: dict) -> mcfg.RepositoryOptions:
    return mcfg.RepositoryOptions(
        **{**build["options"], "preferred_batch_sizes": tuple(build["options"]["preferred_batch_sizes"])}
    )


def _served_heads(repo: Path, opts: mcfg.RepositoryOptions) -> list[HeadArtifact]:
    """The heads a shared- or in_trunk-layout repository serves.

    Files are the live version's (generation's); metadata comes from the ``detect_<task>`` configs.
    """
    cfg = mcfg.read_config(repo / mcfg.heads_host(opts) / "config.pbtxt")
    version_dir = heads_root(repo, opts) / str(live_heads_version(repo, opts))
    heads = []
    for task, sha in json.loads(cfg.parameters["heads"].string_value).items():
        p = mcfg.read_config(repo / task_model(task) / "config.pbtxt").parameters
        heads.append(HeadArtifact(
            task=task, onnx=version_dir / f"{task}.onnx", classes=tuple(json.loads(p["classes"].string_value)),
            category_ids=tuple(json.loads(p["category_ids"].string_value)),
            input_size=int(p["input_size"].string_value), max_dets=int(p["max_dets"].string_value),
            sha256=sha, meta={},
        ))
    return heads


def set_live_trunk_version(repo: Path, version: int | None) -> None:
    """Pin trunk ``version`` live (``version_policy specific``), or back to ``latest 1`` with ``None``.

    Rewrites ``trunk/config.pbtxt`` atomically; apply it with ``server.load("trunk")``.

    Raises:
        ConfigError: If ``version`` is not a built trunk version.
    """
    repo = Path(repo)
    path = repo / TRUNK_MODEL / "config.pbtxt"
    cfg = mcfg.read_config(path)
    versions = json.loads(cfg.parameters["versions"].string_value)
    cfg.ClearField("version_policy")
    if version is None:
        cfg.version_policy.latest.num_versions = 1
    else:
        if str(version) not in versions or not (repo / TRUNK_MODEL / str(version)).is_dir():
            raise ConfigError(f"trunk version {version} does not exist; built versions: {versions}")
        cfg.version_policy.specific.versions.append(int(version))
    mcfg.write_config(cfg, path)


def read_trunk_versions(repo: Path) -> dict[int, str]:
    """Return the trunk's version -> variant mapping from ``versions.json``."""
    path = Path(repo) / "versions.json"
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; build the repository first (build_repository)")
    return {int(v): n for v, n in json.loads(path.read_text())[TRUNK_MODEL].items()}


def _assign_versions(out: Path, variants: list[str]) -> dict[int, str]:
    """Keep existing version numbers of still-admitted variants; new ones get the next numbers."""
    old: dict[int, str] = {}
    if (out / "versions.json").is_file():
        old = read_trunk_versions(out)
    keep = {v: n for v, n in old.items() if n in variants}
    nxt = max(old, default=0) + 1
    for name in sorted(set(variants) - set(keep.values())):
        keep[nxt] = name
        nxt += 1
    return dict(sorted(keep.items()))


def _place_leaf(onnx_path: Path, version_dir: Path, opts: mcfg.RepositoryOptions) -> None:
    """Copy the ONNX file into ``version_dir``; add a precompiled model.py for the python backend.

    A copy, not a hard link: a later hard link to the same workspace file changes its ctime and
    Triton would reload the model on the next load request that touches it.
    """
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx_path, version_dir / "model.onnx")
    if opts.backend == "python":
        shutil.copy2(BACKEND_MODEL_PY, version_dir / "model.py")
        precompile_backend(version_dir)


def precompile_backend(model_dir: Path) -> None:
    """Write ``__pycache__`` for every python-backend ``model.py`` under ``model_dir`` now.

    The python backend imports ``<model>/<version>/model.py``, which writes ``__pycache__`` into the
    version directory after the load; Triton then sees the model as modified and reloads it on the
    next load request that touches it (e.g. loading an ensemble that uses it).
    """
    for source in Path(model_dir).rglob("model.py"):
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)


def _write_head(
    root: Path, head: HeadArtifact, channels: dict[str, int], opts: mcfg.RepositoryOptions
) -> None:
    """Write ``head_<task>`` (per-task layout) under ``root``."""
    verify_sha256(head.onnx, head.sha256, f"re-export the head with `polyhead export --task {head.task}`")
    _place_leaf(head.onnx, root / head_model(head.task) / "1", opts)
    mcfg.write_config(mcfg.head_config(head, channels, opts), root / head_model(head.task) / "config.pbtxt")


def _write_shared_heads(
    model_dir: Path,
    version: int,
    heads: list[HeadArtifact],
    channels: dict[str, int],
    opts: mcfg.RepositoryOptions,
    served_files: dict[str, Path],
) -> None:
    """Write version ``version`` of the shared ``heads`` model (:func:`_write_head_files`) and its config."""
    _write_head_files(model_dir / str(version), heads, served_files, with_backend=True)
    mcfg.write_config(mcfg.heads_config(heads, channels, opts), model_dir / "config.pbtxt")


def _write_head_files(
    out: Path, heads: list[HeadArtifact], served_files: dict[str, Path], with_backend: bool = False
) -> None:
    """Write directory ``out`` holding ``<task>.onnx`` of every head (and model.py if ``with_backend``).

    The directory is written beside and renamed into place, so a config naming it never sees it
    half-written. ``served_files`` (task -> file served now) are copied as they are served; the
    other heads come from the workspace, verified against their sha256.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for head in heads:
            source = served_files.get(head.task, head.onnx)
            verify_sha256(source, head.sha256, f"re-export the head with `polyhead export --task {head.task}`")
            shutil.copy2(source, tmp / f"{head.task}.onnx")
        if with_backend:
            shutil.copy2(BACKEND_MODEL_PY, tmp / "model.py")
            precompile_backend(tmp)
        _swap_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _set_trunk_heads(repo: Path, heads: list[HeadArtifact], generation: int) -> None:
    """Rewrite ``trunk/config.pbtxt`` (in_trunk layout) to serve ``heads`` from ``generation``; other fields kept."""
    path = repo / TRUNK_MODEL / "config.pbtxt"
    cfg = mcfg.read_config(path)
    for i in reversed(range(len(cfg.output))):  # keep the features, drop the old heads' outputs
        if cfg.output[i].name not in FEATURE_STRIDES:
            del cfg.output[i]
    mcfg.add_heads(cfg, heads)
    cfg.parameters["heads_dir"].string_value = f"{mcfg.IN_TRUNK_HEADS_DIR}/{generation}"
    mcfg.write_config(cfg, path)


def _write_task_ensemble(root: Path, head: HeadArtifact, opts: mcfg.RepositoryOptions) -> None:
    """Write ``detect_<task>`` (trunk -> this task's head) with the task's metadata parameters."""
    ens = mcfg.ensemble_config(
        task_model(head.task),
        head.input_size,
        {head.task: head.max_dets},
        opts.max_batch_size,
        prefix_outputs=False,
        host=mcfg.heads_host(opts),
    )
    mcfg.set_task_parameters(ens, head)
    (root / task_model(head.task) / "1").mkdir(parents=True, exist_ok=True)
    mcfg.write_config(ens, root / task_model(head.task) / "config.pbtxt")


def _write_fanout(root: Path, heads: dict[str, int], input_size: int, opts: mcfg.RepositoryOptions) -> None:
    """Write the fan-out ensemble ``detect`` (config replaced atomically)."""
    (root / FANOUT_MODEL / "1").mkdir(parents=True, exist_ok=True)
    cfg = mcfg.ensemble_config(
        FANOUT_MODEL, input_size, heads, opts.max_batch_size, prefix_outputs=True, host=mcfg.heads_host(opts)
    )
    mcfg.write_config(cfg, root / FANOUT_MODEL / "config.pbtxt")


def _write_build(root: Path, opts: mcfg.RepositoryOptions, size: int, channels: dict[str, int],
                 tasks: tuple[str, ...], sources: dict[str, dict[str, str]]) -> None:
    """``build.json``: options, contract, tasks, and the workspace files' sha256 (``sources``, for staleness)."""
    build = {"options": dataclasses.asdict(opts), "input_size": size, "channels": channels, "tasks": list(tasks)}
    atomic_write_json(root / "build.json", build | {"sources": sources}, **_JSON_FORMAT)


def _read_build(repo: Path) -> dict:
    path = repo / "build.json"
    if not path.is_file():
        raise ArtifactError(
            f"{repo} is not a polyhead repository ({path.name} missing); build it first with build_repository"
        )
    return read_json(path, "repository build", fix="rebuild it with build_repository", expect=dict)


def _swap_dir(new: Path, dst: Path) -> None:
    """Move directory ``new`` to ``dst``, replacing an existing ``dst`` by two renames."""
    if not dst.exists():
        os.rename(new, dst)
        return
    # the old copy goes beside ``new`` (outside a live repository, same filesystem)
    trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}-old-", dir=new.parent))
    os.rename(dst, trash / dst.name)
    os.rename(new, dst)
    shutil.rmtree(trash, ignore_errors=True)


def _summary(
    path: Path, versions: dict[int, str], tasks: tuple[str, ...], size: int, opts: mcfg.RepositoryOptions
) -> RepositorySummary:
    tasks = tuple(sorted(tasks))
    leaves = {"shared": (mcfg.HEADS_MODEL,), "in_trunk": ()}.get(opts.heads_layout, tuple(map(head_model, tasks)))
    models = (TRUNK_MODEL, *leaves, *map(task_model, tasks), FANOUT_MODEL)
    return RepositorySummary(
        path=path, trunk_versions=versions, tasks=tasks, models=models, input_size=size, options=opts
    )
