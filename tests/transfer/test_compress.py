import json
import os

import numpy as np
import pytest
import yaml

from shared.workspace import Workspace
from transfer.compress import CompressSettings, run_compress
from transfer.compression.prune import PruneSettings
from transfer.compression.quantize import QuantSettings, feature_parity
from transfer.evaluation.predict import onnx_detector
from transfer.export.onnx_graphs import session

SIZE = 64
SETTINGS = CompressSettings(
    rounds=2, prune=PruneSettings(ratio=0.3, round_to=4, steps=3, batch_size=8),
    quant=QuantSettings(calibration_images=8, calibration_batch=4, int8_rel_rmse=0.5), max_images=24,
    latency_repeats=2,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from transfer.data.synth import generate
    from transfer.train import run_train

    root = tmp_path_factory.mktemp("compress")
    generate(root / "data", seed=1, num_train=16, num_val=8, num_unlabeled=4, image_size=128)
    cfg = {"input_size": SIZE, "trunk": "nano", "data": {"root": "data", "tasks": ["signs", "vehicles"]},
           "train": {"epochs": 1, "batch_size": 8, "threads": 2, "warmup_steps": 2},
           "head": {"width": 16, "depth": 1}}
    (root / "polyhead.yaml").write_text(yaml.safe_dump(cfg))
    run_train(root, root / "polyhead.yaml", progress=False)
    report = run_compress(root, tolerance=1.0, progress=False, settings=SETTINGS)
    return Workspace.at(root), report


def _images(n=4):
    return np.random.default_rng(0).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)


def test_every_variant_is_catalogued_with_metrics(workspace):
    ws, report = workspace
    expected = {"reference", "pruned-r1", "pruned-r2", "int8", "pruned-r2-int8", "fp16"}
    assert set(report.catalogue["variants"]) == expected and set(report.built) == expected - {"reference"}
    assert json.loads((ws.trunk_dir / "catalogue.json").read_text()) == report.catalogue
    for name, row in report.catalogue["variants"].items():
        meta = json.loads((ws.variant(name) / "variant.json").read_text())
        assert set(meta["map"]) == {"signs", "vehicles"}, name  # every head evaluated on every variant
        assert row["latency_b1_ms"] > 0 and row["latency_b8_ms"] > 0 and row["flops"] > 0
        assert meta["admitted"] == row["admitted"] and meta["pareto"] == row["pareto"]
        if name != "reference":
            assert meta["parent_sha256"] == json.loads((ws.variant(meta["parent"]) / "variant.json").read_text())[
                "sha256"]
    rows = report.catalogue["variants"]
    assert rows["pruned-r2"]["flops"] < rows["pruned-r1"]["flops"] < rows["reference"]["flops"]
    assert rows["int8"]["size_bytes"] < rows["reference"]["size_bytes"]  # nano: depthwise weights stay float
    assert report.catalogue["pareto"], "the admitted set always has a Pareto front (the reference at least)"


def test_every_variant_keeps_the_contract_and_runs_every_head(workspace):
    ws, report = workspace
    ref = session(ws.variant("reference") / "model.onnx")
    expect = {o.name: o.shape[1:] for o in ref.get_outputs()}
    images = _images()
    for name in report.catalogue["variants"]:
        trunk = session(ws.variant(name) / "model.onnx")
        assert trunk.get_inputs()[0].type == "tensor(uint8)"
        outs = dict(zip([o.name for o in trunk.get_outputs()], trunk.run(None, {"images": images})))
        assert {n: list(o.shape[1:]) for n, o in outs.items()} == {n: [s[0], SIZE // 2**int(n[1]), SIZE // 2**int(n[1])]
                                                                   for n, s in expect.items()}
        assert all(o.dtype == np.float32 for o in outs.values())
        for task in ws.tasks():
            dets = onnx_detector(trunk, session(ws.head(task) / "model.onnx"))(images)
            assert len(dets) == len(images)


def test_int8_and_fp16_match_their_float_parent_within_tolerance(workspace):
    ws, _ = workspace
    images = _images(8)
    cases = (("int8", "reference", "rel_rmse", 0.5), ("pruned-r2-int8", "pruned-r2", "rel_rmse", 0.5),
             ("fp16", "reference", "rel_max", 0.02))
    for name, parent, key, tol in cases:
        float_sess, quant_sess = session(ws.variant(parent) / "model.onnx"), session(ws.variant(name) / "model.onnx")
        err = feature_parity(float_sess, quant_sess, images)
        assert err[key] < tol, (name, err)
        meta = json.loads((ws.variant(name) / "variant.json").read_text())
        assert meta["precision"] == name.split("-")[-1] and meta["parity"][key] < tol


def test_interrupted_compress_leaves_no_partial_variant_and_resumes(workspace, monkeypatch):
    import transfer.compress as compress

    ws, _ = workspace
    os.replace(ws.variant("fp16"), ws.root / "fp16.bak")  # fp16 must be rebuilt

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after model.onnx was written into the temporary directory

    with monkeypatch.context() as m:
        m.setattr(compress, "flushed_latency", killed)
        with pytest.raises(KeyboardInterrupt):
            run_compress(ws.root, progress=False, settings=SETTINGS)
    assert not ws.variant("fp16").exists()
    assert not [p.name for p in ws.trunk_dir.iterdir() if p.name.startswith(".")]  # no half-written dirs
    report = run_compress(ws.root, progress=False, settings=SETTINGS)
    assert report.built == ["fp16"]  # the rest was up to date (same parent sha256 and settings)
    assert set(json.loads((ws.variant("fp16") / "variant.json").read_text())["map"]) == {"signs", "vehicles"}


def test_bench_compress_times_teacher_and_variants_in_one_run_and_folds_in_reports(workspace, tmp_path):
    from shared.errors import ArtifactError
    from transfer.compress import run_compress_bench

    ws, report = workspace
    distill = tmp_path / "distill.json"
    distill.write_text(json.dumps({"map_gain_points": {"signs": 1.0}}))
    out = run_compress_bench(ws.root, repeats=3, reports={"distillation": distill})
    assert out["baseline"] == "teacher" and out["distillation"] == {"map_gain_points": {"signs": 1.0}}
    timed = out["teacher"]["side_by_side"]
    assert out["best_variant"] in timed and "reference" in timed  # re-timed next to the teacher
    assert out["best"]["latency_b1_ms"] == timed[out["best_variant"]]["b1"]
    assert out["latency_ratio_b1"] == pytest.approx(out["teacher"]["latency_b1_ms"] / timed[out["best_variant"]]["b1"])
    assert out["teacher"]["params"] > 5e6 and out["size_ratio"] > 1  # the teacher architecture is the big one
    assert out["teacher"]["map"] is None and out["map_drop_baseline"] == "reference"  # no trained teacher here
    with pytest.raises(ArtifactError, match="missing.json"):
        run_compress_bench(ws.root, repeats=3, reports={"add_task": tmp_path / "missing.json"})
    assert out["admitted"] and out["chosen_by"] == "best admitted"


def test_bench_compress_compares_a_named_variant_even_if_not_admitted(workspace):
    from shared.errors import ConfigError
    from transfer.compress import run_compress_bench

    ws, report = workspace
    rows = report.catalogue["variants"]
    name = next((n for n, r in rows.items() if not r["admitted"]), "int8")
    out = run_compress_bench(ws.root, repeats=3, variant=name)
    assert out["best_variant"] == name and out["chosen_by"] == "--variant"
    assert out["admitted"] == rows[name]["admitted"] and name in out["teacher"]["side_by_side"]
    with pytest.raises(ConfigError, match="no variant 'nope'"):
        run_compress_bench(ws.root, repeats=3, variant="nope")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_compress_on_cuda_without_a_gpu_is_refused_before_anything_is_written(workspace, capsys):
    from serving.cli.main import main
    from shared.errors import ConfigError

    ws, _ = workspace
    before = {p: p.stat().st_mtime_ns for p in ws.root.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="sees no CUDA device; run with --device cpu"):
        run_compress(ws.root, progress=False, settings=SETTINGS, device="cuda")
    assert main(["compress", "--workdir", str(ws.root), "--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in ws.root.rglob("*") if p.is_file()} == before
