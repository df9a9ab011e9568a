"""The supernet's images: every head's training images, heads added by add-task too, shared out by head."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from shared.workspace import Workspace
from tests.tiny_workspace import build_tiny_workspace
from transfer.elastic.train_images import TrainImagesWarning, supernet_train_images
from transfer.train import data_root, resolve_config


def _added_head(ws: Workspace, root, name: str, images: int) -> list:
    """``heads/<name>/head.json`` as add-task writes it, trained on ``images`` new photos of its own."""
    folder = root / "data" / "images" / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        entries.append({"id": i + 1, "file_name": f"{name}/{i}.jpg", "width": 60, "height": 40})
    coco = {"images": entries, "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                             "iscrowd": 0} for i in range(images)]}  # fmt: skip
    train_json = root / f"{name}-train.json"
    train_json.write_text(json.dumps(coco))
    ws.head(name).mkdir(parents=True)
    (ws.head(name) / "head.json").write_text(json.dumps({"task": name, "train_json": str(train_json)}))
    return sorted(folder.glob("*.jpg"))


@pytest.fixture()
def workspace(tmp_path):
    root = build_tiny_workspace(tmp_path, 6, 2, {})
    ws = Workspace.at(root / "work")
    cfg = resolve_config(ws, None)
    return root, ws, cfg, data_root(ws, cfg)


def test_a_head_added_later_lends_its_images_in_turn_with_the_trained_tasks(workspace):
    root, ws, cfg, data = workspace
    added = _added_head(ws, root, "photos", 3)
    every = supernet_train_images(ws, cfg, data)
    trained = [f for f in every if f not in added]
    assert set(added) <= set(every) and len(trained) >= 6 and len(every) == len(set(every))
    # one trained task, one added head: one image of each per round while both last
    assert [f in added for f in every[:6]] == [False, True] * 3
    assert supernet_train_images(ws, cfg, data, limit=4) == every[:4]


def test_a_head_without_its_training_file_is_skipped_with_one_warning(workspace):
    root, ws, cfg, data = workspace
    before = supernet_train_images(ws, cfg, data)
    ws.head("lost").mkdir(parents=True)
    (ws.head("lost") / "head.json").write_text(json.dumps({"task": "lost", "train_json": str(root / "gone.json")}))
    with pytest.warns(TrainImagesWarning, match="head 'lost' records no training annotations .*gone.json not found"):
        assert supernet_train_images(ws, cfg, data) == before
