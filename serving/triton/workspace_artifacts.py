"""Read the workspace's exported trunk variants and heads (``model.onnx`` + json) for serving.

Layout (written by the export step)::

    WORK/trunk/<variant>/model.onnx + variant.json   # name, input_size, channels, sha256, admitted
    WORK/heads/<task>/model.onnx + head.json         # task, classes, category_ids, input_size,
                                                      # max_dets, sha256

The two files' schema, writer and reader are :mod:`shared.artifact_records`; this module turns the
records into what serving needs (paths, the admitted variants, compatibility checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from shared.artifact_records import (
    HEAD_FILE,
    VARIANT_FILE,
    HeadRecord,
    VariantRecord,
    read_head_json,
    read_variant_json,
)
from shared.artifacts import sha256_file, verify_sha256  # noqa: F401 (re-exported)
from shared.contract import FEATURE_STRIDES
from shared.errors import ArtifactError, ContractError
from shared.task_names import check_task_name


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


def read_trunks(workdir: Path) -> list[TrunkArtifact]:
    """Return the admitted trunk variants under ``WORK/trunk``, sorted by name.

    Raises:
        ArtifactError: If none is admitted or metadata is malformed.
    """
    out = []
    for vdir in sorted(p for p in (Path(workdir) / "trunk").glob("*") if p.is_dir() and not p.name.startswith(".")):
        meta = read_variant_json(vdir)
        if not meta.get("admitted", False):
            continue  # not served: its metadata is not checked
        record = VariantRecord.from_json(meta, vdir / VARIANT_FILE, name=vdir.name)
        channels = dict(record.channels)
        if set(channels) != set(FEATURE_STRIDES):
            raise ContractError(
                f"{vdir / VARIANT_FILE}: channels {sorted(channels)} != contract {sorted(FEATURE_STRIDES)}"
            )
        out.append(
            TrunkArtifact(
                name=record.name,
                onnx=vdir / "model.onnx",
                input_size=record.input_size,
                channels=channels,
                sha256=record.sha256,
                meta={**meta, "channels": channels},
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
    check_task_name(task, ArtifactError)
    hdir = Path(workdir) / "heads" / task
    meta = read_head_json(hdir, f"head '{task}'")
    record = HeadRecord.from_json(meta, hdir / HEAD_FILE, task=task)
    return HeadArtifact(
        task=task,
        onnx=hdir / "model.onnx",
        classes=record.classes,
        category_ids=record.category_ids,
        input_size=record.input_size,
        max_dets=record.max_dets,
        sha256=record.sha256,
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
