"""`add-task`: head-only transfer on the frozen reference trunk, transactional on the workspace."""

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import transfer.add_task as add_task_mod
import transfer.training.feature_cache as cache_mod
from serving.cli.main import main as cli_main
from serving.triton.hot_add import TritonHotAdd
from shared.artifacts import sha256_file
from shared.errors import ArtifactError, ConfigError, DataError, ServingError
from shared.workspace import Workspace
from transfer.add_task import add_task
from transfer.data.synth import CLASSES
from transfer.training.feature_cache import (
    DEFAULT_VIEWS,
    HeadOnlyTrainConfig,
    OnnxTrunk,
    build_feature_cache,
    check_trunk_matches_onnx,
    load_frozen_trunk,
)

SIZE = 64
FAST = HeadOnlyTrainConfig(epochs=2, batch_size=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core runner, 2 torch threads can be 20x slower for these tiny nets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def template(one_thread, tiny_workspace, tmp_path_factory) -> Path:
    """nano trunk `reference` (+ a copy `narrow`, a rejected variant) with one head `signs`; untrained."""
    return tiny_workspace(tmp_path_factory.mktemp("addtask"), 20, 6, {"narrow": True, "rejected": False})


@pytest.fixture()
def env(template, tmp_path):
    """A fresh copy of the workspace and the paths of the `shapes` task."""
    work = tmp_path / "work"
    shutil.copytree(template / "work", work)
    data = template / "data"
    return work, data / "shapes" / "train.json", data / "shapes" / "val.json", data / "images"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (hidden ones too) -> sha256 (or 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else sha256_file(p) for p in sorted(root.rglob("*"))}


def test_add_task_publishes_head_with_map_for_every_admitted_variant(env):
    work, train, val, images = env
    before = snapshot(work)
    report = add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST)
    ws = Workspace.at(work)
    meta = json.loads((ws.head("shapes") / "head.json").read_text())
    assert set(report.maps) == set(meta["map"]) == {"reference", "narrow"}
    assert all(0.0 <= m["map"] <= 1.0 and "map50" in m for m in meta["map"].values())
    assert meta["sha256"] == sha256_file(ws.head("shapes") / "model.onnx")
    assert meta["classes"] == list(CLASSES["shapes"]) and meta["input_size"] == SIZE
    # where compress and search find the task's images again
    assert (meta["train_json"], meta["val_json"], meta["images"]) == (str(train), str(val), str(images))
    assert report.classes == CLASSES["shapes"] and report.num_views == DEFAULT_VIEWS * report.num_images
    for variant in ("reference", "narrow"):
        assert json.loads((ws.variant(variant) / "variant.json").read_text())["map"]["shapes"] == report.maps[variant]
    assert "shapes" not in json.loads((ws.variant("rejected") / "variant.json").read_text())["map"]
    after = snapshot(work)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"trunk/reference/variant.json", "trunk/narrow/variant.json"}
    assert set(after) - set(before) == {"heads/shapes", "heads/shapes/model.onnx", "heads/shapes/head.json"}
    head = ort.InferenceSession(str(ws.head("shapes") / "model.onnx"), providers=["CPUExecutionProvider"])
    strides = (8, 16, 32)
    feats = {i.name: np.zeros([1, 32, SIZE // s, SIZE // s], np.float32) for i, s in zip(head.get_inputs(), strides)}
    assert head.run(["num_dets"], feats)[0].shape == (1, 1)


def test_a_head_that_loses_more_than_the_catalogue_tolerance_on_a_variant_is_named_in_one_warning(env, monkeypatch):
    work, train, val, images = env
    (work / "trunk" / "catalogue.json").write_text(json.dumps({"tolerance_points": 2.0, "tasks": ["signs"]}))
    scores = {"reference": 0.50, "narrow": 0.40}
    monkeypatch.setattr(add_task_mod, "evaluate_head", lambda ws, task, v, val, size: {"map": scores[v], "map50": 0.9})
    with pytest.warns(add_task_mod.HeadAccuracyWarning) as seen:
        report = add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST)
    assert len(seen) == 1 and "narrow -10.0" in str(seen[0].message) and "1 of 1 trunk variants" in str(seen[0].message)
    assert "tolerance of 2 mAP points" in str(seen[0].message) and "['signs']" in str(seen[0].message)
    assert report.tolerance_points == 2.0 and report.over_tolerance == {"narrow": pytest.approx(10.0)}
    assert (work / "heads" / "shapes" / "model.onnx").is_file()  # a warning, not a refusal


def test_a_corrupt_catalogue_is_refused_before_any_work(env):
    work, train, val, images = env
    (work / "trunk" / "catalogue.json").write_text("{not json")
    before = snapshot(work)
    with pytest.raises(ArtifactError, match="catalogue.json.*polyhead compress"):
        add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST)
    assert snapshot(work) == before


def test_trunk_is_bit_identical_before_and_after(env, monkeypatch):
    work, train, val, images = env
    seen = {}

    def spy(checkpoint, trunk_cfg=None):
        trunk = load_frozen_trunk(checkpoint, trunk_cfg)
        seen["trunk"], seen["before"] = trunk, {k: v.clone() for k, v in trunk.state_dict().items()}
        return trunk

    monkeypatch.setattr(add_task_mod, "load_frozen_trunk", spy)
    files = {p: sha256_file(work / p) for p in ("checkpoints/nano.pt", "trunk/reference/model.onnx")}
    add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST)
    after = seen["trunk"].state_dict()
    assert set(after) == set(seen["before"])
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())
    assert not any(p.requires_grad for p in seen["trunk"].parameters())
    assert files == {p: sha256_file(work / p) for p in files}


def test_feature_cache_flip_view_mirrors_features(env):
    work, train, _, images = env
    from transfer.data.coco import load_coco

    trunk = load_frozen_trunk(work / "checkpoints" / "nano.pt")
    task = load_coco(train, images, name="shapes")
    with build_feature_cache(trunk, task, SIZE, views=2, max_memory_mb=0) as cache:  # forces the memory map
        assert cache.on_disk and len(cache) == 2 * len(task.images)
        feats, targets = cache.batch(np.array([0, len(task.images)]))
        assert feats["p3"].dtype == torch.float32 and feats["p3"].shape == (2, 32, SIZE // 8, SIZE // 8)
        boxes, flipped = targets[0]["boxes"], targets[1]["boxes"]
        assert torch.allclose(flipped[:, [2, 0]], SIZE - boxes[:, [0, 2]])


def test_cache_from_the_exported_trunk_matches_the_pytorch_trunk(env):
    """add-task caches with onnxruntime; the features equal the checkpoint's within float16 rounding."""
    work, train, _, images = env
    from transfer.data.coco import load_coco

    trunk = load_frozen_trunk(work / "checkpoints" / "nano.pt")
    task = load_coco(train, images, name="shapes")
    onnx_trunk = OnnxTrunk(work / "trunk" / "reference" / "model.onnx", trunk.feature_specs)
    ref, got = build_feature_cache(trunk, task, SIZE, views=2), build_feature_cache(onnx_trunk, task, SIZE, views=2)
    with ref, got:
        assert set(got.features) == set(ref.features) and len(got) == len(ref)
        for name, a in ref.features.items():
            a32, b32 = a.astype(np.float32), got.features[name].astype(np.float32)
            assert np.abs(a32 - b32).max() <= 2e-3 * max(1.0, float(np.abs(a32).max())), name
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ref.targets, got.targets))


def test_parity_check_refuses_a_checkpoint_that_no_longer_matches_the_exported_trunk(env):
    work, _, _, _ = env
    trunk = load_frozen_trunk(work / "checkpoints" / "nano.pt")
    onnx_trunk = OnnxTrunk(work / "trunk" / "reference" / "model.onnx", trunk.feature_specs)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    assert check_trunk_matches_onnx(trunk, onnx_trunk, images) < 1e-3
    with torch.no_grad():
        next(p for p in trunk.parameters() if p.dim() == 4).mul_(3.0)  # "retrained after export"
    with pytest.raises(ArtifactError, match="differ from .*model.onnx.*re-export"):
        check_trunk_matches_onnx(trunk, onnx_trunk, images)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("images_missing", DataError, "images directory .* does not exist"),
        ("empty_file", DataError, "bad.json: not valid JSON"),
        ("malformed", DataError, "bad.json: not valid JSON"),
        ("no_annotations", DataError, "bad.json: no annotated image"),
        ("existing_name", ConfigError, "already exists"),
        ("bad_name", ConfigError, "is invalid"),
        ("upper_name", ConfigError, "is invalid"),
        ("long_name", ConfigError, "is invalid"),
        ("no_reference", ArtifactError, "reference"),
        ("bad_server", ConfigError, "HOST:PORT"),
        pytest.param("cuda_without_gpu", ConfigError, "sees no CUDA device; run with --device cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    ],
)
def test_bad_inputs_raise_clear_errors_and_leave_the_workspace_as_it_was(env, tmp_path, case, error, match):
    work, train, val, images = env
    kwargs = {"name": "shapes", "train_json": train, "val_json": val, "images": images, "live": None}
    bad = tmp_path / "bad.json"
    if case == "images_missing":
        kwargs["images"] = tmp_path / "nowhere"
    elif case == "empty_file":
        kwargs["train_json"] = _write(bad, "")
    elif case == "malformed":
        kwargs["val_json"] = _write(bad, '{"images": [')
    elif case == "no_annotations":
        data = json.loads(Path(train).read_text())
        kwargs["train_json"] = _write(bad, json.dumps({**data, "annotations": []}))
    elif case == "existing_name":
        kwargs["name"] = "signs"
    elif case == "bad_name":
        kwargs["name"] = "new-task"
    elif case == "upper_name":
        kwargs["name"] = "Shapes"
    elif case == "long_name":
        kwargs["name"] = "s" * 33
    elif case == "no_reference":
        shutil.rmtree(work / "trunk" / "reference")
    elif case == "cuda_without_gpu":
        kwargs["device"] = "cuda"
    before = snapshot(work)
    with pytest.raises(error, match=match):
        if case == "bad_server":
            kwargs["live"] = TritonHotAdd("localhost")
        add_task(work, progress=False, train_cfg=FAST, **kwargs)
    assert snapshot(work) == before


@pytest.mark.parametrize("case", ["missing_image_files", "strict_box_outside"])
def test_image_and_box_problems_are_refused_before_anything_is_written(env, tmp_path, case):
    work, train, val, images = env
    data = json.loads(Path(train).read_text())
    if case == "missing_image_files":  # reported together, not one at a time mid-epoch
        data["images"] += [{"id": 10**6 + k, "file_name": f"gone/{k}.png", "width": 8, "height": 8} for k in (1, 2)]
        match = r"bad.json: 2 of \d+ image file\(s\) missing or unreadable.*'gone/1.png' \(missing\)"
    else:
        data["annotations"][0]["bbox"][0] = -10
        match = rf"bad.json: 1 annotation\(s\) do not fit their image: id={data['annotations'][0]['id']} "
    before = snapshot(work)
    with pytest.raises(DataError, match=match):
        add_task(work, "shapes", _write(tmp_path / "bad.json", json.dumps(data)), val, images, progress=False,
                 train_cfg=FAST, strict=case == "strict_box_outside")
    assert snapshot(work) == before


class _FailingLoss:
    """Stands in for DetectionLoss; raises ``exc`` on the second batch."""

    exc: BaseException = RuntimeError("injected failure mid-training")

    def __init__(self):
        self.calls = 0

    def __call__(self, out, targets):
        self.calls += 1
        if self.calls == 2:
            raise self.exc
        return {"total": out.logits.sum() * 0.0}


@pytest.mark.parametrize("exc", [RuntimeError("injected failure mid-training"), KeyboardInterrupt()])
def test_failure_mid_training_leaves_no_head(env, monkeypatch, exc):
    work, train, val, images = env
    monkeypatch.setattr(_FailingLoss, "exc", exc)
    monkeypatch.setattr(cache_mod, "DetectionLoss", _FailingLoss)
    before = snapshot(work)
    with pytest.raises(type(exc)):
        add_task(work, "shapes", train, val, images, progress=False,
                 train_cfg=HeadOnlyTrainConfig(epochs=3, batch_size=8))
    assert snapshot(work) == before and not (work / "heads" / "shapes").exists()


@pytest.mark.parametrize("where", ["evaluate", "commit"])
def test_failure_after_export_rolls_back_every_file(env, monkeypatch, where):
    work, train, val, images = env
    if where == "evaluate":  # second variant's evaluation fails: the head is only staged
        real, calls = add_task_mod.evaluate_head, []

        def evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("evaluation crashed")
            return real(*args, **kwargs)

        monkeypatch.setattr(add_task_mod, "evaluate_head", evaluate)
    else:  # head renamed into place, first variant.json updated, then the second write fails
        real_write, calls = add_task_mod.record_map_result, []

        def write(path, key, result):
            calls.append(path)
            if len(calls) == 2:
                raise OSError("disk full")
            real_write(path, key, result)

        monkeypatch.setattr(add_task_mod, "record_map_result", write)
    before = snapshot(work)
    with pytest.raises((RuntimeError, OSError)):
        add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST)
    assert snapshot(work) == before


def test_cli_add_task_prints_map_per_variant(env, capsys):
    work, train, val, images = env
    code = cli_main(["add-task", "--workdir", str(work), "--name", "shapes", "--train-json", str(train),
                     "--val-json", str(val), "--images", str(images), "--epochs", "1", "--views", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "reference" in out and "narrow" in out and "mAP" in out
    assert f"not served yet: `polyhead serve --workdir {work}` rebuilds the repository with it" in out
    assert cli_main(["add-task", "--workdir", str(work), "--name", "shapes", "--train-json", str(train),
                     "--val-json", str(val), "--images", str(images)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_export_builds_the_repository(env, capsys):
    work = env[0]
    assert cli_main(["export", "--workdir", str(work), "--max-batch-size", "2"]) == 0
    assert "trunk versions" in capsys.readouterr().out
    build = json.loads((work / "model_repository" / "build.json").read_text())
    assert build["tasks"] == ["signs"] and build["options"]["max_batch_size"] == 2


@pytest.mark.triton
def test_hot_add_serves_the_new_task_while_existing_requests_never_fail(env, monkeypatch):
    import serving.triton.hot_add as serving_hot_add
    from serving.client import Detector
    from serving.triton.embedded_server import EmbeddedTriton, free_port
    from serving.triton.repository import build_repository

    work, train, val, images = env
    repo = build_repository(work, max_batch_size=4).path
    image = np.asarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3)), np.uint8)
    stop, ok, failures = threading.Event(), [0], []

    def traffic(url: str) -> None:
        with Detector(url) as det:
            while not stop.is_set():
                try:
                    det.detect(image, "signs")
                    ok[0] += 1
                except Exception as err:  # noqa: BLE001
                    failures.append(repr(err))

    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        thread = threading.Thread(target=traffic, args=(server.url,))
        thread.start()
        try:
            time.sleep(0.3)
            before_repo, before_ws = snapshot(repo), snapshot(work)
            real_add = serving_hot_add.add_task_to_repository

            def add_broken_head(repo_, work_, task):  # the head reaches the repository corrupted: its load fails
                summary = real_add(repo_, work_, task)
                (repo_ / f"head_{task}" / "1" / "model.onnx").write_bytes(b"not an onnx model")
                return summary

            monkeypatch.setattr(serving_hot_add, "add_task_to_repository", add_broken_head)
            with pytest.raises(ServingError, match="restored"):
                add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST,
                         live=TritonHotAdd(server.url))
            assert snapshot(repo) == before_repo and snapshot(work) == before_ws
            with Detector(server.url) as det:
                assert det.tasks(refresh=True) == ["signs"] and set(det.detect(image)[0].detections) == {"signs"}
            monkeypatch.setattr(serving_hot_add, "add_task_to_repository", real_add)
            report = add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST,
                              live=TritonHotAdd(server.url))
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join()
        assert report.hot_added and failures == [] and ok[0] > 5
        log = server.log_path.read_text()
        assert log.count("successfully loaded 'trunk'") == 1  # the trunk was never reloaded
        with Detector(server.url) as det:
            assert "shapes" in det.tasks(refresh=True)
            [result] = det.detect(image)
            assert set(result.detections) == {"signs", "shapes"}
            det.detect(image, "shapes")
        assert json.loads((repo / "build.json").read_text())["tasks"] == ["shapes", "signs"]
        photo, out = work.parent / "photo.png", work.parent / "dets.json"
        Image.fromarray(image).save(photo)
        assert cli_main(["infer", "--server", server.url, "--image", str(photo), "--tasks", "shapes,signs",
                         "--json", str(out)]) == 0
        assert set(json.loads(out.read_text())["detections"]) == {"shapes", "signs"}
        hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(repo.rglob("*")) if p.is_file()}
        with pytest.raises(ConfigError, match="already exists"):  # a second add of the same name: nothing changes
            add_task(work, "shapes", train, val, images, progress=False, train_cfg=FAST, live=TritonHotAdd(server.url))
        assert hashes == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(repo.rglob("*")) if p.is_file()}
