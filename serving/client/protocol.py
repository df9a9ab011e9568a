"""Transport-free parts of the polyhead client: result types, image checks, request planning, decoding.

Shared by the sync :class:`serving.client.Detector` and :class:`serving.client.AsyncDetector`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.triton.model_names import FANOUT_MODEL, HEAD_OUTPUTS, head_output, split_head_output, task_model
from shared.errors import InputError, PolyheadError, ServingError
from shared.letterbox import LetterboxInfo, letterbox


class UnknownTaskError(PolyheadError, LookupError):
    """A requested task is not served; the message lists the served tasks."""


class UnknownVariantError(PolyheadError, LookupError):
    """A requested trunk variant is not held by the server; the message lists the held variants."""


#: What the per-request variants backend answers for a variant it does not hold (it then lists them).
NOT_HELD_MARK = "is not held; held variants"


#: Request parameter carrying the request's arrival (``time.time_ns()``, Unix ns; the ``detect`` call's
#: start, or the caller's ``arrived_unix_ns``): the per-request variants backend subtracts it from its
#: own clock to learn how long the request already waited
#: (``serving/triton/backend/variant_choice.py``, which keeps its own copy of the name).
SENT_PARAMETER = "sent_unix_ns"


def stamped(parameters: dict, arrived_unix_ns: int | None = None) -> dict:
    """``parameters`` with :data:`SENT_PARAMETER` set to ``arrived_unix_ns``, else to now.

    Raises:
        InputError: ``arrived_unix_ns`` is not a whole number of nanoseconds.
    """
    if arrived_unix_ns is None:
        return {**parameters, SENT_PARAMETER: time.time_ns()}
    if isinstance(arrived_unix_ns, bool) or not isinstance(arrived_unix_ns, (int, np.integer)):
        raise InputError(f"arrived_unix_ns must be an int of Unix ns, as time.time_ns() gives; got {arrived_unix_ns!r}")
    return {**parameters, SENT_PARAMETER: int(arrived_unix_ns)}


def request_parameters(variant: str | None) -> dict[str, str]:
    """The inference request parameters that ask for trunk ``variant`` (``{}`` for the server's default).

    Args:
        variant: A variant the server holds, ``"auto"`` (the server chooses per request), or ``None``.

    Raises:
        InputError: ``variant`` is not ``None`` nor a non-empty string.
    """
    if variant is None:
        return {}
    if not isinstance(variant, str) or not variant:
        raise InputError(f"variant must be None or a variant name such as 'pruned-r1' (or 'auto'), got {variant!r}")
    return {"variant": variant}


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in original image pixels.
        score: Confidence in ``[0, 1]``.
        class_id: Index into the task's class names.
        class_name: Name of the class.
    """

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    class_name: str


@dataclass(frozen=True)
class ImageResult:
    """Detections of one image, per task.

    Attributes:
        detections: Task name -> detections sorted by decreasing score.
    """

    detections: dict[str, list[Detection]] = field(default_factory=dict)

    def __getitem__(self, task: str) -> list[Detection]:
        """Detections of ``task``."""
        return self.detections[task]


@dataclass(frozen=True)
class ModelPlan:
    """One model call covering some tasks.

    Attributes:
        model: Triton model name (``detect_<task>`` or ``detect``).
        tasks: Tasks answered by this call.
        prefixed: Output names are ``<task>_<output>`` (fan-out ensemble).
    """

    model: str
    tasks: tuple[str, ...]
    prefixed: bool

    def output_names(self) -> list[str]:
        """Outputs to request (only the planned tasks' outputs)."""
        return [head_output(t, o) if self.prefixed else o for t in self.tasks for o in HEAD_OUTPUTS]


def to_images(images: object) -> list[np.ndarray]:
    """Normalise one image or a sequence of images to a list of ``[H, W, 3]`` uint8 arrays.

    Accepts numpy arrays ``[H, W, 3]`` (one image) or ``[N, H, W, 3]`` (a batch), PIL images,
    or a list/tuple of those.

    Raises:
        InputError: Naming the bad image's index, type, dtype or shape and the fix.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence = list(images)
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        items = [images]
    if len(items) == 0:
        raise InputError("detect() got no images; pass an [H, W, 3] uint8 array or a list of them")
    return [_one_image(img, i) for i, img in enumerate(items)]


def _one_image(img: object, index: int) -> np.ndarray:
    if hasattr(img, "convert") and hasattr(img, "size"):  # PIL image
        img = np.asarray(img.convert("RGB"))
    if not isinstance(img, np.ndarray):
        raise InputError(
            f"image {index}: expected a numpy array [H, W, 3] uint8 RGB or a PIL image, "
            f"got {type(img).__name__}"
        )
    if img.dtype != np.uint8:
        raise InputError(
            f"image {index}: dtype {img.dtype}, expected uint8; for floats in [0, 1] use "
            "(image * 255).round().astype(np.uint8)"
        )
    if img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
        raise InputError(
            f"image {index}: shape {img.shape}, expected [H, W, 3] RGB channels-last; "
            "convert grayscale/RGBA with PIL .convert('RGB') or CHW with .transpose(1, 2, 0)"
        )
    return img


def prepare_batch(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Letterbox every image to ``size`` and stack as ``[N, 3, size, size]`` uint8."""
    canvases, infos = [], []
    for img in images:
        canvas, info = letterbox(img, size)  # (S, S, 3)
        canvases.append(canvas.transpose(2, 0, 1))  # (3, S, S)
        infos.append(info)
    return np.ascontiguousarray(np.stack(canvases)), infos


def resolve_tasks(tasks: str | Sequence[str] | None, served: Sequence[str]) -> tuple[str, ...]:
    """Return the requested tasks (all served ones for ``None``), checked against ``served``.

    Raises:
        UnknownTaskError: If a task is not served (message lists the served tasks).
        InputError: If ``tasks`` has the wrong type or is empty.
    """
    if tasks is None:
        if not served:
            raise ServingError("the server serves no task (no ready detect_<task> model); load one first")
        return tuple(served)
    wanted = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not wanted or not all(isinstance(t, str) for t in wanted):
        raise InputError(f"tasks must be None, a task name or a non-empty list of names, got {tasks!r}")
    unknown = [t for t in wanted if t not in served]
    if unknown:
        raise UnknownTaskError(f"task(s) {unknown} not served; served tasks: {sorted(served)}")
    return tuple(dict.fromkeys(wanted))


def plan_models(tasks: tuple[str, ...], fanout_tasks: Sequence[str]) -> list[ModelPlan]:
    """One call to the fan-out ``detect`` for the tasks it has (when >1), ``detect_<task>`` for the rest."""
    fan = tuple(t for t in tasks if t in fanout_tasks)
    if len(fan) < 2:
        fan = ()
    plans = [ModelPlan(FANOUT_MODEL, fan, True)] if fan else []
    plans += [ModelPlan(task_model(t), (t,), False) for t in tasks if t not in fan]
    return plans


def decode(
    outputs: dict[str, np.ndarray],
    plan: ModelPlan,
    task: str,
    infos: list[LetterboxInfo],
    classes: Sequence[str],
) -> list[list[Detection]]:
    """Turn one task's raw outputs for a batch into detections in original pixels.

    Args:
        outputs: Output name -> array with a leading batch axis.
        plan: The call that produced them (for the output names).
        task: Which task to decode.
        infos: Letterbox transform of each image of the batch.
        classes: Class names of the task.

    Returns:
        Per image, the detections (padding and slots past ``num_dets`` dropped).
    """

    def get(name: str) -> np.ndarray:
        return outputs[head_output(task, name) if plan.prefixed else name]

    num, boxes, scores, labels = get("num_dets"), get("boxes"), get("scores"), get("classes")
    per_image = []
    for i, info in enumerate(infos):
        n = int(num[i].reshape(-1)[0])  # num_dets [B, 1]
        keep = labels[i, :n] >= 0  # classes [B, K]; -1 is padding
        b = info.to_original(boxes[i, :n][keep]) if keep.any() else np.zeros((0, 4), np.float32)
        per_image.append(
            [
                Detection(
                    box=tuple(float(v) for v in box),
                    score=float(s),
                    class_id=int(c),
                    class_name=classes[int(c)] if int(c) < len(classes) else str(int(c)),
                )
                for box, s, c in zip(b, scores[i, :n][keep], labels[i, :n][keep], strict=True)
            ]
        )
    return per_image


def class_names(config: object, model: str) -> tuple[str, ...]:
    """Class names from a ``detect_<task>`` ModelConfig's ``classes`` JSON parameter."""
    try:
        return tuple(json.loads(config.parameters["classes"].string_value))
    except (KeyError, ValueError) as err:
        raise ServingError(
            f"model '{model}' has no valid 'classes' parameter; rebuild the repository "
            "with serving.triton.repository.build_repository"
        ) from err


@dataclass(frozen=True)
class ServedModel:
    """A model the server has loaded (what the client needs of a repository-index entry)."""

    name: str
    state: str = "READY"


def ready_from_statistics(stats: object) -> list[ServedModel]:
    """Loaded models from an inference-statistics answer (it lists only ready models).

    Used when the repository index is restricted to holders of the model-control key
    (:mod:`serving.triton.model_control`): statistics stay open to serving clients.
    """
    return [ServedModel(name) for name in sorted({m.name for m in stats.model_stats})]


def ensemble_tasks(config: object) -> tuple[str, ...]:
    """Tasks a fan-out ``detect`` config serves (from its ``<task>_boxes`` outputs)."""
    parsed = (split_head_output(o.name) for o in config.output)
    return tuple(p[0] for p in parsed if p is not None and p[1] == "boxes")
