"""Linear CKA: 1 for the same representation up to rotation and scale, near 0 for unrelated ones."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import InputError
from transfer.report.cka import linear_cka


def test_cka_is_one_for_a_rotated_and_scaled_copy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 3, 3))  # (N, C, H, W)
    rotation, _ = np.linalg.qr(rng.normal(size=(72, 72)))
    y = 5.0 * x.reshape(40, -1) @ rotation + 3.0  # rotated, scaled and shifted
    assert linear_cka(x, y) == pytest.approx(1.0)


def test_cka_of_unrelated_features_is_small_and_grows_with_shared_signal() -> None:
    rng = np.random.default_rng(1)
    x, noise = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    unrelated, half, mostly = (linear_cka(x, noise), linear_cka(x, x + 1.0 * noise), linear_cka(x, x + 0.2 * noise))
    assert unrelated < 0.2 < half < mostly < 1.0


def test_cka_of_a_constant_map_is_zero() -> None:
    assert linear_cka(np.ones((10, 4)), np.random.default_rng(2).normal(size=(10, 4))) == 0.0


def test_cka_refuses_different_example_counts() -> None:
    with pytest.raises(InputError, match="same N >= 2 examples"):
        linear_cka(np.zeros((10, 4)), np.zeros((9, 4)))
