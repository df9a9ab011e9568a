import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from shared.errors import DataError
from transfer.data.augment import Augment
from transfer.data.coco import CocoTask, DataWarning, LoadFixes, load_coco
from transfer.data.datasets import ImageFolderDataset, MultiTaskDataset, collate_multitask

SIZES = {"a.png": (40, 30), "b.png": (30, 60), "c.png": (50, 50)}


@pytest.fixture()
def images_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name, (w, h) in SIZES.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(d / name)
    return d


def _valid():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 30, "height": 60},
            {"id": 3, "file_name": "c.png", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12], "iscrowd": 0},
            {"id": 42, "image_id": 1, "category_id": 3, "bbox": [20, 5, 19, 20]},
            {"id": 43, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 60], "iscrowd": 1},
            {"id": 44, "image_id": 3, "category_id": 7, "bbox": [10, 10, 5, 5]},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


def _write(tmp_path, data, name="task.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _expect(tmp_path, images_dir, data, *needles, **kwargs):
    path = _write(tmp_path, data, "broken.json")
    with pytest.raises(DataError) as err:
        load_coco(path, images_dir, **kwargs)
    msg = str(err.value)
    assert "broken.json" in msg
    for needle in needles:
        assert needle in msg, msg
    assert isinstance(err.value, ValueError)
    return msg


def test_valid_file_loads_with_sorted_categories_and_contiguous_labels(tmp_path, images_dir):
    task = load_coco(_write(tmp_path, _valid()), images_dir, name="pets")
    assert isinstance(task, CocoTask) and task.name == "pets"
    assert task.categories == ((3, "dog"), (7, "cat"))
    assert task.class_names == ("dog", "cat") and task.num_classes == 2
    assert task.cat_id_to_label == {3: 0, 7: 1} and task.label_to_cat_id == {0: 3, 1: 7}
    assert task.images[2] == ("b.png", 30, 60)
    assert [a.category_id for a in task.annotations[1]] == [7, 3]
    boxes, labels = task.targets(1)
    np.testing.assert_allclose(boxes, [[2, 3, 12, 15], [20, 5, 39, 25]])
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0]


def test_task_name_defaults_to_parent_folder_for_train_json(tmp_path, images_dir):
    (tmp_path / "signs").mkdir()
    assert load_coco(_write(tmp_path / "signs", _valid(), "train.json"), images_dir).name == "signs"
    assert load_coco(_write(tmp_path, _valid(), "mine.json"), images_dir).name == "mine"


def test_crowd_annotations_are_kept_out_of_training_targets(tmp_path, images_dir):
    task = load_coco(_write(tmp_path, _valid()), images_dir)
    assert task.annotations[2] == []
    assert len(task.crowd[2]) == 1 and task.crowd[2][0].bbox == (0, 0, 30, 60)
    boxes, labels = task.targets(2)
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_box_within_one_pixel_tolerance_is_clipped_silently(tmp_path, images_dir, recwarn):
    data = _valid()
    data["annotations"][1]["bbox"] = [20.5, -0.9, 20.4, 30.8]
    task = load_coco(_write(tmp_path, data), images_dir, strict=True)
    np.testing.assert_allclose(task.annotations[1][1].bbox, [20.5, 0, 19.5, 29.9])
    assert task.fixes == LoadFixes() and not recwarn.list


# Boxes that do not fit their image: (bbox of annotation id 42 on a.png 40x30, clipped or None if dropped)
BOX_FIXES = {
    "sticks out right": ([30, 5, 12, 5], [30, 5, 10, 5]),
    "left of image by 1.5 px": ([-1.5, 5, 5, 5], [0, 5, 3.5, 5]),
    "xyxy mistaken for xywh": ([20, 5, 39, 25], [20, 5, 20, 25]),
    "zero width": ([1, 2, 0, 3], None),
    "negative height": ([1, 2, 3, -3], None),
    "entirely outside": ([41, 5, 10, 5], None),
    "touches the border only": ([40, 5, 10, 5], None),
}


@pytest.mark.parametrize("case", sorted(BOX_FIXES))
def test_box_that_does_not_fit_is_clipped_or_dropped_and_counted_and_strict_refuses(tmp_path, images_dir, case):
    given, fitted = BOX_FIXES[case]
    data = _mutate(lambda d: d["annotations"][1].update(bbox=given))
    with pytest.warns(DataWarning) as caught:
        task = load_coco(_write(tmp_path, data, "broken.json"), images_dir)
    [line] = [str(w.message) for w in caught]
    if fitted is None:
        assert task.fixes == LoadFixes(dropped=(42,))
        assert [a.id for a in task.annotations[1]] == [10]
        assert "broken.json: 1 degenerate box dropped (annotation id 42)" in line
    else:
        assert task.fixes == LoadFixes(clipped=(42,))
        np.testing.assert_allclose(task.annotations[1][1].bbox, fitted)
        assert "broken.json: 1 box clipped to their image (annotation id 42)" in line
    assert "--strict" in line
    msg = _expect(tmp_path, images_dir, data, "1 annotation(s) do not fit", "id=42", "a.png", "(40x30)",
                  "[x, y, width, height]", strict=True)
    assert ("has no area inside" if fitted is None else "sticks out of") in msg


def test_not_json_is_rejected(tmp_path, images_dir):
    _expect(tmp_path, images_dir, '{"images": [', "not valid JSON", "line 1")


def test_top_level_list_is_rejected(tmp_path, images_dir):
    _expect(tmp_path, images_dir, "[]", "JSON object", "list")


def test_missing_file_is_rejected(tmp_path, images_dir):
    with pytest.raises(DataError, match="nothere.json"):
        load_coco(tmp_path / "nothere.json", images_dir)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key_is_rejected(tmp_path, images_dir, key):
    data = _valid()
    del data[key]
    _expect(tmp_path, images_dir, data, f"'{key}'")


def _mutate(fn):
    data = copy.deepcopy(_valid())
    fn(data)
    return data


MALFORMED = {
    "annotation missing bbox": (
        lambda d: d["annotations"][1].pop("bbox"),
        ["annotations[1] (id=42)", "bbox"],
    ),
    "image missing width": (lambda d: d["images"][0].pop("width"), ["images[0] (id=1)", "width"]),
    "category missing name": (lambda d: d["categories"][1].pop("name"), ["categories[1] (id=3)", "name"]),
    "entry not an object": (lambda d: d["annotations"].append(5), ["annotations[4]", "JSON object"]),
    "non-numeric bbox": (
        lambda d: d["annotations"][1].update(bbox=["a", 0, 1, 1]),
        ["annotations[1] (id=42)", "4 finite numbers"],
    ),
    "bbox of 3 numbers": (
        lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
        ["annotations[1] (id=42)", "4 finite"],
    ),
    "bbox with bool": (
        lambda d: d["annotations"][1].update(bbox=[1, 2, True, 3]),
        ["annotations[1] (id=42)"],
    ),
    "zero width image": (lambda d: d["images"][1].update(width=0), ["images[1] (id=2)", "width"]),
    "negative height image": (lambda d: d["images"][2].update(height=-5), ["images[2] (id=3)", "height"]),
    "string height image": (lambda d: d["images"][2].update(height="50"), ["images[2] (id=3)", "height"]),
    "unknown category": (
        lambda d: d["annotations"][3].update(category_id=99),
        ["annotations[3] (id=44)", "category_id 99"],
    ),
    "unknown image": (
        lambda d: d["annotations"][3].update(image_id=77),
        ["annotations[3] (id=44)", "image_id 77"],
    ),
    "duplicate image id": (lambda d: d["images"][2].update(id=1), ["images[2] (id=1)", "duplicate image id"]),
    "duplicate file name": (
        lambda d: d["images"][2].update(file_name="a.png"),
        ["images[2] (id=3)", "a.png"],
    ),
    "duplicate annotation id": (
        lambda d: d["annotations"][3].update(id=10),
        ["annotations[3] (id=10)", "duplicate"],
    ),
    "duplicate category id": (
        lambda d: d["categories"][1].update(id=7),
        ["categories[1] (id=7)", "duplicate"],
    ),
    "string category id": (
        lambda d: d["annotations"][3].update(category_id="7"),
        ["annotations[3] (id=44)", "integer"],
    ),
    "bad iscrowd": (lambda d: d["annotations"][3].update(iscrowd=2), ["annotations[3] (id=44)", "iscrowd"]),
    "empty categories": (lambda d: d.update(categories=[]), ["'categories' is empty"]),
    "images not a list": (lambda d: d.update(images={}), ["'images' must be a list"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_entry_raises_data_error_naming_file_and_entry(tmp_path, images_dir, case):
    fn, needles = MALFORMED[case]
    _expect(tmp_path, images_dir, _mutate(fn), *needles)


def test_missing_image_file_is_named(tmp_path, images_dir):
    (images_dir / "b.png").unlink()
    _expect(tmp_path, images_dir, _valid(), "missing", "id=2 'b.png' (missing)")


def test_missing_images_dir_is_rejected(tmp_path):
    _expect(tmp_path, tmp_path / "nope", _valid(), "nope", "does not exist")


def test_corrupt_image_is_caught_at_load_and_a_truncated_one_when_verifying(tmp_path, images_dir):
    (images_dir / "c.png").write_bytes(b"not a png at all")
    _expect(tmp_path, images_dir, _valid(), "1 of 3 image file(s) missing or unreadable", "id=3 'c.png'")
    Image.fromarray(np.full((50, 50, 3), 7, np.uint8)).save(images_dir / "c.png")
    (images_dir / "c.png").write_bytes((images_dir / "c.png").read_bytes()[:-40])  # header intact
    load_coco(_write(tmp_path, _valid()), images_dir)
    _expect(tmp_path, images_dir, _valid(), "id=3 'c.png'", "unreadable", verify_images=True)


def test_wrong_declared_size_is_caught_at_load(tmp_path, images_dir):
    data = _mutate(lambda d: d["images"][2].update(width=51))
    _expect(tmp_path, images_dir, data, "id=3 'c.png' declared 51x50, file is 50x50", "fix width/height")


# ---- datasets ----------------------------------------------------------------------------------
@pytest.fixture()
def two_tasks(tmp_path, images_dir):
    pets = load_coco(_write(tmp_path, _valid(), "pets.json"), images_dir)
    other = {
        "images": [{"id": 5, "file_name": "c.png", "width": 50, "height": 50}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 50, 25]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    return {"pets": pets, "things": load_coco(_write(tmp_path, other, "things.json"), images_dir)}


def test_multitask_items_have_documented_shapes_and_none_for_uncovered_images(two_tasks, images_dir):
    ds = MultiTaskDataset(two_tasks, images_dir, size=64)
    assert len(ds) == 3 and ds.file_names == ["a.png", "b.png", "c.png"]
    image, targets, meta = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert targets["things"] is None and meta["image_ids"] == {"pets": 1, "things": None}
    pets = targets["pets"]
    assert pets["boxes"].dtype == torch.float32 and pets["labels"].dtype == torch.int64
    # a.png is 40x30 -> scale 1.6, pad_y = (64 - 48) // 2 = 8.
    torch.testing.assert_close(
        pets["boxes"], torch.tensor([[3.2, 12.8, 19.2, 32.0], [32.0, 16.0, 62.4, 48.0]])
    )
    assert pets["labels"].tolist() == [1, 0]
    assert (meta["file_name"], meta["scale"], meta["pad_x"], meta["pad_y"]) == ("a.png", 1.6, 0, 8)
    _, targets, meta = ds[2]
    assert targets["things"]["labels"].tolist() == [0] and meta["image_ids"]["things"] == 5
    _, targets, _ = ds[1]
    assert targets["pets"]["boxes"].shape == (0, 4)  # only a crowd box: empty, not None


def test_augmented_boxes_stay_inside_the_canvas_and_are_reproducible(two_tasks, images_dir):
    ds = MultiTaskDataset(two_tasks, images_dir, size=64, augment=Augment(scale_range=(0.5, 1.8)), seed=3)
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, targets, _ = ds[i]
            assert image.shape == (3, 64, 64)
            for t in targets.values():
                if t is not None:
                    assert t["boxes"].shape == (len(t["labels"]), 4)
                    assert bool((t["boxes"] >= 0).all() and (t["boxes"] <= 64).all())
    torch.testing.assert_close(ds[0][0], ds[0][0])


def test_collate_stacks_images_and_keeps_per_task_target_lists(two_tasks, images_dir):
    loader = DataLoader(
        MultiTaskDataset(two_tasks, images_dir, 32), batch_size=3, collate_fn=collate_multitask
    )
    images, targets, metas = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert set(targets) == {"pets", "things"} and len(targets["pets"]) == 3
    assert [t is None for t in targets["things"]] == [True, True, False]
    assert [m["file_name"] for m in metas] == ["a.png", "b.png", "c.png"]


def test_conflicting_image_sizes_between_tasks_are_rejected(tmp_path, images_dir, two_tasks):
    data = {
        "images": [{"id": 1, "file_name": "c.png", "width": 40, "height": 50}],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    with pytest.raises(DataError, match="id=1 'c.png' declared 40x50, file is 50x50"):
        load_coco(_write(tmp_path, data, "bad.json"), images_dir)  # the load itself checks the file
    things = two_tasks["things"]
    bad = dataclasses.replace(things, images={5: things.images[5]._replace(width=40)})
    with pytest.raises(DataError, match="c.png"):
        MultiTaskDataset({"pets": two_tasks["pets"], "bad": bad}, images_dir, 32)


def test_image_folder_dataset_returns_uint8_canvases(images_dir):
    ds = ImageFolderDataset(images_dir, 48)
    assert len(ds) == 3 and ds[1].shape == (3, 48, 48) and ds[1].dtype == torch.uint8
    assert len(ImageFolderDataset([images_dir / "a.png"], 16)) == 1
    with pytest.raises(DataError):
        ImageFolderDataset([images_dir / "zzz.png"], 16)
    with pytest.raises(DataError):
        ImageFolderDataset(images_dir / "a.png", 16)


def test_datasets_are_reexported_from_coco_module():
    import transfer.data.coco as coco

    assert coco.MultiTaskDataset is MultiTaskDataset


def test_file_name_outside_images_dir_is_rejected(tmp_path):
    for bad in ("../secret.jpg", "/etc/passwd", "a/../../b.jpg"):
        path = tmp_path / "t.json"
        path.write_text(json.dumps({
            "images": [{"id": 1, "file_name": bad, "width": 10, "height": 10}],
            "annotations": [], "categories": [{"id": 1, "name": "x"}],
        }))
        with pytest.raises(DataError, match="leaves the images directory"):
            load_coco(path, tmp_path)
