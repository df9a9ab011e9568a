"""Linear CKA (Kornblith et al., 2019): how similar each variant's contract maps are to the reference's."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.errors import InputError
from transfer.report.section import Missing, Section, png_bytes, pyplot


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centered kernel alignment of two representations of the same N examples.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with the linear kernels ``K = X Xᵀ``,
    ``L = Y Yᵀ`` of the centered features; computed on the ``(N, N)`` Gram matrices, so wide maps
    (``C * H * W`` features) cost little. Invariant to isotropic scaling and orthogonal transforms.

    Args:
        x: ``(N, ...)`` features of N examples (flattened after the first axis).
        y: ``(N, ...)`` features of the same examples; the feature sizes may differ.

    Returns:
        Similarity in [0, 1]; 1 for identical (or rotated / scaled) features, 0 when either is constant.

    Raises:
        InputError: If ``x`` and ``y`` hold different numbers of examples, or fewer than 2.
    """
    if len(x) != len(y) or len(x) < 2:
        raise InputError(f"linear_cka needs the same N >= 2 examples in both, got {len(x)} and {len(y)}")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    x, y = x - x.mean(0), y - y.mean(0)  # (N, D): centering the features centers the Gram matrices
    k, m = x @ x.T, y @ y.T  # (N, N)
    hsic, norm = float((k * m).sum()), float(np.sqrt((k * k).sum() * (m * m).sum()))
    return hsic / norm if norm > 0 else 0.0


def similarity_data(features: Mapping[str, Mapping[str, np.ndarray]], reference: str) -> dict[str, dict[str, float]]:
    """``{variant: {level: CKA with the reference's map}}`` for every variant with features."""
    ref = features.get(reference, {})
    return {name: {level: linear_cka(maps[level], ref[level]) for level in ref if level in maps}
            for name, maps in features.items() if ref}


def similarity_section(features: Mapping[str, Mapping[str, np.ndarray]], reference: str) -> Section:
    """Grouped bars: the CKA of every variant's p3/p4/p5 with the reference's, on the same images.

    Args:
        features: Variant -> level -> ``(N, C, H, W)`` maps of the same N validation images.
        reference: The variant compared with.
    """
    data = similarity_data(features, reference)
    n = len(next(iter(features.get(reference, {}).values()), ()))
    caption = (f"Linear CKA of every variant's contract maps with the reference's on {n} validation images "
               "(onnxruntime); 1 = the same representation up to rotation and scale.")
    if not data:
        return Section("similarity", "Feature similarity to the reference", caption, data=data,
                       missing=(Missing("features of the reference on validation images", "a validation split "
                                        "for a head (`polyhead train`) and trunk/reference/model.onnx"),))
    names, levels = list(data), list(next(iter(data.values())))
    width = 0.8 / len(levels)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    for i, level in enumerate(levels):
        xs = np.arange(len(names)) + (i - (len(levels) - 1) / 2) * width
        values = [data[name].get(level, np.nan) for name in names]
        ax.bar(xs, values, width, label=level)
        for x, v in zip(xs, values):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel="linear CKA with the reference", ylim=(0, 1.1))
    ax.legend(title="level")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return Section("similarity", "Feature similarity to the reference", caption,
                   (("similarity.png", png_bytes(fig)),), data)
