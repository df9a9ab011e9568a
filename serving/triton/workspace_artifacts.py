"""Read the workspace's exported trunk variants and heads (``model.onnx`` + json) for serving.

Layout (written by the export step)::

    WORK/trunk/<variant>/model.onnx + variant.json   # name, input_size, channels, sha256, admitted
    WORK/heads/<task>/model.onnx + head.json         # task, classes, category_ids, input_size,
                                                      # max_dets, sha256
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from shared.artifacts import sha256_file, verify_sha256  # noqa: F401 (re-exported)
from shared.errors import ArtifactError, ContractError

#: Stride of each contract feature (input pixels per feature cell).
FEATURE_STRIDES = {"p3": 8, "p4": 16, "p5": 32}
_TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class TrunkArtifact:
    """One admitted trunk variant on disk.

    Attributes:
        name: Variant name (directory name).
        onnx: Path of ``model.onnx``.
        input_size: Square input side in pixels.
        channels: Channels per feature, e.g. ``{"p3": 64, "p4": 64, "p5": 64}``.
        sha256: Expected sha256 of ``model.onnx``.
        meta: The whole ``variant.json``.
    """

    name: str
    onnx: Path
    input_size: int
    channels: dict[str, int]
    sha256: str
    meta: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class HeadArtifact:
    """One task head on disk.

    Attributes:
        task: Task name (lowercase letters, digits, underscores).
        onnx: Path of ``model.onnx``.
        classes: Class names; ``classes[i]`` is the name of class id ``i``.
        category_ids: COCO category id per class.
        input_size: Input side the head was trained for.
        max_dets: ``K``, the fixed number of output slots.
        sha256: Expected sha256 of ``model.onnx``.
        meta: The whole ``head.json``.
    """

    task: str
    onnx: Path
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    input_size: int
    max_dets: int
    sha256: str
    meta: dict = field(repr=False, compare=False)


def _read_json(path: Path, what: str) -> dict:
    """Load a metadata json or raise :class:`ArtifactError` naming the file."""
    if not path.is_file():
        raise ArtifactError(f"{what} metadata {path} is missing; export it first (polyhead export)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); re-export it") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _need(meta: dict, key: str, path: Path) -> object:
    if key not in meta:
        raise ArtifactError(f"{path} lacks the key '{key}'; re-export it")
    return meta[key]


def read_trunks(workdir: Path) -> list[TrunkArtifact]:
    """Return the admitted trunk variants under ``WORK/trunk``, sorted by name.

    Raises:
        ArtifactError: If none is admitted or metadata is malformed.
    """
    out = []
    for vdir in sorted(p for p in (Path(workdir) / "trunk").glob("*") if p.is_dir() and not p.name.startswith(".")):
        path = vdir / "variant.json"
        meta = _read_json(path, "trunk variant")
        if not meta.get("admitted", False):
            continue
        if "channels" not in meta and isinstance(meta.get("contract"), dict):  # older metadata: derive it
            meta["channels"] = {k: v["channels"] for k, v in meta["contract"].items()}
        channels = {str(k): int(v) for k, v in dict(_need(meta, "channels", path)).items()}
        if set(channels) != set(FEATURE_STRIDES):
            raise ContractError(f"{path}: channels {sorted(channels)} != contract {sorted(FEATURE_STRIDES)}")
        out.append(
            TrunkArtifact(
                name=str(meta.get("name", vdir.name)),
                onnx=vdir / "model.onnx",
                input_size=int(_need(meta, "input_size", path)),
                channels=channels,
                sha256=str(_need(meta, "sha256", path)),
                meta=meta,
            )
        )
    if not out:
        raise ArtifactError(
            f"no admitted trunk variant under {Path(workdir) / 'trunk'}; "
            "export and admit one first (polyhead compress / export)"
        )
    return out


def read_head(workdir: Path, task: str) -> HeadArtifact:
    """Return the head of ``task`` from ``WORK/heads/<task>``.

    Raises:
        ArtifactError: If the head or its metadata is missing or malformed.
    """
    if not _TASK_NAME.match(task):
        raise ArtifactError(
            f"task name {task!r} must match {_TASK_NAME.pattern} (it becomes Triton model and tensor names)"
        )
    hdir = Path(workdir) / "heads" / task
    path = hdir / "head.json"
    meta = _read_json(path, f"head '{task}'")
    classes = tuple(str(c) for c in _need(meta, "classes", path))
    category_ids = tuple(int(c) for c in meta.get("category_ids", range(1, len(classes) + 1)))
    if len(category_ids) != len(classes):
        raise ArtifactError(f"{path}: {len(classes)} classes but {len(category_ids)} category_ids")
    return HeadArtifact(
        task=task,
        onnx=hdir / "model.onnx",
        classes=classes,
        category_ids=category_ids,
        input_size=int(_need(meta, "input_size", path)),
        max_dets=int(_need(meta, "max_dets", path)),
        sha256=str(_need(meta, "sha256", path)),
        meta=meta,
    )


def read_heads(workdir: Path) -> list[HeadArtifact]:
    """Return every head under ``WORK/heads``, sorted by task name."""
    root = Path(workdir) / "heads"
    return [read_head(workdir, p.name) for p in sorted(root.glob("*"))
            if (p / "head.json").is_file() and not p.name.startswith(".")]


def onnx_io_dims(path: Path) -> dict[str, list[int | None]]:
    """Return the static dims (``None`` where symbolic) of every graph input and output of an ONNX file."""
    if not Path(path).is_file():
        raise ArtifactError(f"{path} is missing; export the model first")
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {}
    for value in [*graph.input, *graph.output]:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape]
    return dims


def check_compatible(trunks: list[TrunkArtifact], heads: list[HeadArtifact]) -> tuple[int, dict[str, int]]:
    """Check every variant and head share one input size and the feature channels.

    Returns:
        ``(input_size, channels)`` common to all.

    Raises:
        ContractError: On any mismatch, naming the artifact.
    """
    size, channels = trunks[0].input_size, trunks[0].channels
    if size % 32:
        raise ContractError(f"trunk input_size {size} must be a multiple of 32 (stride of p5)")
    for t in trunks[1:]:
        if (t.input_size, t.channels) != (size, channels):
            raise ContractError(
                f"trunk variant '{t.name}' has input {t.input_size} channels {t.channels}, "
                f"but '{trunks[0].name}' has {size} {channels}; variants must keep the contract"
            )
    for h in heads:
        check_head(h, size, channels)
    return size, channels


def check_head(head: HeadArtifact, input_size: int, channels: dict[str, int]) -> None:
    """Raise :class:`ContractError` unless the head's input size and ONNX input channels match."""
    if head.input_size != input_size:
        raise ContractError(
            f"head '{head.task}' expects input_size {head.input_size}, the trunk serves "
            f"{input_size}; retrain or re-export the head for {input_size}"
        )
    dims = onnx_io_dims(head.onnx)
    for name, ch in channels.items():
        got = dims.get(name)
        if got is None or len(got) != 4 or got[1] not in (None, ch):
            raise ContractError(
                f"head '{head.task}' input '{name}' has dims {got}, contract needs "
                f"[B, {ch}, H, W]; re-export the head against this trunk"
            )
