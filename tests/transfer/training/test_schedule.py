"""The shared learning-rate schedule gives the values the three former copies gave."""

from __future__ import annotations

import math

import pytest

from transfer.training.schedule import warmup_cosine_lr


def _loop_lr_at(step: int, total: int, cfg_lr: float, warmup: int) -> float:
    """transfer/training/loop.py ``lr_at`` (and feature_cache ``_lr_at``) before they were merged."""
    if step < warmup:
        return cfg_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _prune_lr(step: int, steps: int, lr: float) -> float:
    """transfer/compression/prune.py's inline cosine before it was merged."""
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))


@pytest.mark.parametrize(("total", "warmup", "lr"), [(1, 0, 1e-3), (100, 20, 8e-3), (750, 50, 4e-3), (30, 50, 4e-3)])
def test_same_values_as_the_training_loops(total: int, warmup: int, lr: float) -> None:
    for step in range(total + 5):
        assert warmup_cosine_lr(step, total, lr, warmup) == _loop_lr_at(step, total, lr, warmup)


@pytest.mark.parametrize(("steps", "lr"), [(1, 1e-3), (7, 2e-3), (300, 1e-3)])
def test_same_values_as_the_pruning_fine_tune(steps: int, lr: float) -> None:
    for step in range(steps):  # pi*step/steps vs pi*(step/steps): equal up to float rounding
        assert warmup_cosine_lr(step, steps, lr) == pytest.approx(_prune_lr(step, steps, lr), rel=1e-14, abs=0)


def test_shape_warm_up_peak_and_floor() -> None:
    assert warmup_cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert warmup_cosine_lr(9, 100, 1.0, 10) == 1.0
    assert warmup_cosine_lr(10, 100, 1.0, 10) == 1.0
    assert warmup_cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.05)
    assert warmup_cosine_lr(500, 100, 1.0, 10, floor=0.2) == pytest.approx(0.2)
