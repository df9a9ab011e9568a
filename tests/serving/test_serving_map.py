"""mAP through the embedded Triton equals offline (onnxruntime) mAP on a small real workspace."""

from pathlib import Path

import pytest
import torch

from serving.repository import build_repository
from serving.server import EmbeddedTriton, free_port
from shared.artifacts import atomic_write_bytes
from shared.workspace import Workspace
from transfer.coco import load_coco
from transfer.config import DataConfig, HeadSettings, PolyheadConfig, TrainConfig, dump_config
from transfer.evaluate_cli import evaluate_task
from transfer.pipeline import publish_model
from transfer.synth import generate
from transfer.train import train

TASK = "signs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic data and a workspace whose nano trunk + ``signs`` head trained ~30 steps (seconds)."""
    root = tmp_path_factory.mktemp("servingmap")
    generate(root / "data", seed=0, num_train=24, num_val=8, image_size=128)
    ws = Workspace.at(root / "work")
    cfg = PolyheadConfig(
        input_size=64, trunk="nano", data=DataConfig(root=str(root / "data"), tasks=(TASK,)),
        train=TrainConfig(epochs=10, batch_size=8, lr=4e-3, warmup_steps=5, threads=1),
        head=HeadSettings(width=16, depth=1, max_dets=20),
    )
    atomic_write_bytes(ws.config, dump_config(cfg).encode())
    threads = torch.get_num_threads()
    try:
        model = train(cfg, root / "data", ws.checkpoints / "nano.pt", progress=False).model
        publish_model(ws, cfg, model)
    finally:
        torch.set_num_threads(threads)  # train() sets the process-wide thread count
    return ws.root, root / "data"


@pytest.mark.triton
def test_map_through_the_server_equals_offline_map(trained):
    work, data = trained
    val = load_coco(data / TASK / "val.json", data / "images", name=TASK)
    offline = evaluate_task(work, TASK, val)
    assert offline["map"] > 0.01, f"offline mAP {offline} is too small for a meaningful comparison"
    repo = build_repository(work, max_batch_size=4).path
    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        served = evaluate_task(work, TASK, val, server=server.url)
    assert abs(served["map"] - offline["map"]) <= 0.001, (served, offline)  # within 0.1 mAP point
    assert abs(served["map50"] - offline["map50"]) <= 0.001, (served, offline)
