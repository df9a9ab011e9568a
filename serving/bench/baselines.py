"""What the serving benchmark compares the shared-trunk ensemble ``detect`` against.

- :func:`replicate_workspace`: a workspace with N heads copied from a real one;
- :func:`independent_repository`: N single-graph detectors ``full_<task>`` (trunk + head merged,
  each its own trunk), the "N separate detectors" baseline, on polyhead's python backend
  (``serving/triton/backend/model.py``) with the per-task layout's thread settings.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from onnx import compose
from tritonclient.grpc import model_config_pb2 as mc

from serving.triton import model_configs as mcfg
from serving.triton.repository import BACKEND_MODEL_PY, precompile_backend
from shared.artifacts import atomic_write_json, read_json
from shared.workspace import Workspace

FEATURES = ("p3", "p4", "p5")


def replicate_workspace(src: Workspace, dst: Path, n: int, variant: str) -> list[str]:
    """A workspace with ``variant`` and ``n`` heads ``t0..`` copied round-robin from ``src``'s heads."""
    ws = Workspace.at(dst)
    shutil.copytree(src.variant(variant), ws.variant(variant))
    sources = src.tasks()
    names = []
    for i in range(n):
        task = f"t{i}"
        shutil.copytree(src.head(sources[i % len(sources)]), ws.head(task))
        meta = read_json(ws.head(task) / "head.json")
        meta["task"] = task
        atomic_write_json(ws.head(task) / "head.json", meta)
        names.append(task)
    return names


def _leaf(out: Path, name: str, model: onnx.ModelProto, size: int) -> mc.ModelConfig:
    """Write ``out/name/1/model.onnx`` + the backend's model.py; a config with the ``images`` input."""
    version = out / name / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / "model.onnx"))
    shutil.copy2(BACKEND_MODEL_PY, version / "model.py")
    precompile_backend(version)
    opts = mcfg.RepositoryOptions()
    cfg = mcfg._leaf(name, opts, 1, opts.trunk_threads)
    mcfg._tensor(cfg.input, "images", mc.TYPE_UINT8, [3, size, size])
    return cfg


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename tensors ``names`` in every node and graph output of ``graph``."""
    for node in graph.node:
        node.input[:] = [names.get(x, x) for x in node.input]
        node.output[:] = [names.get(x, x) for x in node.output]
    for tensor in graph.output:
        tensor.name = names.get(tensor.name, tensor.name)


def independent_repository(ws: Workspace, out: Path, tasks: list[str], variant: str) -> list[str]:
    """N single-graph detectors ``full_<task>`` (trunk+head merged), python backend.

    Returns:
        The model names.
    """
    trunk = onnx.load(str(ws.variant(variant) / "model.onnx"))
    size = int(read_json(ws.variant(variant) / "variant.json")["input_size"])
    names = []
    for task in tasks:
        head = onnx.load(str(ws.head(task) / "model.onnx"))
        merged = compose.merge_models(
            trunk, compose.add_prefix(head, "h_"), io_map=[(f, f"h_{f}") for f in FEATURES]
        )
        _rename(merged.graph, {f"h_{o}": o for o in mcfg.HEAD_OUTPUTS})
        cfg = _leaf(out, f"full_{task}", merged, size)
        max_dets = int(read_json(ws.head(task) / "head.json")["max_dets"])
        for name, (dtype, dims) in mcfg.head_output_dims(max_dets).items():
            mcfg._tensor(cfg.output, name, dtype, dims)
        mcfg.write_config(cfg, out / cfg.name / "config.pbtxt")
        names.append(cfg.name)
    return names
