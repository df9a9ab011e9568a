"""The names in the Triton repository: its models and the output tensors of the ensembles.

The one rule, used by the repository builder, hot add, the client, monitoring and the Kubernetes
facts (:mod:`serving.triton.deployment_facts`):

* ``trunk`` (:data:`TRUNK_MODEL`): ``images`` -> the contract features (in the ``in_trunk`` layout
  also every head's outputs, named :func:`head_output`);
* ``head_<task>`` (:func:`head_model`): one head per task (``per_task`` layout), outputs
  :data:`HEAD_OUTPUTS`;
* ``heads`` (:data:`SHARED_HEADS_MODEL`): one model hosting every head (``shared`` layout),
  outputs ``<task>_<output>``;
* ``detect_<task>`` (:func:`task_model`): ensemble trunk -> that task's head, outputs
  :data:`HEAD_OUTPUTS`;
* ``detect`` (:data:`FANOUT_MODEL`): ensemble trunk -> every head, outputs ``<task>_<output>``.

``backend/model.py`` runs inside Triton's python stub and imports none of this (it keeps its own
``head_`` prefix); the model and tensor names are the repository's on-disk format, change none.
"""

from __future__ import annotations

import re

from heads.outputs import OUTPUT_NAMES
from shared.task_names import TASK_NAME_PATTERN

#: Output names of one head, in the ONNX graph's order (``num_dets, boxes, scores, classes``).
HEAD_OUTPUTS: tuple[str, ...] = tuple(OUTPUT_NAMES)

TRUNK_MODEL = "trunk"
FANOUT_MODEL = "detect"
SHARED_HEADS_MODEL = "heads"
_HEAD_PREFIX = "head_"
_TASK_PREFIX = f"{FANOUT_MODEL}_"

#: Every model name a repository may hold (tasks follow :data:`shared.task_names.TASK_NAME_PATTERN`).
MODEL_NAME_RE = re.compile(
    rf"^(?:{TRUNK_MODEL}|{FANOUT_MODEL}|{SHARED_HEADS_MODEL}"
    rf"|{_HEAD_PREFIX}{TASK_NAME_PATTERN}|{_TASK_PREFIX}{TASK_NAME_PATTERN})$"
)


def task_model(task: str) -> str:
    """``detect_<task>``: the single-task ensemble of ``task``."""
    return f"{_TASK_PREFIX}{task}"


def head_model(task: str) -> str:
    """``head_<task>``: the head model of ``task`` (``per_task`` layout)."""
    return f"{_HEAD_PREFIX}{task}"


def task_of_model(name: str) -> str | None:
    """The task of a ``detect_<task>`` model name, ``None`` for any other model."""
    return name[len(_TASK_PREFIX) :] if name.startswith(_TASK_PREFIX) else None


def task_of_head_model(name: str) -> str | None:
    """The task of a ``head_<task>`` model name, ``None`` for any other model."""
    return name[len(_HEAD_PREFIX) :] if name.startswith(_HEAD_PREFIX) else None


def head_output(task: str, output: str) -> str:
    """``<task>_<output>``: ``task``'s ``output`` (one of :data:`HEAD_OUTPUTS`) where many heads share a model."""
    return f"{task}_{output}"


def split_head_output(name: str) -> tuple[str, str] | None:
    """Inverse of :func:`head_output`: ``(task, output)``, ``None`` unless ``name`` ends in ``_<output>``."""
    for output in HEAD_OUTPUTS:
        if name.endswith(f"_{output}"):
            return name[: -len(output) - 1], output
    return None
