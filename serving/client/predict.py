"""Detect objects in many image files through a running server: the library behind ``polyhead predict``.

Each file is read as training reads it (:func:`transfer.data.images.read_rgb`: EXIF orientation
applied, any mode to RGB), sent by one of ``concurrency`` threads (each with its own
:class:`~serving.client.Detector`), its detections kept from ``conf`` up and, with ``save_dir``,
drawn onto it (:mod:`serving.client.drawing`). A file that cannot be read (corrupt, not an image)
is skipped and reported; the others go on. A server error stops the run (it is not the file's fault).

``image_id`` is a file's 1-based position in the sorted list (:func:`serving.client.image_sources.list_images`),
skipped files included, so the ids of the others do not depend on which files fail.

Example:
    >>> paths = list_images("photos/")
    >>> report = predict(paths, partial(Detector, "127.0.0.1:8001"), PredictOptions(conf=0.25))
    >>> report.detections_per_task(), len(report.skipped)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from serving.client.detector import Detector
from serving.client.drawing import draw_detections, save_drawing, task_colours
from serving.client.image_sources import output_names
from serving.client.protocol import Detection, resolve_tasks
from shared.errors import ConfigError, DataError, InputError
from transfer.data.images import read_rgb

__all__ = ["ImagePrediction", "PredictOptions", "PredictReport", "SkippedFile", "predict"]


@dataclass(frozen=True)
class PredictOptions:
    """What to detect and what to keep.

    Attributes:
        tasks: Tasks to run; ``None``: every task the server serves.
        conf: Smallest score kept, in ``[0, 1]`` (the heads already drop scores under their own threshold).
        concurrency: Images in flight at once (threads, one gRPC client each).
        save_dir: Where to write each image with its detections drawn; ``None``: no drawings.
        variant: Trunk variant every request asks for (``Detector.detect``'s ``variant``: a held
            variant or ``"auto"``, repositories built with ``--variants per-request``); ``None``: the server's default.
    """

    tasks: tuple[str, ...] | None = None
    conf: float = 0.25  # the usual display threshold; the heads return scores from 0.05
    concurrency: int = 4
    save_dir: Path | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise ConfigError(f"conf={self.conf} is outside [0, 1]; pass a score threshold such as 0.25")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency={self.concurrency} must be at least 1 (images in flight at once)")
        if self.tasks is not None and not self.tasks:
            raise ConfigError("tasks=() names no task; pass None for every served task, or some task names")


@dataclass(frozen=True)
class ImagePrediction:
    """The detections of one file.

    Attributes:
        image_id: 1-based position of the file in the sorted list.
        path: The file read.
        file_name: Its name relative to the folder holding every input (the drawing's name).
        width: Displayed width (after EXIF orientation), the frame of the boxes.
        height: Displayed height.
        detections: Task -> detections scored ``conf`` or more, best first.
    """

    image_id: int
    path: Path
    file_name: str
    width: int
    height: int
    detections: dict[str, list[Detection]]


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be read, and why."""

    image_id: int
    path: Path
    reason: str


@dataclass
class PredictReport:
    """What a run did.

    Attributes:
        tasks: The tasks run, in drawing-colour order.
        predictions: One per file read, sorted by ``image_id``.
        skipped: One per file that could not be read, sorted by ``image_id``.
        seconds: Wall time of the run (reading, detecting, drawing, saving).
    """

    tasks: tuple[str, ...]
    predictions: list[ImagePrediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0

    def detections_per_task(self) -> dict[str, int]:
        """Task -> detections over every image."""
        return {t: sum(len(p.detections[t]) for p in self.predictions) for t in self.tasks}

    @property
    def images_per_s(self) -> float:
        """Files handled (read or skipped) per second of wall time."""
        done = len(self.predictions) + len(self.skipped)
        return done / self.seconds if self.seconds > 0 else 0.0


class _Worker:
    """What one image needs: a detector per thread (a Detector's caches are not shared across threads)."""

    def __init__(self, connect: Callable[[], Detector], tasks: tuple[str, ...], options: PredictOptions) -> None:
        self._connect, self._tasks, self._options = connect, tasks, options
        self._local = threading.local()
        self._opened: list[Detector] = []
        self._lock = threading.Lock()
        self._colours = task_colours(tasks)

    def _detector(self) -> Detector:
        det = getattr(self._local, "detector", None)
        if det is None:
            det = self._local.detector = self._connect()
            with self._lock:
                self._opened.append(det)
        return det

    def close(self) -> None:
        with self._lock:
            for det in self._opened:
                det.close()
            self._opened.clear()

    def __call__(self, image_id: int, path: Path, file_name: str) -> ImagePrediction | SkippedFile:
        try:
            image = read_rgb(path)  # (H, W, 3) uint8, EXIF orientation applied
        except DataError as err:
            return SkippedFile(image_id, path, f"not a readable image ({err.__cause__ or err})")
        try:
            [result] = self._detector().detect(image, self._tasks, variant=self._options.variant)
        except InputError as err:  # e.g. an image of no pixels
            return SkippedFile(image_id, path, str(err))
        conf = self._options.conf
        kept = {t: [d for d in result[t] if d.score >= conf] for t in self._tasks}
        if self._options.save_dir is not None:
            save_drawing(draw_detections(image, kept, self._colours), self._options.save_dir / file_name)
        return ImagePrediction(image_id, path, file_name, image.shape[1], image.shape[0], kept)


def _check_save_dir(save_dir: Path, paths: Sequence[Path], names: Sequence[str]) -> None:
    inputs = {p.resolve() for p in paths}
    clash = [str(p) for p, n in zip(paths, names) if (save_dir / n).resolve() in inputs]
    if clash:
        raise ConfigError(f"saving drawings to {save_dir} would overwrite input image(s) {clash[:3]}; "
                          "pass another folder to save to")


def predict(
    paths: Sequence[Path],
    connect: Callable[[], Detector],
    options: PredictOptions,
    progress: bool = False,
    on_skip: Callable[[SkippedFile], None] | None = None,
) -> PredictReport:
    """Detect objects in every file of ``paths``, ``options.concurrency`` at a time.

    Args:
        paths: Image files in their ``image_id`` order (:func:`serving.client.image_sources.list_images`).
        connect: Makes a new detector (e.g. ``functools.partial(Detector, url)``), called once per thread.
        options: Tasks, score threshold, concurrency and where to save drawings.
        progress: Show a tqdm bar (stderr).
        on_skip: Called (in the calling thread) with each file skipped, as it is skipped.

    Returns:
        The :class:`PredictReport`.

    Raises:
        UnknownTaskError: A task of ``options.tasks`` is not served (lists the served ones); nothing is read.
        ConfigError: ``options.save_dir`` would overwrite an input.
        ServingError: The server is unreachable or a model failed (the run stops).
    """
    start = time.perf_counter()
    names = output_names(list(paths))
    if options.save_dir is not None:
        _check_save_dir(options.save_dir, paths, names)
    with connect() as det:
        tasks = resolve_tasks(options.tasks, det.tasks())
    report = PredictReport(tasks=tasks)
    worker = _Worker(connect, tasks, options)
    pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="predict")
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False)
    try:
        jobs = iter(enumerate(zip(paths, names), 1))
        running: set[Future] = set()
        while True:
            while len(running) < 2 * options.concurrency and (job := next(jobs, None)) is not None:
                image_id, (path, name) = job
                running.add(pool.submit(worker, image_id, path, name))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                out = future.result()  # a ServingError (or a failed save) ends the run here
                if isinstance(out, SkippedFile):
                    report.skipped.append(out)
                    if on_skip is not None:
                        on_skip(out)
                else:
                    report.predictions.append(out)
                bar.update()
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        worker.close()
    report.predictions.sort(key=lambda p: p.image_id)
    report.skipped.sort(key=lambda s: s.image_id)
    report.seconds = time.perf_counter() - start
    return report
