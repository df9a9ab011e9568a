"""The training configuration: YAML validated into frozen dataclasses (unknown keys rejected by name)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.errors import ConfigError
from shared.task_names import check_task_name

#: Names accepted by ``trunk:`` (the keys of ``shared.trunk.TRUNK_SIZES``; kept here so reading a
#: config imports no torch, and tests/shared/test_pretrained_trunk.py checks the two agree).
TRUNK_CHOICES: tuple[str, ...] = ("nano", "student", "teacher", "mobilenet_v2")


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: ``lo`` / ``hi`` (``None``: unbounded), each end open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"


def ranged(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    """A dataclass field with its allowed :class:`Range` (checked by :func:`check_ranges`)."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


def pick_names(kind: str, asked: typing.Sequence[str] | None, known: typing.Sequence[str]) -> list[str]:
    """``asked`` (all of ``known`` when ``None``), in ``known``'s order.

    Raises:
        ConfigError: If a name is not in ``known``, or none is given; the message names it and the choices.
    """
    if asked is None:
        return list(known)
    unknown = [n for n in asked if n not in known]
    if unknown or not asked:
        raise ConfigError(f"unknown {kind} {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(known) or 'none (the workspace has none)'}")
    return [n for n in known if n in asked]


def check_ranges(obj: Any, section: str) -> None:
    """Refuse a field of dataclass ``obj`` outside its :func:`ranged` range, naming the key, value and range.

    Raises:
        ConfigError: ``<section>.<key> = <value> is out of range: allowed <range>``.
    """
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("range")
        value = getattr(obj, f.name)
        if allowed is not None and value not in allowed:
            key = f"{section}.{f.name}" if section else f.name
            raise ConfigError(f"{key} = {value!r} is out of range: allowed {allowed}; set it inside that range")


@dataclass(frozen=True)
class DataConfig:
    """Where the COCO files are.

    Attributes:
        root: Dataset directory holding ``images/`` and ``<task>/{train,val}.json`` (relative paths
            are resolved against the config file's directory).
        tasks: Tasks trained jointly with the trunk.
        images: Images directory, relative to ``root``.
    """

    root: str = "data"
    tasks: tuple[str, ...] = ("signs", "vehicles", "people")
    images: str = "images"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: Passes over the training images.
        batch_size: Images per step.
        lr: Peak AdamW learning rate (cosine decay after a linear warm-up).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        seed: Seed of weights init, shuffling and augmentation.
        threads: torch intra-op threads.
        distill_weight: Weight of feature distillation from the teacher (0 disables).
        bn_l1: L1 on BatchNorm scales (sparse training before pruning; 0 disables).
        backbone_lr_scale: Learning-rate factor of a pretrained backbone (``trunk: mobilenet_v2``):
            a tenth keeps more of its ImageNet features for heads added later (docs/benchmarks.md);
            from-scratch trunks train every parameter at ``lr``.
    """

    epochs: int = ranged(15, 1, 100_000)
    batch_size: int = ranged(32, 1, 65_536)
    lr: float = ranged(4e-3, 0.0, 10.0, lo_open=True)
    weight_decay: float = ranged(0.05, 0.0, 10.0)
    warmup_steps: int = ranged(50, 0, None)
    seed: int = ranged(0, 0, 2**32 - 1)
    threads: int = ranged(2, 1, 1024)
    distill_weight: float = ranged(0.0, 0.0, 1000.0)
    bn_l1: float = ranged(0.0, 0.0, 1.0)
    backbone_lr_scale: float = ranged(0.1, 0.0, 1.0)  # 0 freezes a pretrained backbone's weights

    def __post_init__(self):
        check_ranges(self, "train")


@dataclass(frozen=True)
class HeadSection:
    """The YAML ``head:`` section: task head width/depth and detection thresholds.

    Turned into a ``heads.head.HeadArchitecture`` per task (with the task's class count) when
    heads are built; head-only training hyper-parameters are ``HeadOnlyTrainConfig``.
    """

    width: int = ranged(64, 1, 4096)  # w64 d1 (16 K params): same mAP as w96 d2 (54 K), 0.19 vs 0.28 ms
    depth: int = ranged(1, 1, 16)
    # add-task heads: a frozen trunk leaves the head to adapt the features itself; on the demo's new
    # task depth 2 reaches mAP 0.227 against 0.140 for depth 1 (51 vs 40 s)
    transfer_depth: int = ranged(2, 1, 16)
    score_threshold: float = ranged(0.05, 0.0, 1.0, hi_open=True)
    iou_threshold: float = ranged(0.6, 0.0, 1.0, lo_open=True)
    max_dets: int = ranged(100, 1, 10_000)

    def __post_init__(self):
        check_ranges(self, "head")


@dataclass(frozen=True)
class PolyheadConfig:
    """The whole ``polyhead.yaml``.

    Attributes:
        input_size: Square letterbox size S of every model input (multiple of 32).
        trunk: Trunk name (:data:`TRUNK_CHOICES`): ``mobilenet_v2`` (the default: torchvision's
            backbone initialised from the shipped ImageNet weights; +11-20 mAP points over the
            from-scratch ``student`` in docs/benchmarks.md), or ``nano``, ``student``, ``teacher``
            trained from scratch.
        teacher: Trunk size distilled from (``None`` = no distillation).
        teacher_weights: torchvision-format ImageNet MobileNetV2 state_dict file to distil the
            student's backbone from (relative paths: to the workspace); implies ``distill_weight`` 1.0
            when that is 0.
    """

    input_size: int = ranged(192, 64, 2048)
    trunk: str = "mobilenet_v2"
    teacher: str | None = None
    teacher_weights: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    head: HeadSection = field(default_factory=HeadSection)

    def __post_init__(self):
        check_ranges(self, "")
        if self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32 (the trunk's largest stride), got "
                              f"{self.input_size}; use {max(64, round(self.input_size / 32) * 32)}")
        if self.trunk not in TRUNK_CHOICES:
            raise ConfigError(f"unknown trunk {self.trunk!r}; choose one of {list(TRUNK_CHOICES)}")
        if not self.data.tasks:
            raise ConfigError("data.tasks is empty; list at least one task")
        for task in self.data.tasks:  # serving refuses other names: fail before training, not after
            check_task_name(task)


def _build(cls: type, raw: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(raw) - set(fields)))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}".lstrip(".")) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(typing.get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def config_from_dict(raw: dict) -> PolyheadConfig:
    """Validate a parsed YAML mapping into a :class:`PolyheadConfig`."""
    return _build(PolyheadConfig, {} if raw is None else raw, "")


def load_config(path: str | Path) -> PolyheadConfig:
    """Load and validate ``polyhead.yaml`` (``yaml.safe_load``; errors name the file and the key)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it or run `polyhead demo`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror}); pass a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a polyhead config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg: PolyheadConfig) -> dict:
    """Plain-data form (lists instead of tuples) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: PolyheadConfig) -> str:
    """YAML text of ``cfg``."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
