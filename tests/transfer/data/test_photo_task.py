"""The real-photo task: real pixels of scikit-image's photos, valid COCO with quirks, reproducible."""

import numpy as np
import pytest
from PIL import Image

from serving.cli.main import main as cli_main
from shared.errors import ConfigError
from transfer.data.coco import load_coco
from transfer.data.datasets import read_rgb
from transfer.data.photo_task import CATEGORY_IDS, CLASSES, SOURCES, _photo, generate_photo_task


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return generate_photo_task(tmp_path_factory.mktemp("photos"), num_train=24, num_val=8, image_size=160)


def test_it_loads_as_valid_coco_with_its_own_category_ids(photos):
    train = load_coco(photos.train_json, photos.images_dir)
    assert train.name == "photos" and len(train.images) == 24
    assert dict(train.categories) == {CATEGORY_IDS[c]: c for c in CLASSES}
    assert sorted(CATEGORY_IDS.values()) != list(range(1, len(CLASSES) + 1))  # not 1..K, like real datasets
    assert all(im.file_name.startswith("photos/train/") for im in train.images.values())  # a sub-folder
    assert photos.num_objects > 24


def test_every_box_lies_inside_its_image_and_holds_the_object_pixels(photos):
    import json

    data = json.loads(photos.val_json.read_text())
    size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    assert data["annotations"], "no objects in the val split"
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = size[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H and w >= 8 and h >= 8
        assert a["area"] == pytest.approx(w * h)


def test_objects_are_real_photo_pixels_not_paintings(tmp_path):
    # A lone cat's region correlates with the cat photo resized to it (flipped or not; its box jitters 6 %).
    summary = generate_photo_task(tmp_path, num_train=60, num_val=0, image_size=160, seed=3)
    import json

    data = json.loads(summary.train_json.read_text())
    per_image = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    lone = [anns[0] for anns in per_image.values() if len(anns) == 1]
    cat = next(a for a in lone if a["category_id"] == CATEGORY_IDS["cat"])
    image = next(im for im in data["images"] if im["id"] == cat["image_id"])
    pixels = read_rgb(summary.images_dir / image["file_name"]).astype(np.float64)
    x, y, w, h = (int(v) for v in cat["bbox"])
    region = pixels[y : y + h, x : x + w].mean(axis=2)

    def likeness(cls: str) -> float:
        name, box = SOURCES[cls][0]
        source = np.asarray(Image.fromarray(_photo(name)).crop(box).resize((w, h))).mean(axis=2)
        return max(np.corrcoef(region.ravel(), s.ravel())[0, 1] for s in (source, source[:, ::-1]))

    cat, others = likeness("cat"), max(likeness(c) for c in CLASSES if c != "cat")
    assert cat > 0.5 and cat > others + 0.2, f"the cat region is not the cat photo (r={cat:.2f} vs {others:.2f})"


def test_same_seed_same_bytes_and_some_scenes_are_empty(tmp_path):
    a = generate_photo_task(tmp_path / "a", num_train=30, num_val=0, image_size=128, seed=1)
    b = generate_photo_task(tmp_path / "b", num_train=30, num_val=0, image_size=128, seed=1)
    assert a.train_json.read_bytes() == b.train_json.read_bytes()
    files = sorted(p.relative_to(a.images_dir) for p in a.images_dir.rglob("*.jpg"))
    assert all((a.images_dir / f).read_bytes() == (b.images_dir / f).read_bytes() for f in files)
    import json

    data = json.loads(a.train_json.read_text())
    with_objects = {ann["image_id"] for ann in data["annotations"]}
    assert 0 < len(data["images"]) - len(with_objects) < 15  # ~10 % true negatives


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match="image_size must be >= 96"):
        generate_photo_task(tmp_path, image_size=64)
    with pytest.raises(ConfigError, match="num_train >= 1"):
        generate_photo_task(tmp_path, num_train=0)


def test_the_command_line_writes_it(tmp_path, capsys):
    assert cli_main(["data", "photos", "--out", str(tmp_path), "--num-train", "3", "--num-val", "2",
                     "--image-size", "128"]) == 0
    assert "wrote task 'photos': 3 train / 2 val images" in capsys.readouterr().out
    assert len(load_coco(tmp_path / "photos" / "val.json", tmp_path / "images").images) == 2
