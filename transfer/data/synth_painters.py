"""Object and background painters for the synthetic multi-task scenes (see :mod:`transfer.data.synth`).

Each painter draws one object on a transparent RGBA patch with PIL (2x supersampled, so edges are
anti-aliased) from a ``np.random.Generator``; the same generator state gives the same pixels.
Classes of a family differ by silhouette; colours vary within a class.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Painter = Callable[[np.random.Generator, float], Image.Image]
_SS = 2  # supersampling factor


def hsv(h: float, s: float, v: float) -> RGB:
    """HSV in [0, 1] (hue wraps) -> 8-bit RGB."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def vivid(rng: np.random.Generator) -> RGB:
    """A saturated colour of any hue."""
    return hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.95))


def muted(rng: np.random.Generator) -> RGB:
    """A low-saturation colour for backgrounds."""
    return hsv(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.9))


def _darker(c: RGB, f: float = 0.35) -> RGB:
    return tuple(round(v * f) for v in c)  # type: ignore[return-value]


def _canvas(w: float, h: float) -> tuple[Image.Image, ImageDraw.ImageDraw, float, float]:
    """A transparent supersampled patch; returns (image, draw, W, H) in supersampled pixels."""
    big_w, big_h = max(2, round(w * _SS)), max(2, round(h * _SS))
    img = Image.new("RGBA", (big_w, big_h), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img), float(big_w), float(big_h)


def _finish(img: Image.Image, w: float, h: float) -> Image.Image:
    return img.resize((max(1, round(w)), max(1, round(h))), Image.LANCZOS)


def _regular(cx: float, cy: float, r: float, n: int, start_deg: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(math.radians(start_deg + 360 * k / n)),
            cy + r * math.sin(math.radians(start_deg + 360 * k / n)),
        )
        for k in range(n)
    ]


# ---- signs ---------------------------------------------------------------------------------------
def stop_sign(rng: np.random.Generator, size: float) -> Image.Image:
    """Red octagon with a white rim and a white bar (the 'text')."""
    img, d, w, h = _canvas(size, size)
    red = hsv(rng.uniform(-0.03, 0.03), rng.uniform(0.75, 1.0), rng.uniform(0.6, 0.95))
    c, r = w / 2, w / 2 - 1
    d.polygon(_regular(c, c, r, 8, 22.5), fill=(245, 245, 245, 255))
    d.polygon(_regular(c, c, r * 0.86, 8, 22.5), fill=red + (255,))
    bar_h = w * rng.uniform(0.12, 0.2)
    d.rectangle([c - r * 0.62, c - bar_h / 2, c + r * 0.62, c + bar_h / 2], fill=(250, 250, 250, 255))
    return _finish(img, size, size)


def yield_sign(rng: np.random.Generator, size: float) -> Image.Image:
    """Downward triangle: red/orange rim, white or yellow centre."""
    img, d, w, h = _canvas(size, size * 0.87)
    rim = hsv(rng.uniform(-0.03, 0.08), rng.uniform(0.75, 1.0), rng.uniform(0.6, 0.95))
    inner = (250, 250, 250) if rng.random() < 0.6 else hsv(0.15, rng.uniform(0.5, 0.9), 0.95)
    d.polygon([(0, 0), (w, 0), (w / 2, h)], fill=rim + (255,))
    t = w * 0.13
    d.polygon([(t * 1.7, t), (w - t * 1.7, t), (w / 2, h - t * 2.0)], fill=inner + (255,))
    return _finish(img, size, size * 0.87)


def round_sign(rng: np.random.Generator, size: float) -> Image.Image:
    """Blue or green disc with a white rim and a white arrow pointing up, left or right."""
    img, d, w, h = _canvas(size, size)
    c, r = w / 2, w / 2 - 1
    body = hsv(
        rng.uniform(0.55, 0.64) if rng.random() < 0.7 else rng.uniform(0.3, 0.4),
        rng.uniform(0.7, 1.0),
        rng.uniform(0.5, 0.9),
    )
    d.ellipse([c - r, c - r, c + r, c + r], fill=(245, 245, 245, 255))
    d.ellipse([c - r * 0.86, c - r * 0.86, c + r * 0.86, c + r * 0.86], fill=body + (255,))
    arrow = Image.new("RGBA", img.size, (0, 0, 0, 0))
    s = r * 0.5
    ImageDraw.Draw(arrow).polygon(
        [
            (c, c - s * 1.2),
            (c + s, c),
            (c + s * 0.35, c),
            (c + s * 0.35, c + s * 1.2),
            (c - s * 0.35, c + s * 1.2),
            (c - s * 0.35, c),
            (c - s, c),
        ],
        fill=(250, 250, 250, 255),
    )
    arrow = arrow.rotate(float(rng.choice([0.0, 90.0, -90.0])))
    img.alpha_composite(arrow)
    return _finish(img, size, size)


# ---- vehicles ------------------------------------------------------------------------------------
def _wheel(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(25, 25, 25, 255))
    d.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=(170, 170, 175, 255))


def car(rng: np.random.Generator, size: float) -> Image.Image:
    """Side view: body, cabin with windows, two wheels; width ``size``, height ~0.5 size."""
    aspect = rng.uniform(0.45, 0.55)
    img, d, w, h = _canvas(size, size * aspect)
    body = vivid(rng)
    glass = hsv(0.58, rng.uniform(0.1, 0.35), rng.uniform(0.75, 0.95))
    d.polygon(
        [(w * 0.2, h * 0.4), (w * 0.32, h * 0.04), (w * 0.7, h * 0.04), (w * 0.82, h * 0.4)],
        fill=body + (255,),
    )
    d.polygon(
        [(w * 0.27, h * 0.38), (w * 0.35, h * 0.12), (w * 0.49, h * 0.12), (w * 0.49, h * 0.38)],
        fill=glass + (255,),
    )
    d.polygon(
        [(w * 0.53, h * 0.38), (w * 0.53, h * 0.12), (w * 0.67, h * 0.12), (w * 0.75, h * 0.38)],
        fill=glass + (255,),
    )
    d.rounded_rectangle(
        [0, h * 0.36, w - 1, h * 0.8],
        radius=h * 0.12,
        fill=body + (255,),
        outline=_darker(body) + (255,),
        width=max(1, round(h * 0.03)),
    )
    d.rectangle([w * 0.93, h * 0.45, w - 2, h * 0.55], fill=(255, 230, 120, 255))
    r = h * 0.19
    for fx in (0.21, 0.79):
        _wheel(d, w * fx, h - r - 1, r)
    patch = _finish(img, size, size * aspect)
    return patch.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else patch


def truck(rng: np.random.Generator, size: float) -> Image.Image:
    """Side view: tall cargo box, lower cab with a window, three wheels; height ~0.55 size."""
    aspect = rng.uniform(0.5, 0.6)
    img, d, w, h = _canvas(size, size * aspect)
    cargo = vivid(rng) if rng.random() < 0.6 else hsv(0, 0, rng.uniform(0.75, 0.95))
    cab = vivid(rng)
    d.rectangle(
        [0, 0, w * 0.68, h * 0.76],
        fill=cargo + (255,),
        outline=_darker(cargo) + (255,),
        width=max(1, round(h * 0.03)),
    )
    d.polygon(
        [(w * 0.7, h * 0.22), (w * 0.9, h * 0.22), (w - 1, h * 0.45), (w - 1, h * 0.78), (w * 0.7, h * 0.78)],
        fill=cab + (255,),
    )
    d.polygon(
        [(w * 0.78, h * 0.28), (w * 0.89, h * 0.28), (w * 0.96, h * 0.45), (w * 0.78, h * 0.45)],
        fill=(190, 215, 235, 255),
    )
    d.rectangle([w * 0.02, h * 0.74, w * 0.98, h * 0.82], fill=(40, 40, 45, 255))
    r = h * 0.16
    for fx in (0.12, 0.3, 0.85):
        _wheel(d, w * fx, h - r - 1, r)
    patch = _finish(img, size, size * aspect)
    return patch.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else patch


# ---- people --------------------------------------------------------------------------------------
def person(rng: np.random.Generator, size: float) -> Image.Image:
    """Standing figure: head, torso, arms, legs; height ``size``, width ~0.45 size."""
    aspect = rng.uniform(0.42, 0.5)
    img, d, w, h = _canvas(size * aspect, size)
    skin = hsv(rng.uniform(0.03, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.95))
    shirt, pants = vivid(rng), hsv(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.15, 0.5))
    cx, hr = w / 2, h * 0.1
    d.ellipse([cx - hr, 1, cx + hr, 1 + 2 * hr], fill=skin + (255,))
    d.rounded_rectangle([w * 0.2, h * 0.22, w * 0.8, h * 0.58], radius=w * 0.1, fill=shirt + (255,))
    arm = w * 0.13
    lift = rng.random() < 0.3
    d.rectangle([1, h * 0.24, 1 + arm, h * 0.55], fill=shirt + (255,))
    if lift:
        d.polygon(
            [
                (w - 1 - arm, h * 0.26),
                (w - 1, h * 0.26),
                (w - 1, h * 0.02 + hr),
                (w - 1 - arm, h * 0.02 + hr),
            ],
            fill=shirt + (255,),
        )
    else:
        d.rectangle([w - 1 - arm, h * 0.24, w - 1, h * 0.55], fill=shirt + (255,))
    d.rectangle([w * 0.22, h * 0.56, w * 0.47, h - 1], fill=pants + (255,))
    d.rectangle([w * 0.53, h * 0.56, w * 0.78, h - 1], fill=pants + (255,))
    patch = _finish(img, size * aspect, size)
    return patch.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else patch


# ---- shapes (the task added later) ---------------------------------------------------------------
def star(rng: np.random.Generator, size: float) -> Image.Image:
    """Five-pointed solid star with a dark outline."""
    img, d, w, _ = _canvas(size, size)
    c, r = w / 2, w / 2 - 1
    outer = _regular(c, c, r, 5, -90)
    inner = _regular(c, c, r * rng.uniform(0.4, 0.5), 5, -54)
    pts = [p for pair in zip(outer, inner, strict=True) for p in pair]
    col = vivid(rng)
    d.polygon(pts, fill=col + (255,), outline=_darker(col) + (255,), width=max(1, round(w * 0.03)))
    return _finish(img, size, size)


def cross(rng: np.random.Generator, size: float) -> Image.Image:
    """Plus sign with a dark outline."""
    img, d, w, _ = _canvas(size, size)
    t = w * rng.uniform(0.15, 0.2)
    c = w / 2
    pts = [
        (c - t, 0),
        (c + t, 0),
        (c + t, c - t),
        (w - 1, c - t),
        (w - 1, c + t),
        (c + t, c + t),
        (c + t, w - 1),
        (c - t, w - 1),
        (c - t, c + t),
        (0, c + t),
        (0, c - t),
        (c - t, c - t),
    ]
    col = vivid(rng)
    d.polygon(pts, fill=col + (255,), outline=_darker(col) + (255,), width=max(1, round(w * 0.03)))
    return _finish(img, size, size)


def crescent(rng: np.random.Generator, size: float) -> Image.Image:
    """Crescent moon: a disc minus an offset disc."""
    img, d, w, _ = _canvas(size, size)
    r = w / 2 - 1
    col = vivid(rng)
    d.ellipse(
        [1, 1, 2 * r, 2 * r], fill=col + (255,), outline=_darker(col) + (255,), width=max(1, round(w * 0.03))
    )
    off, r2 = r * rng.uniform(0.55, 0.7), r * 0.85
    d.ellipse([r + off - r2, r - r2 - off * 0.2, r + off + r2, r + r2 - off * 0.2], fill=(0, 0, 0, 0))
    return _finish(img, size, size)


# ---- backgrounds ---------------------------------------------------------------------------------
def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``[size, size, 3]`` uint8 background: gradient, blotches, stripes or tiles, plus clutter lines."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (S, S) each
    c1, c2 = (np.array(muted(rng), np.float32) for _ in range(2))
    kind = rng.integers(4)
    theta = rng.uniform(0, 2 * np.pi)
    proj = xx * np.cos(theta) + yy * np.sin(theta)  # (S, S)
    if kind == 0:  # linear gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == 1:  # smooth blotches
        cells = int(rng.integers(3, 9))
        low = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        t = np.asarray(low.resize((size, size), Image.BICUBIC), np.float32) / 255
    elif kind == 2:  # stripes
        period = rng.uniform(8, 40) / size
        t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
    else:  # tiles
        cell = rng.uniform(16, 48) / size
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2) * rng.uniform(0.5, 1.0)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]  # (S, S, 3)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 7))):  # thin clutter lines
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        d.line([x0, y0, x1, y1], fill=muted(rng), width=int(rng.integers(1, 3)))
    return np.asarray(pil)


PAINTERS: dict[str, tuple[tuple[str, Painter, tuple[float, float]], ...]] = {
    # task -> ((class name, painter, (min, max) longest side in px on a 256 canvas)), ...)
    "signs": (
        ("stop", stop_sign, (18, 72)),
        ("yield", yield_sign, (20, 72)),
        ("round", round_sign, (18, 72)),
    ),
    "vehicles": (("car", car, (36, 110)), ("truck", truck, (40, 110))),
    "people": (("person", person, (32, 100)),),
    "shapes": (("star", star, (20, 72)), ("cross", cross, (18, 64)), ("crescent", crescent, (20, 72))),
}
