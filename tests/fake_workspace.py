"""A tiny real workspace (trunk variants + heads as ONNX + json) for serving tests; no training.

Import it (``from tests import fake_workspace``) or use the ``fakes`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 64  # input side (multiple of 32)
CHANNELS = 8  # channels of p3, p4, p5
MAX_DETS = 12  # K
TASKS = {"cars": ["car", "truck"], "people": ["person"], "signs": ["stop", "yield", "speed"]}
EXTRA_TASK = ("boats", ["boat", "ship"])  # exported later, hot-added by tests


class FakeTrunk(nn.Module):
    """uint8 images [B,3,S,S] -> p3/p4/p5 via strided convs."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c3 = nn.Conv2d(3, CHANNELS, 8, stride=8)
        self.c4 = nn.Conv2d(CHANNELS, CHANNELS, 2, stride=2)
        self.c5 = nn.Conv2d(CHANNELS, CHANNELS, 2, stride=2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = images.float() / 255.0  # (B, 3, S, S)
        p3 = torch.relu(self.c3(x))  # (B, C, S/8, S/8)
        p4 = torch.relu(self.c4(p3))  # (B, C, S/16, S/16)
        p5 = torch.relu(self.c5(p4))  # (B, C, S/32, S/32)
        return p3, p4, p5


class FakeHead(nn.Module):
    """p3/p4/p5 -> K sorted slots; slots with score > 0.5 are detections, the rest padding (-1)."""

    def __init__(self, seed: int, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.score = nn.Linear(3 * CHANNELS, MAX_DETS)
        self.box = nn.Linear(3 * CHANNELS, MAX_DETS * 4)
        self.num_classes = num_classes
        with torch.no_grad():
            self.score.weight.mul_(20.0)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor):  # noqa: ANN201
        g = torch.cat([p3.mean((2, 3)), p4.mean((2, 3)), p5.mean((2, 3))], dim=1)  # (B, 3C)
        scores, order = torch.sort(torch.sigmoid(self.score(g)), dim=1, descending=True)  # (B, K)
        raw = torch.sigmoid(self.box(g)).view(-1, MAX_DETS, 4) * SIZE  # (B, K, 4)
        raw = torch.gather(raw, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        boxes = torch.cat(
            [torch.minimum(raw[..., :2], raw[..., 2:]), torch.maximum(raw[..., :2], raw[..., 2:])], -1
        )
        keep = scores > 0.5  # (B, K)
        classes = torch.where(keep, order % self.num_classes, torch.full_like(order, -1))
        num_dets = keep.sum(1, keepdim=True).to(torch.int64)  # (B, 1)
        return num_dets, boxes * keep.unsqueeze(-1).float(), scores * keep.float(), classes


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_trunk(seed: int, path: Path) -> None:
    torch.onnx.export(
        FakeTrunk(seed).eval(),
        (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8),),
        str(path),
        input_names=["images"],
        output_names=["p3", "p4", "p5"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={n: {0: "batch"} for n in ("images", "p3", "p4", "p5")},
    )


def export_trunk(workdir: Path, name: str, seed: int) -> Path:
    vdir = workdir / "trunk" / name
    vdir.mkdir(parents=True, exist_ok=True)
    path = vdir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: the one the project uses
        _export_trunk(seed, path)
    meta = {
        "name": name,
        "input_size": SIZE,
        "channels": {"p3": CHANNELS, "p4": CHANNELS, "p5": CHANNELS},
        "sha256": _sha(path),
        "admitted": True,
    }
    (vdir / "variant.json").write_text(json.dumps(meta))
    return path


def export_head(workdir: Path, task: str, classes: list[str], seed: int) -> Path:
    hdir = workdir / "heads" / task
    hdir.mkdir(parents=True, exist_ok=True)
    path = hdir / "model.onnx"
    feats = tuple(torch.zeros(1, CHANNELS, SIZE // s, SIZE // s) for s in (8, 16, 32))
    outs = ["num_dets", "boxes", "scores", "classes"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            FakeHead(seed, len(classes)).eval(),
            feats,
            str(path),
            input_names=["p3", "p4", "p5"],
            output_names=outs,
            opset_version=17,
            dynamo=False,
            dynamic_axes={n: {0: "batch"} for n in ("p3", "p4", "p5", *outs)},
        )
    meta = {
        "task": task,
        "classes": classes,
        "category_ids": list(range(1, len(classes) + 1)),
        "input_size": SIZE,
        "max_dets": MAX_DETS,
        "sha256": _sha(path),
    }
    (hdir / "head.json").write_text(json.dumps(meta))
    return path


def make_workspace(root: Path) -> Path:
    """Two admitted trunk variants (+ one not admitted) and the TASKS heads under ``root``."""
    export_trunk(root, "ref", seed=0)
    export_trunk(root, "small", seed=1)
    export_trunk(root, "rejected", seed=2)
    meta = json.loads((root / "trunk/rejected/variant.json").read_text())
    (root / "trunk/rejected/variant.json").write_text(json.dumps({**meta, "admitted": False}))
    for i, (task, classes) in enumerate(TASKS.items()):
        export_head(root, task, classes, seed=10 + i)
    return root


def random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Random uint8 RGB images of assorted shapes."""
    rng = np.random.default_rng(seed)
    shapes = [(48, 80), (64, 64), (100, 30), (20, 20), (90, 120)]
    return [rng.integers(0, 256, (*shapes[i % len(shapes)], 3), dtype=np.uint8) for i in range(n)]


#: Accuracy (mAP per task) and latency written into the fake variants: "ref" accurate and slow.
VARIANT_METRICS = {
    "ref": {"map": 0.50, "latency_ms": 10.0},
    "small": {"map": 0.40, "latency_ms": 5.0},
}


def add_variant_metrics(workdir: Path) -> None:
    """Write ``map`` and ``latency_ms`` into the fake variants' variant.json (as compression does)."""
    for name, m in VARIANT_METRICS.items():
        path = workdir / "trunk" / name / "variant.json"
        meta = json.loads(path.read_text())
        meta["map"] = {t: {"map": m["map"], "map50": m["map"] + 0.2} for t in TASKS}
        meta["latency_ms"] = {"cpu-test": {"b1": m["latency_ms"], "b8": 6 * m["latency_ms"]}}
        path.write_text(json.dumps(meta))
