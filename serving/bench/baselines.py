"""What the serving benchmark compares the shared-trunk ensemble ``detect`` against.

- :func:`replicate_workspace`: a workspace with N heads copied from a real one;
- :func:`independent_repository`: N single-graph detectors ``full_<task>`` (trunk + head merged,
  each its own trunk), the "N separate detectors" baseline, on polyhead's python backend
  (``serving/triton/backend/model.py``) with the per-task layout's thread settings: N backend
  processes, as N models of any python-backend deployment;
- :func:`inprocess_repository`: the same N merged detectors hosted in ONE backend process
  (model ``inprocess``), with the in_trunk layout's threads, request workers and batcher: the
  fairest baseline, a native-backend deployment without per-process overhead, so that the only
  difference left to the shared side is the N-1 trunk passes it saves;
- :func:`sharing_ceiling` and :func:`trunk_and_head_ms`: the compute bound of that difference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import compose
from tritonclient.grpc import model_config_pb2 as mc

from serving.bench.load_generator import interleaved
from serving.triton import model_configs as mcfg
from serving.triton.repository import BACKEND_MODEL_PY, precompile_backend
from shared.artifacts import atomic_write_json, read_json, sha256_file
from shared.onnx_session import cpu_session
from shared.workspace import Workspace

FEATURES = ("p3", "p4", "p5")
#: Model name of the in-process baseline.
INPROCESS_MODEL = "inprocess"


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


def _version_dir(out: Path, name: str) -> Path:
    """``out/name/1`` with the python backend's model.py (precompiled) in it."""
    version = out / name / "1"
    version.mkdir(parents=True)
    shutil.copy2(BACKEND_MODEL_PY, version / "model.py")
    precompile_backend(version)
    return version


def _leaf(out: Path, name: str, model: onnx.ModelProto, size: int) -> mc.ModelConfig:
    """Write ``out/name/1/model.onnx`` + the backend's model.py; a config with the ``images`` input."""
    onnx.save(model, str(_version_dir(out, name) / "model.onnx"))
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


def _merged(trunk: onnx.ModelProto, ws: Workspace, task: str) -> onnx.ModelProto:
    """One graph ``images -> boxes, scores, labels, num_dets``: ``trunk`` feeding ``task``'s head."""
    head = onnx.load(str(ws.head(task) / "model.onnx"))
    merged = compose.merge_models(trunk, compose.add_prefix(head, "h_"), io_map=[(f, f"h_{f}") for f in FEATURES])
    _rename(merged.graph, {f"h_{o}": o for o in mcfg.HEAD_OUTPUTS})
    return merged


def _max_dets(ws: Workspace, task: str) -> int:
    return int(read_json(ws.head(task) / "head.json")["max_dets"])


def independent_repository(ws: Workspace, out: Path, tasks: list[str], variant: str) -> list[str]:
    """N single-graph detectors ``full_<task>`` (trunk+head merged), python backend.

    Returns:
        The model names.
    """
    trunk = onnx.load(str(ws.variant(variant) / "model.onnx"))
    size = int(read_json(ws.variant(variant) / "variant.json")["input_size"])
    names = []
    for task in tasks:
        cfg = _leaf(out, f"full_{task}", _merged(trunk, ws, task), size)
        for name, (dtype, dims) in mcfg.head_output_dims(_max_dets(ws, task)).items():
            mcfg._tensor(cfg.output, name, dtype, dims)
        mcfg.write_config(cfg, out / cfg.name / "config.pbtxt")
        names.append(cfg.name)
    return names


def inprocess_repository(ws: Workspace, out: Path, tasks: list[str], variant: str) -> str:
    """N merged detectors (trunk + head each, as :func:`independent_repository`) in one backend process.

    The model ``inprocess`` takes ``images`` and answers ``<task>_<output>`` for every task: the
    backend's heads host with no trunk file, each "head" one whole detector. Threads, request
    workers and dynamic batching are the in_trunk layout's, so its only difference from the shared
    side is that every detector runs its own trunk.

    Returns:
        The model name.
    """
    trunk = onnx.load(str(ws.variant(variant) / "model.onnx"))
    size = int(read_json(ws.variant(variant) / "variant.json")["input_size"])
    version = _version_dir(out, INPROCESS_MODEL)
    opts = mcfg.RepositoryOptions(heads_layout="in_trunk")
    cfg = mcfg._leaf(INPROCESS_MODEL, opts, opts.trunk_instances, opts.trunk_threads)
    mcfg._tensor(cfg.input, "images", mc.TYPE_UINT8, [3, size, size])
    shas = {}
    for task in tasks:
        path = version / f"{task}.onnx"
        onnx.save(_merged(trunk, ws, task), str(path))
        shas[task] = sha256_file(path)
        for name, (dtype, dims) in mcfg.head_output_dims(_max_dets(ws, task)).items():
            mcfg._tensor(cfg.output, f"{task}_{name}", dtype, dims)
    cfg.parameters["heads"].string_value = json.dumps(shas)
    cfg.parameters["request_workers"].string_value = str(opts.request_workers)
    if not opts.dynamic_batching:  # as the in_trunk trunk: the batcher hands requests to the workers
        cfg.dynamic_batching.SetInParent()
    mcfg.write_config(cfg, out / INPROCESS_MODEL / "config.pbtxt")
    return INPROCESS_MODEL


def trunk_and_head_ms(ws: Workspace, task: str, variant: str, image: np.ndarray, seconds: float) -> dict[str, float]:
    """Compute time (p50 ms, one thread, in process) of the trunk ``variant`` and of ``task``'s head.

    One thread each, interleaved in blocks (:func:`interleaved`): the work one image costs, which
    is what bounds throughput once every core is busy.

    Args:
        image: ``(1, 3, S, S)`` uint8, the trunk's input.

    Returns:
        ``{"trunk_ms": T, "head_ms": H}``.
    """
    trunk = cpu_session(ws.variant(variant) / "model.onnx", 1)
    head = cpu_session(ws.head(task) / "model.onnx", 1)
    feeds = dict(zip(FEATURES, trunk.run(list(FEATURES), {"images": image}), strict=True))
    both = interleaved({"trunk": lambda: trunk.run(list(FEATURES), {"images": image}),
                        "head": lambda: head.run(None, feeds)}, seconds)
    return {"trunk_ms": both["trunk"]["p50_ms"], "head_ms": both["head"]["p50_ms"]}


def sharing_ceiling(n: int, trunk_ms: float, head_ms: float) -> float:
    """The most one shared trunk can speed up N whole detectors: N(T+H) / (T+NH) (compute per image)."""
    return n * (trunk_ms + head_ms) / (trunk_ms + n * head_ms)
