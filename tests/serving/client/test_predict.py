"""`polyhead predict` over a folder of real photos through the real tritonserver (one server per module).

The workspace is :func:`tests.tiny_workspace.build_photo_workspace`'s (a nano trunk and a ``photos`` head
trained on scikit-image's photos, scores spread so that there are detections). The folder holds two
photos, an EXIF-rotated copy of one (stored turned by 90 degrees, tagged to be displayed upright: it
displays as the same pixels), one corrupt ``.jpg`` and a text file (not listed: a folder lists images only).
"""

from __future__ import annotations

import contextlib
import io
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
from PIL import Image

from serving.cli.main import main as cli_main
from serving.client import Detector
from serving.client.image_sources import list_images
from serving.client.predict import PredictOptions, predict
from serving.triton.repository import build_repository
from tests.tiny_workspace import PHOTO_TASK, build_photo_workspace
from transfer.data.images import read_rgb
from transfer.data.photo_task import CATEGORY_IDS

pytestmark = pytest.mark.triton
SIZE = 320
ROTATED = "coffee_rotated.png"
#: Sorted file order -> image_id: broken.jpg 1, chelsea.png 2, coffee.png 3, coffee_rotated.png 4.
READABLE = {2: "chelsea.png", 3: "coffee.png", 4: ROTATED}
KEYS = {"image_id", "category_id", "bbox", "score", "task", "category_name", "file_name"}


def _folder(root: Path) -> Path:
    folder = root / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.png")  # 451 x 300
    coffee = Image.fromarray(skimage.data.coffee())  # 600 x 400
    coffee.save(folder / "coffee.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to display
    coffee.transpose(Image.Transpose.ROTATE_90).save(folder / ROTATED, exif=exif)  # stored 400 x 600
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, server_factory) -> SimpleNamespace:
    root = build_photo_workspace(tmp_path_factory.mktemp("predict"), SIZE)
    repo = build_repository(root / "work", max_batch_size=4, heads_layout="in_trunk").path
    with server_factory(root / "work", repo=repo) as server:
        yield SimpleNamespace(url=server.url, folder=_folder(root), root=root)


@pytest.fixture(scope="module")
def cli_run(served: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("predict_out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli_main(["predict", "--server", served.url, str(served.folder), "--save", str(out / "drawn"),
                         "--json", str(out / "dets.json"), "--conf", "0.1"])
    return SimpleNamespace(code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue(), out=out,
                           records=json.loads((out / "dets.json").read_text()))


def test_the_rotated_copy_displays_as_the_original(served):
    stored = Image.open(served.folder / ROTATED).size
    assert stored == (400, 600)
    np.testing.assert_array_equal(read_rgb(served.folder / ROTATED), read_rgb(served.folder / "coffee.png"))


def test_the_corrupt_file_is_reported_counted_and_the_others_done(cli_run):
    assert cli_run.code == 1  # some file was skipped
    assert "broken.jpg" in cli_run.stderr and "skipped" in cli_run.stderr
    assert "3 image(s)" in cli_run.stdout and "1 skipped" in cli_run.stdout
    assert "images/s" in cli_run.stdout and f"{PHOTO_TASK} {len(cli_run.records)}" in cli_run.stdout
    assert {r["image_id"] for r in cli_run.records} == set(READABLE)


def test_the_json_is_coco_results_with_boxes_inside_each_image(served, cli_run):
    assert len(cli_run.records) >= 3
    for r in cli_run.records:
        assert set(r) == KEYS
        assert r["file_name"] == READABLE[r["image_id"]] and r["task"] == PHOTO_TASK
        assert r["category_id"] == CATEGORY_IDS[r["category_name"]]
        assert 0.1 <= r["score"] <= 1.0
        h, w = read_rgb(served.folder / r["file_name"]).shape[:2]
        x, y, bw, bh = r["bbox"]
        assert x >= 0 and y >= 0 and bw >= 0 and bh >= 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3, (r, w, h)


def test_the_exif_rotated_copy_gets_the_upright_detections(cli_run):
    def of(image_id: int) -> list:
        return sorted((r["category_id"], round(r["score"], 4), *np.round(r["bbox"], 2)) for r in cli_run.records
                      if r["image_id"] == image_id)

    assert of(4) == of(3) and of(3)


def test_save_writes_each_readable_image_at_its_size_with_boxes_drawn(served, cli_run):
    drawn = cli_run.out / "drawn"
    assert sorted(p.name for p in drawn.iterdir()) == sorted(READABLE.values())
    for name in READABLE.values():
        original = read_rgb(served.folder / name)  # displayed pixels (the rotated copy upright)
        with Image.open(drawn / name) as saved:
            assert saved.size == (original.shape[1], original.shape[0])
            changed = (np.asarray(saved.convert("RGB")) != original).any(axis=2)
        assert 0.001 < changed.mean() < 0.9, (name, changed.mean())


def test_a_higher_conf_keeps_no_more_detections(served):
    paths = list_images(served.folder)
    connect = partial(Detector, served.url)
    counts = {}
    for conf in (0.05, 0.3, 0.9):
        report = predict(paths, connect, PredictOptions(conf=conf, concurrency=2))
        assert len(report.predictions) == 3 and [s.path.name for s in report.skipped] == ["broken.jpg"]
        scores = [d.score for p in report.predictions for d in p.detections[PHOTO_TASK]]
        assert all(s >= conf for s in scores)
        counts[conf] = len(scores)
    assert counts[0.05] > counts[0.3] >= counts[0.9], counts


def test_an_unknown_task_fails_naming_the_served_ones(served, capsys):
    assert cli_main(["predict", "--server", served.url, str(served.folder), "--tasks", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and PHOTO_TASK in err


def test_infer_still_prints_one_image_and_writes_its_json(served, capsys, tmp_path):
    out = tmp_path / "one.json"
    assert cli_main(["infer", "--server", served.url, "--image", str(served.folder / "coffee.png"),
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    dets = json.loads(out.read_text())["detections"][PHOTO_TASK]
    assert f"{PHOTO_TASK}: {len(dets)} detection(s)" in text and dets
    assert cli_main(["infer", "--server", served.url, "--image", str(served.folder / "broken.jpg")]) == 2
    assert "broken.jpg" in capsys.readouterr().err
