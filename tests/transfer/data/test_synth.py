import numpy as np
import pytest

from shared.errors import ConfigError
from transfer.data.coco import load_coco
from transfer.data.synth import CLASSES, NEW_TASK, TASKS, TRUNK_TASKS, generate

SMALL = {"num_train": 24, "num_val": 6, "num_unlabeled": 3}


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory):
    a = generate(tmp_path_factory.mktemp("a"), seed=0, **SMALL)
    b = generate(tmp_path_factory.mktemp("b"), seed=0, **SMALL)
    return a, b


def _files(summary):
    return sorted(p.relative_to(summary.out_dir) for p in summary.out_dir.rglob("*") if p.is_file())


def test_same_seed_gives_identical_json_and_image_bytes(synth_pair):
    a, b = synth_pair
    files = _files(a)
    assert files == _files(b)
    assert len([f for f in files if f.suffix == ".jpg"]) == 33
    for rel in files:
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes(), rel


def test_different_seed_gives_different_data(synth_pair, tmp_path):
    a, _ = synth_pair
    c = generate(tmp_path, seed=1, num_train=4, num_val=0)
    assert (a.images_dir / "train/000001.jpg").read_bytes() != (
        c.images_dir / "train/000001.jpg"
    ).read_bytes()
    assert a.train_json["signs"].read_text() != c.train_json["signs"].read_text()


def test_four_tasks_with_trunk_tasks_first_and_summary_counts(synth_pair):
    a, _ = synth_pair
    assert len(TASKS) >= 4 and a.tasks == TASKS
    assert TRUNK_TASKS == TASKS[:3] and NEW_TASK == TASKS[3]
    assert all(1 <= len(CLASSES[t]) <= 3 for t in TASKS)
    assert (a.num_train, a.num_val, a.num_unlabeled) == (24, 6, 3)
    assert len(list(a.unlabeled_dir.glob("*.jpg"))) == 3
    assert all(a.num_objects[t] > 10 for t in TASKS)


def test_files_load_with_load_coco_and_every_task_lists_every_image(synth_pair):
    a, _ = synth_pair
    for task in TASKS:
        for path, n in ((a.train_json[task], 24), (a.val_json[task], 6)):
            coco = load_coco(path, a.images_dir, verify_images=True)
            assert coco.name == task and coco.class_names == CLASSES[task]
            assert len(coco.images) == n
            assert all(im.width == im.height == 256 for im in coco.images.values())


def test_objects_of_three_or_more_tasks_co_occur_in_most_images(synth_pair):
    a, _ = synth_pair
    tasks = {t: load_coco(a.train_json[t], a.images_dir) for t in TASKS}
    ids = list(tasks[TASKS[0]].images)
    present = [sum(bool(tasks[t].annotations[i]) for t in TASKS) for i in ids]
    assert np.mean([p >= 3 for p in present]) >= 0.7
    assert min(present) >= 2


def test_objects_are_reasonably_sized(synth_pair):
    a, _ = synth_pair
    for task in TASKS:
        coco = load_coco(a.train_json[task], a.images_dir)
        wh = np.array([ann.bbox[2:] for anns in coco.annotations.values() for ann in anns])
        assert wh.min() >= 8 and wh.max(axis=1).min() >= 14 and wh.max() <= 160, task


@pytest.mark.parametrize("kwargs", [{"num_train": 0}, {"num_val": -1}, {"image_size": 64}])
def test_invalid_arguments_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        generate(tmp_path, **kwargs)
