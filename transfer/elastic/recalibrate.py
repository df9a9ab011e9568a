"""BatchNorm recalibration: a sub-network's own running statistics, estimated on a few hundred images.

Weight-sharing training leaves the shared running statistics meaningless for any one sub-network
(each sub-network sees different inputs in every block). Before a sub-network is evaluated or
exported its statistics are re-estimated: reset, then one no-grad pass in training mode with a
cumulative average (``momentum=None``), so every batch weighs the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared.errors import InputError


@torch.no_grad()
def recalibrate_bn(module: nn.Module, images: Tensor, batch_size: int = 32) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``module`` on ``images``, in place.

    Args:
        module: A plain trunk (e.g. :func:`transfer.elastic.supernet.extract_subnet`'s result).
        images: ``(N, 3, S, S)`` uint8 images (a few hundred training images).
        batch_size: Images per forward pass (statistics are averaged over all ``N`` either way).

    Returns:
        ``module`` in eval mode, momentum of every BatchNorm restored.

    Raises:
        InputError: If ``images`` is empty or not ``(N, 3, S, S)``.
    """
    if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        raise InputError(f"BN recalibration needs (N, 3, S, S) images with N > 0, got {tuple(images.shape)}")
    norms = {m: m.momentum for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches
    module.train()
    for i in range(0, len(images), batch_size):
        module(images[i : i + batch_size])
    for bn, momentum in norms.items():
        bn.momentum = momentum
    return module.eval()
