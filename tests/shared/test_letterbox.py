import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import InputError
from shared.letterbox import LetterboxInfo, letterbox


def test_landscape_image_is_scaled_to_width_and_centred_vertically():
    image = np.full((50, 100, 3), 200, dtype=np.uint8)
    canvas, info = letterbox(image, 64)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
    assert info == LetterboxInfo(scale=0.64, pad_x=0, pad_y=16, orig_w=100, orig_h=50)
    assert (canvas[:16] == 114).all() and (canvas[48:] == 114).all()
    assert (canvas[16:48] == 200).all()


def test_portrait_image_is_centred_horizontally_with_custom_pad():
    image = np.zeros((200, 100, 3), dtype=np.uint8)
    canvas, info = letterbox(image, 100, pad_value=0)
    assert (info.pad_x, info.pad_y, info.scale) == (25, 0, 0.5)
    assert canvas.shape == (100, 100, 3)


def test_square_image_of_the_right_size_is_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    canvas, info = letterbox(image, 32)
    assert np.array_equal(canvas, image)
    assert (info.scale, info.pad_x, info.pad_y) == (1.0, 0, 0)


@settings(max_examples=50, deadline=None)
@given(
    w=st.integers(1, 400),
    h=st.integers(1, 400),
    size=st.integers(16, 512),
    fr=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_round_trip_to_original_of_to_letterboxed_is_identity(w, h, size, fr):
    _, info = letterbox(np.zeros((h, w, 3), np.uint8), size)
    x1, x2 = sorted((fr[0] * w, fr[1] * w))
    y1, y2 = sorted((fr[2] * h, fr[3] * h))
    boxes = np.array([[x1, y1, x2, y2]], dtype=np.float32)
    back = info.to_original(info.to_letterboxed(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-3 * max(w, h))


def test_letterboxed_boxes_land_on_the_image_content():
    image = np.zeros((60, 120, 3), np.uint8)
    image[10:30, 40:80] = 255
    canvas, info = letterbox(image, 240)
    x1, y1, x2, y2 = info.to_letterboxed(np.array([[40, 10, 80, 30]], np.float32))[0]
    assert canvas[int(y1) + 2 : int(y2) - 2, int(x1) + 2 : int(x2) - 2].min() == 255


def test_to_original_clips_to_the_image():
    _, info = letterbox(np.zeros((50, 100, 3), np.uint8), 100)
    out = info.to_original(np.array([[-10, -10, 120, 120]], np.float32))
    np.testing.assert_allclose(out, [[0, 0, 100, 50]])


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ([[[0, 0, 0]]], "numpy array"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), "[H, W, 3]"),
        (np.zeros((3, 8, 8), np.uint8), "transpose"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_bad_images_raise_input_error_naming_the_problem(image, needle):
    with pytest.raises(InputError, match=None) as err:
        letterbox(image, 32)
    assert needle in str(err.value)
    assert isinstance(err.value, TypeError)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_size_raises_input_error(size):
    with pytest.raises(InputError, match="size"):
        letterbox(np.zeros((8, 8, 3), np.uint8), size)


def test_bad_boxes_raise_input_error():
    _, info = letterbox(np.zeros((8, 8, 3), np.uint8), 16)
    with pytest.raises(InputError, match=r"\[N, 4\]"):
        info.to_original(np.zeros((3,), np.float32))
    with pytest.raises(InputError, match="numpy"):
        info.to_letterboxed([[0, 0, 1, 1]])
