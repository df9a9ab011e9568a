"""The trunk: uint8 images -> normalised -> backbone -> neck -> the feature contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from shared.backbone import Backbone, BackboneConfig, StageSpec
from shared.contract import FeatureSpec, check_specs, default_contract, probe_contract
from shared.errors import ConfigError, InputError
from shared.neck import PANNeck

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrunkConfig:
    """A trunk: its backbone shape and the contract width.

    Attributes:
        backbone: Stage widths/depths (and pruned hidden widths) as data.
        channels: Channels of every contract map (p3, p4, p5).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    channels: int = 64

    def to_dict(self) -> dict:
        """JSON-friendly form (stored in checkpoints and ``variant.json``)."""
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> TrunkConfig:
        """Inverse of :meth:`to_dict`."""
        bb = dict(data["backbone"])
        bb["stages"] = tuple(StageSpec(**s) for s in bb["stages"])
        bb["hidden"] = tuple(bb["hidden"]) if bb.get("hidden") is not None else None
        return TrunkConfig(backbone=BackboneConfig(**bb), channels=int(data["channels"]))


def _stages(widths: tuple[int, ...], depths: tuple[int, ...], strides=(1, 2, 2, 2, 1, 2)) -> tuple:
    return tuple(StageSpec(w, d, s, 1.0 if i == 0 else 4.0) for i, (w, d, s) in enumerate(zip(widths, depths, strides)))


#: Named trunk sizes. ``student`` is the one served; ``teacher`` distils into it; ``nano`` is for tests.
TRUNK_SIZES: dict[str, TrunkConfig] = {
    "nano": TrunkConfig(BackboneConfig(8, _stages((8, 12, 16, 24, 32, 48), (1, 1, 1, 1, 1, 1))), channels=32),
    "student": TrunkConfig(BackboneConfig(16, _stages((16, 32, 48, 96, 128, 256), (1, 2, 3, 3, 2, 2))), 64),
    "teacher": TrunkConfig(BackboneConfig(32, _stages((32, 64, 96, 192, 256, 448), (1, 2, 3, 4, 3, 3))), 64),
}


def trunk_config(size: str) -> TrunkConfig:
    """Look up a named size, with a clear error for unknown names."""
    if size not in TRUNK_SIZES:
        raise ConfigError(f"unknown trunk size {size!r}; choose one of {sorted(TRUNK_SIZES)}")
    return TRUNK_SIZES[size]


class Normalize(nn.Module):
    """``(B, 3, H, W) uint8 RGB -> float32`` ImageNet-normalised; lives in the graph so exports take pixels."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, images: Tensor) -> Tensor:  # noqa: D102
        return (images.float() - self.mean) * self.inv_std


class Trunk(nn.Module):
    """Backbone + neck behind input normalisation.

    ``forward(images: (B, 3, H, W) uint8) -> {"p3": (B, C, H/8, W/8), "p4": ..., "p5": ...}``.
    The contract (:attr:`feature_specs`) is checked on a dummy input at construction.
    """

    def __init__(self, cfg: TrunkConfig, check_size: int = 64):
        super().__init__()
        self.cfg = cfg
        self.normalize = Normalize()
        self.backbone = Backbone(cfg.backbone)
        self.neck = PANNeck(self.backbone.out_channels, cfg.channels)
        self.feature_specs: tuple[FeatureSpec, ...] = default_contract(cfg.channels)
        check_specs(self.feature_specs)
        probe_contract(self, self.feature_specs, check_size)

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # noqa: D102
        if not torch.jit.is_tracing() and (images.dim() != 4 or images.shape[1] != 3):
            raise InputError(f"trunk expects (B, 3, H, W) uint8 images, got shape {tuple(images.shape)}")
        return self.neck(self.backbone(self.normalize(images)))


def build_trunk(size: str | TrunkConfig = "student") -> Trunk:
    """Build a trunk from a size name or a config."""
    return Trunk(trunk_config(size) if isinstance(size, str) else size)
