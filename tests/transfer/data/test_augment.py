import numpy as np
import pytest

from shared.errors import ConfigError, InputError
from transfer.data.augment import Augment, apply_augment, hflip

S = 128


def _scene(rng):
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    xy = rng.uniform(0, S - 20, (6, 2))
    wh = rng.uniform(4, 60, (6, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, S)], axis=1).astype(np.float32)
    return image, boxes, np.arange(6, dtype=np.int64)


def test_hflip_mirrors_image_and_boxes():
    image = np.zeros((S, S, 3), np.uint8)
    image[10:20, 5:25] = 255
    out, boxes = hflip(image, np.array([[5, 10, 25, 20]], np.float32))
    np.testing.assert_array_equal(boxes, [[S - 25, 10, S - 5, 20]])
    assert out[10:20, S - 25 : S - 5].min() == 255 and out.sum() == image.sum()


def test_always_flip_without_zoom_or_jitter_is_a_pure_mirror():
    cfg = Augment(hflip_prob=1.0, scale_range=(1.0, 1.0), color_jitter=0.0)
    image, boxes, labels = _scene(np.random.default_rng(0))
    out, out_boxes, out_labels = apply_augment(cfg, image, boxes, labels, np.random.default_rng(1))
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_allclose(out_boxes[:, [0, 2]], S - boxes[:, [2, 0]], atol=1e-4)
    np.testing.assert_array_equal(out_labels, labels)


@pytest.mark.parametrize("zoom", [0.6, 1.4])
def test_zoomed_boxes_still_cover_their_object(zoom):
    image = np.zeros((S, S, 3), np.uint8)
    image[40:80, 30:70] = 255
    cfg = Augment(hflip_prob=0.0, scale_range=(zoom, zoom), color_jitter=0.0, pad_value=0)
    box = np.array([[30, 40, 70, 80]], np.float32)
    for seed in range(5):
        out, b, lab = apply_augment(cfg, image, box, np.array([7]), np.random.default_rng(seed))
        if len(b) == 0:
            continue
        x1, y1, x2, y2 = b[0]
        inner = out[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
        assert inner.size and inner.min() > 200
        assert lab.tolist() == [7]


def test_boxes_stay_in_canvas_and_are_not_degenerate():
    cfg = Augment(scale_range=(0.5, 2.0))
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image, boxes, labels = _scene(rng)
        out, b, lab = apply_augment(cfg, image, boxes, labels, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert b.dtype == np.float32 and b.shape == (len(lab), 4)
        assert (b >= 0).all() and (b <= S).all()
        assert ((b[:, 2] - b[:, 0]) >= cfg.min_box_size).all()
        assert ((b[:, 3] - b[:, 1]) >= cfg.min_box_size).all()


def test_mostly_cropped_boxes_are_dropped():
    cfg = Augment(hflip_prob=0.0, scale_range=(2.0, 2.0), color_jitter=0.0)
    boxes = np.array([[0, 0, 10, 10], [54, 54, 74, 74], [50, 50, 60, 60]], np.float32)
    # offset draws 0 -> the 2x zoom keeps the top-left quarter; box 1 keeps only 25 % of its area.
    labels = np.array([0, 1, 2])
    _, b, lab = apply_augment(cfg, np.zeros((S, S, 3), np.uint8), boxes, labels, _FixedRng(0.0))
    assert lab.tolist() == [0, 2]
    np.testing.assert_allclose(b, [[0, 0, 20, 20], [100, 100, 120, 120]])


class _FixedRng:
    """Stand-in generator whose draws are all at the low end of their ranges."""

    def __init__(self, u):
        self.u = u

    def random(self, size=None):
        return self.u if size is None else np.full(size, self.u)

    def uniform(self, lo, hi, size=None):
        return lo if size is None else np.full(size, lo, dtype=float)


def test_same_generator_state_gives_identical_output_and_different_seed_differs():
    cfg = Augment()
    image, boxes, labels = _scene(np.random.default_rng(3))
    a = apply_augment(cfg, image, boxes, labels, np.random.default_rng(11))
    b = apply_augment(cfg, image, boxes, labels, np.random.default_rng(11))
    c = apply_augment(cfg, image, boxes, labels, np.random.default_rng(12))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_color_jitter_changes_pixels_but_not_boxes():
    cfg = Augment(hflip_prob=0.0, scale_range=(1.0, 1.0), color_jitter=0.5)
    image, boxes, labels = _scene(np.random.default_rng(5))
    out, b, _ = apply_augment(cfg, image, boxes, labels, np.random.default_rng(0))
    assert not np.array_equal(out, image)
    np.testing.assert_allclose(b, boxes, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [{"hflip_prob": 1.5}, {"scale_range": (1.2, 0.8)}, {"scale_range": (0.0, 1.0)}, {"color_jitter": 1.0}],
)
def test_invalid_config_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        Augment(**kwargs)


def test_bad_inputs_raise_input_error():
    cfg, rng = Augment(), np.random.default_rng(0)
    img = np.zeros((S, S, 3), np.uint8)
    with pytest.raises(InputError, match="uint8"):
        apply_augment(cfg, img.astype(np.float32), np.zeros((0, 4)), np.zeros(0), rng)
    with pytest.raises(InputError, match=r"\[N, 4\]"):
        apply_augment(cfg, img, np.zeros((2, 5)), np.zeros(2), rng)
    with pytest.raises(InputError, match="labels"):
        apply_augment(cfg, img, np.zeros((2, 4)), np.zeros(3), rng)
