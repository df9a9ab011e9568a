"""The feature contract: the named maps every trunk produces and every head consumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import ContractError

if TYPE_CHECKING:  # torch only where a module is probed: the client and Triton configs read the contract
    import torch


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map of the contract.

    Attributes:
        name: Output name (also the ONNX/Triton tensor name), e.g. ``"p3"``.
        channels: Channel count C of the map.
        stride: Input pixels per feature cell; the map is ``(B, C, H/stride, W/stride)``.
    """

    name: str
    channels: int
    stride: int


def default_contract(channels: int = 64) -> tuple[FeatureSpec, ...]:
    """The standard contract: ``p3, p4, p5`` at strides 8/16/32, ``channels`` each."""
    return tuple(FeatureSpec(f"p{level}", channels, 2**level) for level in (3, 4, 5))


#: Stride of each feature of the standard contract (:func:`default_contract`): ``{"p3": 8, ...}``.
FEATURE_STRIDES: dict[str, int] = {s.name: s.stride for s in default_contract()}


def contract_to_dict(specs: Sequence[FeatureSpec]) -> dict[str, dict[str, int]]:
    """JSON-friendly form: ``{"p3": {"channels": 64, "stride": 8}, ...}``."""
    return {s.name: {"channels": s.channels, "stride": s.stride} for s in specs}


def contract_from_dict(data: Mapping[str, Mapping[str, int]]) -> tuple[FeatureSpec, ...]:
    """Inverse of :func:`contract_to_dict`, ordered by stride."""
    specs = [FeatureSpec(name, int(v["channels"]), int(v["stride"])) for name, v in data.items()]
    return tuple(sorted(specs, key=lambda s: s.stride))


def check_specs(specs: Sequence[FeatureSpec]) -> None:
    """Validate a contract: unique names, positive channels, strictly increasing strides."""
    if not specs:
        raise ContractError("the feature contract is empty; declare at least one FeatureSpec")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ContractError(f"feature names must be unique, got {names}")
    for prev, cur in zip(specs, specs[1:]):
        if cur.stride <= prev.stride:
            raise ContractError(
                f"strides must strictly increase along the contract, got {prev.name}={prev.stride} "
                f"then {cur.name}={cur.stride}"
            )
    for s in specs:
        if s.channels <= 0 or s.stride <= 0:
            raise ContractError(f"{s} must have positive channels and stride")


def check_features(
    features: Mapping[str, torch.Tensor], specs: Sequence[FeatureSpec], input_hw: tuple[int, int]
) -> None:
    """Check that ``features`` satisfy ``specs`` for an input of size ``input_hw``.

    Args:
        features: ``name -> (B, C, H/stride, W/stride)`` tensors.
        specs: The declared contract.
        input_hw: ``(H, W)`` of the image batch that produced ``features``.

    Raises:
        ContractError: naming the first map whose name, channels or spatial size is wrong.
    """
    missing = [s.name for s in specs if s.name not in features]
    if missing:
        raise ContractError(f"trunk output lacks {missing}; it returned {sorted(features)}")
    h, w = input_hw
    for s in specs:
        f = features[s.name]
        expected = (s.channels, -(-h // s.stride), -(-w // s.stride))
        if f.dim() != 4 or tuple(f.shape[1:]) != expected:
            raise ContractError(
                f"feature {s.name!r} has shape {tuple(f.shape)}, the contract says (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) for a {h}x{w} input"
            )


def probe_contract(module: torch.nn.Module, specs: Sequence[FeatureSpec], size: int = 64) -> None:
    """Run ``module`` on a blank ``(1, 3, size, size)`` uint8 image in eval mode and check ``specs``."""
    import torch

    was_training = module.training
    module.eval()
    with torch.no_grad():
        probe = torch.zeros(1, 3, size, size, dtype=torch.uint8)
        check_features(module(probe), specs, (size, size))
    module.train(was_training)
