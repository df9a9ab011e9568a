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
        pretrained: Initialisation of a freshly built backbone: ``None`` (random) or ``"imagenet"``
            (the shipped torchvision MobileNetV2 weights; only for :data:`MOBILENET_V2_BACKBONE`).
            Not part of the architecture: excluded from equality and from :meth:`to_dict`, so a
            trunk rebuilt from a checkpoint or ``variant.json`` never reads the weights file again
            (its trained weights are loaded over a random init instead).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    channels: int = 64
    pretrained: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.pretrained not in PRETRAINED:
            raise ConfigError(f"unknown trunk init pretrained={self.pretrained!r}; choose one of {PRETRAINED}")

    def to_dict(self) -> dict:
        """JSON-friendly form of the architecture (stored in checkpoints and ``variant.json``)."""
        data = asdict(self)
        del data["pretrained"]  # weights come with the checkpoint; see the class docstring
        return data

    @staticmethod
    def from_dict(data: dict) -> TrunkConfig:
        """Inverse of :meth:`to_dict` (the result has ``pretrained=None``)."""
        bb = dict(data["backbone"])
        bb["stages"] = tuple(StageSpec(**s) for s in bb["stages"])
        bb["hidden"] = tuple(bb["hidden"]) if bb.get("hidden") is not None else None
        return TrunkConfig(backbone=BackboneConfig(**bb), channels=int(data["channels"]))


def _stages(widths: tuple[int, ...], depths: tuple[int, ...], strides=(1, 2, 2, 2, 1, 2)) -> tuple:
    return tuple(StageSpec(w, d, s, 1.0 if i == 0 else 4.0) for i, (w, d, s) in enumerate(zip(widths, depths, strides)))


#: torchvision's MobileNetV2 ``inverted_residual_setting``: expansion t, channels c, repeats n, first stride s.
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
#: torchvision's MobileNetV2 (width 1.0) ``features.0``-``features.17`` as a :class:`BackboneConfig`:
#: stem 32, 17 blocks; the last block at strides 8/16/32 (32/96/320 channels) is tapped.
MOBILENET_V2_BACKBONE = BackboneConfig(32, tuple(StageSpec(c, n, s, float(t)) for t, c, n, s in MOBILENET_V2_SETTINGS))
#: Values of :attr:`TrunkConfig.pretrained`.
PRETRAINED: tuple[str | None, ...] = (None, "imagenet")

#: Named trunk sizes. ``student`` is the one served; ``teacher`` distils into it; ``nano`` is for tests;
#: ``mobilenet_v2`` is torchvision's backbone initialised from the shipped ImageNet weights.
TRUNK_SIZES: dict[str, TrunkConfig] = {
    "nano": TrunkConfig(BackboneConfig(8, _stages((8, 12, 16, 24, 32, 48), (1, 1, 1, 1, 1, 1))), channels=32),
    "student": TrunkConfig(BackboneConfig(16, _stages((16, 32, 48, 96, 128, 256), (1, 2, 3, 3, 2, 2))), 64),
    "teacher": TrunkConfig(BackboneConfig(32, _stages((32, 64, 96, 192, 256, 448), (1, 2, 3, 4, 3, 3))), 64),
    "mobilenet_v2": TrunkConfig(MOBILENET_V2_BACKBONE, 64, pretrained="imagenet"),
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
    The contract (:attr:`feature_specs`) is checked on a dummy input at construction. With
    ``cfg.pretrained`` set the backbone is initialised from those weights first (a trunk built
    for training; see :class:`TrunkConfig`).

    Raises:
        ArtifactError: If ``cfg.pretrained`` weights are not installed or fail their sha256 check.
    """

    def __init__(self, cfg: TrunkConfig, check_size: int = 64):
        super().__init__()
        self.cfg = cfg
        self.normalize = Normalize()
        self.backbone = Backbone(cfg.backbone)
        self.neck = PANNeck(self.backbone.out_channels, cfg.channels)
        if cfg.pretrained is not None:
            from shared.pretrained_trunk import load_pretrained_backbone  # it imports this module

            load_pretrained_backbone(self.backbone, cfg.pretrained)
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
