"""The five corruptions on real photos (skimage.data): deterministic, severity-monotone, shape and dtype kept."""

import numpy as np
import pytest
from skimage import data

from shared.errors import ConfigError, InputError
from transfer.evaluation.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt

PHOTOS = {"astronaut": data.astronaut()[::2, ::2], "coffee": data.coffee()[::2, ::2]}  # (256, 256, 3), (200, 300, 3)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_the_same_seed_and_file_give_the_same_pixels(name):
    image = PHOTOS["coffee"]
    for severity in SEVERITIES:
        a = corrupt(image, name, severity, seed=3, file_name="val/1.jpg")
        b = corrupt(image.copy(), name, severity, seed=3, file_name="val/1.jpg")
        assert np.array_equal(a, b), (name, severity)


def test_the_noise_changes_with_the_seed_and_the_image_name_but_not_between_runs():
    image = PHOTOS["astronaut"]
    base = corrupt(image, "gaussian_noise", 2, seed=0, file_name="a.jpg")
    assert not np.array_equal(base, corrupt(image, "gaussian_noise", 2, seed=1, file_name="a.jpg"))
    assert not np.array_equal(base, corrupt(image, "gaussian_noise", 2, seed=0, file_name="b.jpg"))
    # crc32-seeded, not hash() (salted per process): these pixels are the same in every run and on every machine
    assert base[0, :3].tolist() == [[126, 160, 180], [107, 0, 43], [28, 107, 111]]


@pytest.mark.parametrize("photo", list(PHOTOS))
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_higher_severity_moves_the_pixels_further_from_the_clean_image(name, photo):
    image = PHOTOS[photo]
    diffs = [float(np.abs(corrupt(image, name, s).astype(np.int16) - image).mean()) for s in SEVERITIES]
    assert diffs[0] > 0.5, f"{name} severity 1 hardly changes {photo}: {diffs}"
    assert diffs[0] < diffs[1] < diffs[2], f"{name} on {photo}: mean abs difference {diffs}"


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_and_dtype_are_kept_and_the_input_is_not_modified(name):
    image = PHOTOS["coffee"]
    before = image.copy()
    out = corrupt(image, name, 3, file_name="x")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, before)


def test_brightness_keeps_the_hue_and_contrast_keeps_the_channel_means():
    image = PHOTOS["coffee"].astype(float)
    bright = corrupt(PHOTOS["coffee"], "brightness", 1).astype(float)
    assert bright.mean() > image.mean() + 10
    # pixels whose value rises unclipped keep their channel ratios (hue and saturation)
    value = image.max(axis=2)
    unclipped = (value + 0.1 * 255 < 250) & (image.min(axis=2) > 40)
    assert unclipped.sum() > 1000
    ratio = image[unclipped] / value[unclipped][:, None]
    bright_ratio = bright[unclipped] / bright.max(axis=2)[unclipped][:, None]
    assert np.abs(bright_ratio - ratio).max() < 0.05
    flat = corrupt(PHOTOS["coffee"], "contrast", 3).astype(float)
    assert (flat.std(axis=(0, 1)) < 0.1 * image.std(axis=(0, 1))).all()
    assert flat.mean(axis=(0, 1)) == pytest.approx(image.mean(axis=(0, 1)), abs=1.0)


def test_unknown_names_severities_and_images_are_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="'fog'.*gaussian_noise, gaussian_blur, jpeg, brightness, contrast"):
        corrupt(PHOTOS["coffee"], "fog", 1)
    with pytest.raises(ConfigError, match="'snow'.*choose from"):
        check_corruptions(["jpeg", "snow"])
    with pytest.raises(ConfigError, match="severity 4; choose from 1, 2, 3"):
        corrupt(PHOTOS["coffee"], "jpeg", 4)
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8.*float64"):
        corrupt(PHOTOS["coffee"].astype(float), "jpeg", 1)
    assert check_corruptions(["contrast", "jpeg"]) == ("jpeg", "contrast")  # the table's order
