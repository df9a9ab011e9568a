"""The workspace's two metadata files as one schema, with the writer and the reader side by side.

``trunk/<variant>/variant.json`` is a :class:`VariantRecord`, ``heads/<task>/head.json`` a
:class:`HeadRecord`. ``transfer.export.publish`` writes them (:func:`write_variant_record`,
:func:`write_head_record`); ``serving.triton.workspace_artifacts`` reads them
(:func:`read_variant_json` + :meth:`VariantRecord.from_json`, :func:`read_head_record`).

Each dataclass lists the keys this project gives a meaning to, in the order they are written.
Every other key (``role``, ``parent``, ``settings``, ``compression``, ``pareto``, ``trained_by``,
``val_json``...) is kept as read in ``extra`` and written back after the known ones, so a file
read and written again keeps its keys. Optional keys that are absent (or ``null``) read as
``None`` and are not written. Readers check every known key's type and say which file and key
is wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.artifacts import atomic_write_json, read_json
from shared.errors import ArtifactError

VARIANT_FILE = "variant.json"
HEAD_FILE = "head.json"
_FIX = "re-export it"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_object(v: Any) -> bool:
    return isinstance(v, dict)


def _is_channels(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_positive_int(c) for k, c in v.items())


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(c, str) for c in v)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(c) for c in v)


#: key -> (check, what the value must be) of every known key of both files.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (_is_str, "a string"),
    "task": (_is_str, "a string"),
    "input_size": (_is_positive_int, "a positive integer"),
    "max_dets": (_is_positive_int, "a positive integer"),
    "params": (_is_int, "an integer"),
    "size_bytes": (_is_int, "an integer"),
    "sha256": (_is_str, "a string"),
    "precision": (_is_str, "a string"),
    "parity_max_abs_diff": (_is_number, "a number"),
    "score_threshold": (_is_number, "a number"),
    "iou_threshold": (_is_number, "a number"),
    "admitted": (_is_bool, "true or false"),
    "channels": (_is_channels, 'an object {"p3": <positive integer>, ...}'),
    "classes": (_is_str_list, "a list of strings"),
    "category_ids": (_is_int_list, "a list of integers"),
    "contract": (_is_object, "an object"),
    "trunk_config": (_is_object, "an object"),
    "head_config": (_is_object, "an object"),
    "latency_ms": (_is_object, "an object"),
    "map": (_is_object, "an object"),
}


def _value(data: Mapping[str, Any], key: str, source: str, required: bool) -> Any:
    """``data[key]`` checked against :data:`_CHECKS`; ``None`` when optional and absent or null."""
    if data.get(key) is None:
        if required:
            raise ArtifactError(f"{source} lacks the key '{key}'; {_FIX}")
        return None
    value = data[key]
    check, kind = _CHECKS[key]
    if not check(value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ArtifactError(f"{source}: '{key}' must be {kind}, got {shown}; {_FIX}")
    return value


def _known(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")


def _to_json(record: VariantRecord | HeadRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _known(type(record)):
        value = getattr(record, name)
        if value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    return {**out, **record.extra}


def _extra(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    known = set(_known(cls))
    return {k: v for k, v in data.items() if k not in known}


def _named(data: Mapping[str, Any], key: str, name: str | None) -> dict[str, Any]:
    """A copy of ``data`` with ``data[key] = name`` where the file has none (older metadata)."""
    data = dict(data)
    if name is not None and data.get(key) is None:
        data[key] = name
    return data


@dataclass(frozen=True, kw_only=True)
class VariantRecord:
    """``trunk/<variant>/variant.json``: one exported trunk variant (fields in written order).

    Attributes:
        name: Variant name (its directory's name).
        input_size: Square input side S in pixels.
        contract: Feature contract, ``{"p3": {"channels": 64, "stride": 8}, ...}``.
        channels: Channels per feature, ``{"p3": 64, ...}`` (derived from ``contract`` when absent).
        trunk_config: The trunk architecture (``TrunkConfig.to_dict()``).
        params: Trunk parameters.
        size_bytes: Size of ``model.onnx``.
        sha256: sha256 of ``model.onnx``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        parity_max_abs_diff: Max abs feature difference onnxruntime vs torch at export.
        latency_ms: Device name -> ``{"b1": ms, "b8": ms}``.
        map: Task -> ``{"map": ..., "map50": ...}`` of that task's head on this variant.
        admitted: Whether serving may use the variant (absent reads as ``False``).
        extra: Every other key, in file order (``role``, ``parent``, ``settings``, ``pareto``...).
    """

    name: str
    input_size: int
    contract: dict | None = None
    channels: dict[str, int]
    trunk_config: dict | None = None
    params: int | None = None
    size_bytes: int | None = None
    sha256: str
    precision: str | None = None
    parity_max_abs_diff: float | None = None
    latency_ms: dict | None = None
    map: dict | None = None
    admitted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | Path, name: str | None = None) -> VariantRecord:
        """Check and wrap a ``variant.json`` mapping.

        Args:
            data: The parsed file.
            source: The file (named in errors).
            name: Variant name when the file has none (older metadata): its directory's name.

        Raises:
            ArtifactError: A required key is missing or a known key has the wrong type.
        """
        src, data = str(source), _named(data, "name", name)
        if data.get("channels") is None and isinstance(data.get("contract"), dict):  # older metadata: derive it
            try:
                data["channels"] = {k: v["channels"] for k, v in data["contract"].items()}
            except (TypeError, KeyError):
                raise ArtifactError(f"{src}: 'contract' must map each feature to {{'channels': ...}}; {_FIX}") from None
        required = {"name", "input_size", "channels", "sha256"}
        values = {k: _value(data, k, src, k in required) for k in _known(cls)}
        values["admitted"] = bool(values["admitted"])
        return cls(**values, extra=_extra(cls, data))

    def to_json(self) -> dict[str, Any]:
        """The file's content: known keys in order (``None`` ones left out), then :attr:`extra`."""
        return _to_json(self)

    def with_extra(self, extra: Mapping[str, Any] | None) -> VariantRecord:
        """``{**self, **extra}``: known keys in ``extra`` replace fields (in place), others are appended."""
        source = f"{VARIANT_FILE} of {self.name!r}"
        return self if not extra else VariantRecord.from_json({**self.to_json(), **extra}, source)


@dataclass(frozen=True, kw_only=True)
class HeadRecord:
    """``heads/<task>/head.json``: one exported task head (fields in written order).

    Attributes:
        task: Task name (its directory's name).
        classes: Class names; ``classes[i]`` names class id ``i``.
        category_ids: COCO category id per class (absent: ``1..len(classes)``).
        input_size: Input side the head was trained for.
        max_dets: ``K``, the fixed number of output slots.
        score_threshold: Score below which detections are dropped (in the graph).
        iou_threshold: NMS IoU threshold (in the graph).
        contract: Feature contract the head consumes.
        head_config: ``{"num_classes", "width", "depth"}`` of the head architecture.
        params: Head parameters.
        sha256: sha256 of ``model.onnx``.
        map: Trunk variant -> ``{"map": ..., "map50": ...}`` of this head on it.
        extra: Every other key, in file order (``reference_trunk``, ``trained_by``, ``val_json``...).
    """

    task: str
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    input_size: int
    max_dets: int
    score_threshold: float | None = None
    iou_threshold: float | None = None
    contract: dict | None = None
    head_config: dict | None = None
    params: int | None = None
    sha256: str
    map: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | Path, task: str | None = None) -> HeadRecord:
        """Check and wrap a ``head.json`` mapping.

        Args:
            data: The parsed file.
            source: The file (named in errors).
            task: Task name when the file has none: its directory's name.

        Raises:
            ArtifactError: A required key is missing, a known key has the wrong type, or
                ``classes`` and ``category_ids`` differ in length.
        """
        src, data = str(source), _named(data, "task", task)
        required = {"task", "classes", "input_size", "max_dets", "sha256"}
        values = {k: _value(data, k, src, k in required) for k in _known(cls)}
        classes = tuple(values["classes"])
        ids = values["category_ids"]
        category_ids = tuple(range(1, len(classes) + 1)) if ids is None else tuple(ids)
        if len(category_ids) != len(classes):
            raise ArtifactError(f"{src}: {len(classes)} classes but {len(category_ids)} category_ids; {_FIX}")
        values.update(classes=classes, category_ids=category_ids)
        return cls(**values, extra=_extra(cls, data))

    def to_json(self) -> dict[str, Any]:
        """The file's content: known keys in order (``None`` ones left out), then :attr:`extra`."""
        return _to_json(self)

    def with_extra(self, extra: Mapping[str, Any] | None) -> HeadRecord:
        """``{**self, **extra}``: known keys in ``extra`` replace fields (in place), others are appended."""
        return self if not extra else HeadRecord.from_json({**self.to_json(), **extra}, f"{HEAD_FILE} of {self.task!r}")


def read_variant_json(directory: str | Path) -> dict[str, Any]:
    """The raw ``variant.json`` object of a variant directory (for ``admitted`` checks before :meth:`from_json`).

    Raises:
        ArtifactError: Missing, unreadable, not JSON or not a JSON object.
    """
    return _read_object(Path(directory), "trunk variant", VARIANT_FILE)


def read_head_json(directory: str | Path, what: str = "head") -> dict[str, Any]:
    """The raw ``head.json`` object of a head directory (``what`` names it in errors, e.g. ``head 'cars'``)."""
    return _read_object(Path(directory), what, HEAD_FILE)


def _read_object(directory: Path, what: str, filename: str) -> dict[str, Any]:
    missing_fix = "export it first (polyhead export)"
    return read_json(directory / filename, f"{what} metadata", fix=_FIX, missing_fix=missing_fix, expect=dict)


def read_variant_record(directory: str | Path) -> VariantRecord:
    """Read and check ``<directory>/variant.json`` (a missing ``name`` is the directory's name)."""
    directory = Path(directory)
    return VariantRecord.from_json(read_variant_json(directory), directory / VARIANT_FILE, name=directory.name)


def read_head_record(directory: str | Path, what: str = "head") -> HeadRecord:
    """Read and check ``<directory>/head.json`` (a missing ``task`` is the directory's name)."""
    directory = Path(directory)
    return HeadRecord.from_json(read_head_json(directory, what), directory / HEAD_FILE, task=directory.name)


def write_variant_record(directory: str | Path, record: VariantRecord) -> Path:
    """Atomically write ``<directory>/variant.json`` (checked by the reader's rules first); return its path."""
    return _write_record(Path(directory) / VARIANT_FILE, record)


def write_head_record(directory: str | Path, record: HeadRecord) -> Path:
    """Atomically write ``<directory>/head.json`` (checked by the reader's rules first); return its path."""
    return _write_record(Path(directory) / HEAD_FILE, record)


def _write_record(path: Path, record: VariantRecord | HeadRecord) -> Path:
    data = record.to_json()
    type(record).from_json(data, path)
    atomic_write_json(path, data)
    return path


def record_map_result(path: str | Path, key: str, result: dict[str, float]) -> None:
    """Set ``map[key] = result`` in a ``variant.json`` or ``head.json``, every other key and its order kept.

    The file is checked by its record's rules first, and rewritten atomically.

    Args:
        path: The ``variant.json`` (``key``: a task) or ``head.json`` (``key``: a trunk variant).
        key: Task or variant name.
        result: ``{"map": ..., "map50": ...}``.
    """
    path = Path(path)
    record = {VARIANT_FILE: VariantRecord, HEAD_FILE: HeadRecord}.get(path.name)
    if record is None:
        raise ArtifactError(f"{path} is neither a {VARIANT_FILE} nor a {HEAD_FILE}")
    data = _read_object(path.parent, "trunk variant" if record is VariantRecord else "head", path.name)
    record.from_json(data, path, path.parent.name)
    data.setdefault("map", {})[key] = result
    atomic_write_json(path, data)
