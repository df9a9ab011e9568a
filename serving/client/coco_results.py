"""A predict run's detections in the COCO results format (``pycocotools``' ``loadRes`` reads it).

One record per detection::

    {"image_id": 3, "category_id": 18, "bbox": [x, y, w, h], "score": 0.91,
     "task": "pets", "category_name": "dog", "file_name": "sub/img_0003.jpg"}

``image_id`` is the file's 1-based position in the sorted input list (skipped files keep their
number); ``file_name`` its path relative to the folder holding every input. ``category_id`` is the
task's COCO category id, as its ``detect_<task>`` model config records it (``category_ids``);
``task`` keeps several tasks' records apart (select one task's records before a COCO evaluation).
``bbox`` is in the displayed image's pixels (EXIF orientation applied).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.client.predict import PredictReport
from serving.triton.model_names import task_model
from shared.artifacts import atomic_write_bytes
from shared.errors import ServingError


def served_category_ids(url: str, tasks: Sequence[str], timeout_s: float = 10.0) -> dict[str, tuple[int, ...]]:
    """Task -> COCO category id of each class index, read from the server's ``detect_<task>`` configs.

    Raises:
        ServingError: The server cannot be asked, or a config has no valid ``category_ids`` parameter.
    """
    client = grpcclient.InferenceServerClient(url)
    try:
        ids = {}
        for task in tasks:
            model = task_model(task)
            try:
                config = client.get_model_config(model, client_timeout=timeout_s).config
            except InferenceServerException as err:
                raise ServingError(f"model '{model}' at {url}: cannot read its config: {err.message()}") from err
            try:
                ids[task] = tuple(int(i) for i in json.loads(config.parameters["category_ids"].string_value))
            except (KeyError, ValueError, TypeError) as err:
                raise ServingError(f"model '{model}' at {url} has no valid 'category_ids' parameter; rebuild the "
                                   "repository (polyhead export) with this version") from err
        return ids
    finally:
        client.close()


def coco_results(report: PredictReport, category_ids: dict[str, Sequence[int]]) -> list[dict]:
    """Every detection of ``report`` as a COCO results record (see the module docstring)."""
    records = []
    for p in report.predictions:
        for task in report.tasks:
            ids = category_ids[task]
            for d in p.detections[task]:
                x1, y1, x2, y2 = d.box
                records.append({
                    "image_id": p.image_id,
                    "category_id": ids[d.class_id] if d.class_id < len(ids) else d.class_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": d.score,
                    "task": task,
                    "category_name": d.class_name,
                    "file_name": p.file_name,
                })
    return records


def write_coco_results(path: Path, report: PredictReport, category_ids: dict[str, Sequence[int]]) -> int:
    """Write :func:`coco_results` to ``path`` as JSON (atomically); returns the number of records."""
    records = coco_results(report, category_ids)
    atomic_write_bytes(path, (json.dumps(records, indent=1) + "\n").encode())
    return len(records)
