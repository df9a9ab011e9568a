"""The learning-rate schedule every optimiser in transfer uses: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, total: int, base_lr: float, warmup: int = 0, floor: float = 0.05) -> float:
    """Learning rate of ``step`` (0-based) out of ``total``.

    Steps ``0 .. warmup-1`` rise linearly to ``base_lr`` (step ``warmup-1`` reaches it); the rest
    follow half a cosine from ``base_lr`` down to ``floor * base_lr`` at step ``total``, and stay there.

    Args:
        step: The optimiser step.
        total: Steps of the whole run (warm-up included).
        base_lr: Peak learning rate.
        warmup: Linear warm-up steps (0: start at the peak).
        floor: Final learning rate as a fraction of ``base_lr``.
    """
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
