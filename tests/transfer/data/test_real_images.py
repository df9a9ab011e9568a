"""Real photographs (scikit-image's) in every file mode and orientation, under a quirky COCO file."""

import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from serving.cli.main import main as cli_main
from shared.errors import DataError
from transfer.data.coco import DataWarning, LoadFixes, load_coco
from transfer.data.datasets import MultiTaskDataset
from transfer.data.images import read_header, read_rgb

ASTRONAUT = photos.astronaut()[:, :384]  # (512, 384, 3): not square, so a rotation changes the size
CHELSEA = photos.chelsea()  # (300, 451, 3)
COFFEE = photos.coffee()  # (400, 600, 3)
CAMERA = photos.camera()  # (512, 512) grayscale


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return exif


def _png16(path: Path, a: np.ndarray) -> None:
    """Write a 16-bit grayscale ([H, W]) or RGB ([H, W, 3]) PNG (PIL cannot write 16-bit RGB)."""
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _coffee_palette() -> Image.Image:
    return Image.fromarray(COFFEE).quantize(64, dither=Image.Dither.NONE)


_NOISE = np.random.default_rng(0).integers(0, 128, CAMERA.shape)  # below half a step of 257: rounds away
CAMERA16 = np.minimum(CAMERA.astype(np.int64) * 257 + _NOISE, 65535).astype(np.uint16)
CHELSEA48 = np.minimum(CHELSEA.astype(np.int64) * 257 + 100, 65535).astype(np.uint16)


def _write_all(root: Path) -> None:
    for sub in ("street", "lossless", "gray", "alpha", "palette", "deep", "print"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(ASTRONAUT).save(root / "street/astronaut_o6.jpg", exif=_exif(6), quality=95)
    Image.fromarray(CHELSEA).save(root / "street/chelsea_o8.jpg", exif=_exif(8), quality=95)
    Image.fromarray(ASTRONAUT).save(root / "lossless/astronaut_o6.png", exif=_exif(6))
    Image.fromarray(CAMERA).save(root / "gray/camera.jpg", quality=95)
    alpha = np.linspace(0, 255, COFFEE.shape[1]).astype(np.uint8)[None].repeat(COFFEE.shape[0], 0)
    Image.fromarray(np.dstack([COFFEE, alpha])).save(root / "alpha/coffee_rgba.png")
    _coffee_palette().save(root / "palette/coffee_p.png")
    _coffee_palette().save(root / "palette/coffee_p_transparent.png", transparency=0)
    _png16(root / "deep/camera16.png", CAMERA16)
    _png16(root / "deep/chelsea48.png", CHELSEA48)
    Image.fromarray(CHELSEA).convert("CMYK").save(root / "print/chelsea_cmyk.jpg", quality=95)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "images"
    _write_all(root)
    return root


def _raw(path: Path) -> np.ndarray:
    """Stored pixels, orientation ignored."""
    with Image.open(path) as pil:
        return np.asarray(pil.convert("RGB"))


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


# ---- decoding ------------------------------------------------------------------------------------
def test_exif_rotated_files_read_in_display_orientation(images_dir):
    png = read_rgb(images_dir / "lossless/astronaut_o6.png")
    np.testing.assert_array_equal(png, np.rot90(ASTRONAUT, -1))  # 6: turn 90 degrees clockwise
    jpg6 = read_rgb(images_dir / "street/astronaut_o6.jpg")
    assert jpg6.shape == (384, 512, 3)
    np.testing.assert_array_equal(jpg6, np.rot90(_raw(images_dir / "street/astronaut_o6.jpg"), -1))
    assert _close(jpg6, np.rot90(ASTRONAUT, -1)) < 4  # still the photo (JPEG loss only)
    jpg8 = read_rgb(images_dir / "street/chelsea_o8.jpg")
    assert jpg8.shape == (451, 300, 3)
    np.testing.assert_array_equal(jpg8, np.rot90(_raw(images_dir / "street/chelsea_o8.jpg"), 1))  # 8: anticlockwise
    assert _close(jpg8, np.rot90(CHELSEA, 1)) < 4


def test_headers_give_stored_and_displayed_sizes(images_dir):
    header = read_header(images_dir / "street/astronaut_o6.jpg")
    assert (header.width, header.height, header.orientation) == (384, 512, 6) and header.oriented == (512, 384)
    assert read_header(images_dir / "lossless/astronaut_o6.png").oriented == (512, 384)
    assert read_header(images_dir / "gray/camera.jpg") == (512, 512, 1)


def _expect_gray_camera(out):
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert _close(out[..., 0], CAMERA) < 3


MODES = {  # file, its PIL mode, check of the decoded [H, W, 3] uint8
    "grayscale jpeg": ("gray/camera.jpg", "L", _expect_gray_camera),
    "rgba png, alpha dropped": ("alpha/coffee_rgba.png", "RGBA",
                                lambda out: np.testing.assert_array_equal(out, COFFEE)),
    "palette png": ("palette/coffee_p.png", "P", lambda out: (
        np.testing.assert_array_equal(out, np.asarray(_coffee_palette().convert("RGB"))),
        _close(out, COFFEE) < 12 or pytest.fail("palette colours far from the photo"))),
    "palette png with transparency": ("palette/coffee_p_transparent.png", "P", lambda out: (
        np.testing.assert_array_equal(out, np.asarray(_coffee_palette().convert("RGB"))))),
    "16-bit grayscale png, scaled": ("deep/camera16.png", "I;16", lambda out: (
        np.testing.assert_array_equal(out[..., 0], CAMERA), np.testing.assert_array_equal(out[..., 2], CAMERA))),
    "16-bit rgb png": ("deep/chelsea48.png", "RGB", lambda out: (
        np.abs(out.astype(int) - CHELSEA).max() <= 1 or pytest.fail("48-bit colours not scaled"))),
    "cmyk jpeg": ("print/chelsea_cmyk.jpg", "CMYK",
                  lambda out: _close(out, CHELSEA) < 8 or pytest.fail("CMYK colours wrong")),
}


@pytest.mark.parametrize("case", sorted(MODES))
def test_every_file_mode_reads_as_uint8_rgb(images_dir, case):
    name, mode, check = MODES[case]
    with Image.open(images_dir / name) as pil:
        assert pil.mode == mode  # the file really is in that mode
        w, h = pil.size
    out = read_rgb(images_dir / name)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    check(out)


def test_16_bit_values_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    _png16(tmp_path / "ramp.png", ramp)
    out = read_rgb(tmp_path / "ramp.png")[..., 0]
    np.testing.assert_array_equal(out, np.rint(ramp / 257).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 256


# ---- a quirky COCO file over the photos ----------------------------------------------------------
def _quirky() -> dict:
    img = [("street/astronaut_o6.jpg", 384, 512),  # declares the stored (sensor) size: corrected
           ("street/chelsea_o8.jpg", 300, 451), ("gray/camera.jpg", 512, 512), ("alpha/coffee_rgba.png", 600, 400),
           ("palette/coffee_p.png", 600, 400), ("deep/camera16.png", 512, 512), ("print/chelsea_cmyk.jpg", 451, 300)]
    anns = [
        (101, 1, 90, [100, 50, 200, 300], 0),
        (102, 2, 17, [49.5, 100, 252, 200], 0),  # 1.5 px past the right border: clipped
        (103, 2, 17, [0, 0, 100, 100], 1),  # crowd region
        (104, 4, 3, [10, 10, 0, 50], 0),  # zero width: dropped
        (105, 4, 3, [700, 10, 20, 20], 0),  # entirely outside: dropped
        (106, 5, 3, [-3, -2, 100, 80], 0),  # above-left: clipped
        (107, 6, 90, [20, 20, 40, 40], 0),
        (108, 7, 17, [100, 50, 200, 200], 0),
    ]
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(img, 1)],
        "annotations": [{"id": a, "image_id": i, "category_id": c, "bbox": b, "iscrowd": z, "area": 1.0}
                        for a, i, c, b, z in anns],
        "categories": [{"id": 90, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 3, "name": "cup"}],
    }


def _write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_quirky_file_loads_with_one_line_counting_every_fix(tmp_path, images_dir):
    with pytest.warns(DataWarning) as caught:
        task = load_coco(_write(tmp_path / "photos" / "train.json", _quirky()), images_dir)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"{tmp_path}/photos/train.json: 2 boxes clipped to their image, 2 degenerate boxes dropped, "
        "1 image declared unrotated (EXIF-oriented size used) (annotation ids 102, 106, 104, 105); "
        "strict=True (--strict) refuses such files"
    )
    assert task.name == "photos" and task.fixes == LoadFixes(reoriented=(1,), clipped=(102, 106), dropped=(104, 105))
    assert task.images[1] == ("street/astronaut_o6.jpg", 512, 384)  # the displayed size
    assert task.categories == ((3, "cup"), (17, "cat"), (90, "person"))
    assert task.cat_id_to_label == {3: 0, 17: 1, 90: 2}
    boxes, labels = task.targets(2)
    np.testing.assert_allclose(boxes, [[49.5, 100, 300, 300]])  # clipped to chelsea's 300 px width
    assert labels.tolist() == [1] and [a.id for a in task.crowd[2]] == [103]
    np.testing.assert_allclose(task.targets(5)[0], [[0, 0, 97, 78]])
    assert task.targets(3)[0].shape == (0, 4) and task.targets(4)[0].shape == (0, 4)  # no objects / all dropped


def test_a_split_loaded_twice_prints_its_line_once(tmp_path, images_dir):
    path = _write(tmp_path / "val.json", _quirky())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action, as in the CLI
        load_coco(path, images_dir)
        load_coco(path, images_dir)  # what `polyhead train` does: check first, then train
    assert [type(w.message) for w in caught] == [DataWarning]


def test_dataset_items_agree_with_the_loaded_displayed_sizes(tmp_path, images_dir):
    with pytest.warns(DataWarning):
        task = load_coco(_write(tmp_path / "t.json", _quirky()), images_dir)
    ds = MultiTaskDataset({"photos": task}, images_dir, 96)
    assert len(ds) == 7
    for i in range(len(ds)):
        image, targets, meta = ds[i]
        im = task.images[meta["image_ids"]["photos"]]
        assert (meta["orig_w"], meta["orig_h"]) == (im.width, im.height), im.file_name
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
        boxes = targets["photos"]["boxes"]
        assert bool((boxes >= 0).all() and (boxes <= 96).all())


def test_strict_refuses_the_unrotated_size_then_the_boxes(tmp_path, images_dir):
    doc = _quirky()
    with pytest.raises(DataError) as err:
        load_coco(_write(tmp_path / "train.json", doc), images_dir, strict=True)
    msg = str(err.value)
    assert "train.json: 1 image(s) declare their unrotated size" in msg
    assert "id=1 'street/astronaut_o6.jpg' declared 384x512, displayed 512x384" in msg and "--strict" in msg
    doc["images"][0].update(width=512, height=384)
    with pytest.raises(DataError) as err:
        load_coco(_write(tmp_path / "train.json", doc), images_dir, strict=True)
    msg = str(err.value)
    assert "train.json: 4 annotation(s) do not fit their image" in msg
    assert "id=102 bbox [49.5, 100, 252, 200] sticks out of 'street/chelsea_o8.jpg' (300x451)" in msg
    assert "id=104 bbox [10, 10, 0, 50] has no area inside 'alpha/coffee_rgba.png' (600x400)" in msg
    assert "id=105" in msg and "id=106" in msg and "[x, y, width, height]" in msg


def test_wrong_declared_size_names_both_sizes(tmp_path, images_dir):
    doc = _quirky()
    doc["images"][0].update(width=500, height=500)
    with pytest.raises(DataError, match=r"id=1 'street/astronaut_o6.jpg' declared 500x500, file is 512x384 "
                                        r"\(stored 384x512, EXIF orientation 6\); fix width/height"):
        load_coco(_write(tmp_path / "train.json", doc), images_dir)


def test_missing_and_unreadable_files_are_reported_together(tmp_path, images_dir):
    bad = tmp_path / "images"
    shutil.copytree(images_dir, bad)
    (bad / "print/chelsea_cmyk.jpg").unlink()  # images id 7
    (bad / "sub").mkdir()
    (bad / "sub/empty.jpg").write_bytes(b"")
    (bad / "sub/text.png").write_text("not an image")
    doc = _quirky()
    extra = ["sub/empty.jpg", "sub/text.png", "gone/a.jpg", "gone/b.jpg", "gone/c.jpg"]
    doc["images"] += [{"id": i, "file_name": f, "width": 5, "height": 5} for i, f in enumerate(extra, 8)]
    with pytest.raises(DataError) as err:
        load_coco(_write(tmp_path / "train.json", doc), bad)
    msg = str(err.value)
    assert "train.json: 6 of 12 image file(s) missing or unreadable under" in msg
    assert "id=7 'print/chelsea_cmyk.jpg' (missing)" in msg and "id=8 'sub/empty.jpg' (" in msg
    assert "id=9 'sub/text.png' (cannot identify image file" in msg and "and 1 more" in msg
    assert "check images_dir and the file_name entries" in msg


# ---- --strict on the command line ----------------------------------------------------------------
def _boxes_fixed_only(doc: dict) -> dict:
    doc["images"][0].update(width=512, height=384)
    return doc


def test_cli_eval_and_add_task_strict_refuse_and_write_nothing(tmp_path, images_dir, capsys):
    val = _write(tmp_path / "val.json", _boxes_fixed_only(_quirky()))
    work = tmp_path / "work"
    work.mkdir()
    assert cli_main(["eval", "--workdir", str(work), "--task", "photos", "--val-json", str(val),
                     "--images", str(images_dir), "--strict"]) == 2
    assert "val.json: 4 annotation(s) do not fit their image" in capsys.readouterr().err
    assert cli_main(["add-task", "--workdir", str(work), "--name", "photos", "--train-json", str(val),
                     "--val-json", str(val), "--images", str(images_dir), "--strict"]) == 2
    assert "do not fit their image" in capsys.readouterr().err and list(work.iterdir()) == []


def test_cli_train_strict_refuses_before_training(tmp_path, images_dir, capsys):
    root = tmp_path / "data"
    _write(root / "photos" / "train.json", _boxes_fixed_only(_quirky()))
    _write(root / "photos" / "val.json", _boxes_fixed_only(_quirky()))
    (root / "images").symlink_to(images_dir)
    config = tmp_path / "polyhead.yaml"
    config.write_text(f"data:\n  root: {root}\n  tasks: [photos]\n")
    work = tmp_path / "work"
    assert cli_main(["train", "--workdir", str(work), "--config", str(config), "--strict"]) == 2
    assert "photos/train.json: 4 annotation(s) do not fit their image" in capsys.readouterr().err
    assert not (work / "checkpoints").exists() or not any((work / "checkpoints").iterdir())
    assert not (work / "polyhead.yaml").exists()  # the config is copied in only once the data passed
