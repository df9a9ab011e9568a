"""gRPC client SDK: ``Detector`` (sync) and ``AsyncDetector`` (asyncio) over ``tritonclient.grpc``.

Everything the client needs comes from the server: input size from the ``trunk`` config, class
names from each ``detect_<task>`` config's ``classes`` parameter, served tasks from the ready
``detect_<task>`` models of the repository index (or, where the index is restricted to the
model-control key, of the inference statistics, which list the loaded models).

Example:
    >>> det = Detector("127.0.0.1:8001")
    >>> det.tasks()
    ['cars', 'people']
    >>> [result] = det.detect(image)              # all tasks, one fan-out call
    >>> result["cars"][0].box, result["cars"][0].class_name
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from serving.client import protocol as core
from serving.client.protocol import NOT_HELD_MARK, ImageResult, UnknownTaskError, UnknownVariantError
from serving.triton.model_control import is_restricted_error
from serving.triton.model_names import FANOUT_MODEL, TRUNK_MODEL, task_model, task_of_model
from shared.errors import ServingError

__all__ = ["AsyncDetector", "Detector"]

_TASKS_TTL_S = 10.0  # served tasks are re-read after this long (hot-added tasks appear)


class _Base:
    """State and logic shared by the sync and async detectors (no I/O)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        timeout_s: float = 10.0,
        retries: int = 3,
        input_size: int | None = None,
        backoff_s: float = 0.1,
    ) -> None:
        self._client = self._mod.InferenceServerClient(url)
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._input_size = input_size
        self._configs: dict[str, object] = {}
        self._tasks: tuple[str, ...] | None = None
        self._tasks_at = 0.0
        self._ready_models: set[str] = set()
        self._index_restricted = False  # the server wants the admin key for its index: use statistics

    def refresh(self) -> None:
        """Forget cached server metadata (tasks, model configs); the next call re-reads it."""
        self._configs = {}  # a new dict: a detect() in another thread keeps the one it started with
        self._tasks = None

    def _tasks_fresh(self) -> bool:
        return self._tasks is not None and time.monotonic() - self._tasks_at < _TASKS_TTL_S

    def _set_index(self, models: Sequence) -> list[str]:
        ready = sorted(
            task for m in models if (task := task_of_model(m.name)) is not None and m.state == "READY"
        )
        self._tasks, self._tasks_at = tuple(ready), time.monotonic()
        self._configs = {}  # reloaded models may have new configs; in-flight detect() calls keep theirs
        self._ready_models = {m.name for m in models if m.state == "READY"}
        return ready

    def _retry_delay(self, err: InferenceServerException, attempt: int) -> float | None:
        """Seconds to wait before retrying, or ``None`` when ``err`` is not retryable."""
        restricted = is_restricted_error(str(err.message()))  # a refusal, not an outage: retrying is futile
        if "UNAVAILABLE" in str(err.status()) and not restricted and attempt < self.retries:
            return self.backoff_s * (2**attempt)
        return None

    def _error(self, err: InferenceServerException, model: str) -> ServingError:
        status = str(err.status() or "")
        if "DEADLINE_EXCEEDED" in status:
            return ServingError(
                f"model '{model}' at {self.url}: no answer within {self.timeout_s} s "
                "(raise timeout_s or check server load)"
            )
        if "UNAVAILABLE" in status and not is_restricted_error(str(err.message())):
            return ServingError(
                f"server {self.url} unavailable after {self.retries + 1} attempts "
                f"(model '{model}'): {err.message()}; is it running?"
            )
        if NOT_HELD_MARK in str(err.message()):
            return UnknownVariantError(f"model '{model}' at {self.url}: {err.message()}")
        return ServingError(f"model '{model}' at {self.url} failed: {err.message()}")

    def _inputs(self, batch: np.ndarray) -> list:
        inp = self._mod.InferInput("images", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        return [inp]

    # One detect() works on the configs dict it started with (``configs``): a refresh in another
    # thread or task replaces ``self._configs`` instead of clearing it under the call's feet.

    def _plan(self, tasks: Sequence[str] | str | None, configs: dict) -> tuple[tuple[str, ...], list[core.ModelPlan]]:
        wanted = core.resolve_tasks(tasks, self._tasks or ())
        fan = core.ensemble_tasks(configs[FANOUT_MODEL]) if FANOUT_MODEL in configs else ()
        return wanted, core.plan_models(wanted, fan)

    def _config_names(self, plans: list[core.ModelPlan], configs: dict) -> list[str]:
        """Configs needed before inferring ``plans`` (not cached yet)."""
        names = [TRUNK_MODEL] if self._input_size is None else []
        names += [p.model for p in plans] + [task_model(t) for p in plans for t in p.tasks]
        return [n for n in dict.fromkeys(names) if n not in configs]

    def _size(self, configs: dict) -> int:
        if self._input_size is None:
            self._input_size = int(configs[TRUNK_MODEL].input[0].dims[-1])  # images [3, S, S]
        return self._input_size

    def _chunks(self, plan: core.ModelPlan, n: int, configs: dict) -> list[tuple[int, int]]:
        mbs = max(1, int(configs[plan.model].max_batch_size))
        return [(s, min(n, s + mbs)) for s in range(0, n, mbs)]

    def _collect(
        self, results: list[dict], plan: core.ModelPlan, start: int, outputs: dict, infos: list, configs: dict
    ) -> None:
        for task in plan.tasks:
            names = core.class_names(configs[task_model(task)], task_model(task))
            for i, dets in enumerate(core.decode(outputs, plan, task, infos, names)):
                results[start + i][task] = dets


class Detector(_Base):
    """Synchronous polyhead client.

    Args:
        url: gRPC address ``host:port`` of Triton.
        timeout_s: Per-call deadline (gRPC ``client_timeout``).
        retries: Retries (exponential backoff from ``backoff_s``) when the server is UNAVAILABLE.
        input_size: Model input side; default read from the ``trunk`` config.
        backoff_s: First retry delay.
    """

    _mod = grpcclient

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, model: str, fn: Callable, *args: object, **kwargs: object) -> object:
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, client_timeout=self.timeout_s, **kwargs)
            except InferenceServerException as err:
                delay = self._retry_delay(err, attempt)
                if delay is None:
                    raise self._error(err, model) from err
                time.sleep(delay)
        raise AssertionError("unreachable")

    def tasks(self, refresh: bool = False) -> list[str]:
        """Served tasks: those with a READY ``detect_<task>`` model, sorted."""
        if refresh or not self._tasks_fresh():
            if not self._index_restricted:
                try:
                    index = self._call("<repository index>", self._client.get_model_repository_index)
                    return self._set_index(index.models)
                except ServingError as err:
                    if not is_restricted_error(str(err)):
                        raise
                    self._index_restricted = True
            stats = self._call("<statistics>", self._client.get_inference_statistics)
            return self._set_index(core.ready_from_statistics(stats))
        return list(self._tasks or ())

    def detect(
        self, images: object, tasks: str | Sequence[str] | None = None, variant: str | None = None,
        arrived_unix_ns: int | None = None,
    ) -> list[ImageResult]:
        """Detect objects in one image or a list of images.

        Args:
            images: ``[H, W, 3]`` uint8 RGB array, PIL image, ``[N, H, W, 3]`` array, or a list.
            tasks: ``None`` (every served task, one fan-out call), a task name, or a list of names.
            variant: Trunk variant to run (a repository built with ``--variants per-request``): a
                held variant, ``"auto"`` (the server picks the most accurate one its queue allows),
                or ``None``: the server's default (the controller's choice).
            arrived_unix_ns: When the request reached you (``time.time_ns()``), if it queued on your
                side before this call; ``auto`` counts the request's wait from it (default: now).

        Returns:
            One :class:`ImageResult` per image (always a list), boxes in original pixels.

        Raises:
            InputError: Bad image (type, dtype, shape).
            UnknownTaskError: A task that is not served (lists the served ones).
            UnknownVariantError: A variant the server does not hold (lists the held ones).
            ServingError: Server unreachable, timeout, or a model error (names the model).
        """
        arrays = core.to_images(images)
        parameters = core.stamped(core.request_parameters(variant), arrived_unix_ns)
        self.tasks()
        configs = self._configs
        if FANOUT_MODEL in self._ready_models and FANOUT_MODEL not in configs:
            configs[FANOUT_MODEL] = self._config(FANOUT_MODEL)
        try:
            wanted, plans = self._plan(tasks, configs)
        except UnknownTaskError:  # maybe hot-added since the last look
            self.tasks(refresh=True)
            configs = self._configs
            if FANOUT_MODEL in self._ready_models:
                configs[FANOUT_MODEL] = self._config(FANOUT_MODEL)
            wanted, plans = self._plan(tasks, configs)
        for name in self._config_names(plans, configs):
            configs[name] = self._config(name)
        batch, infos = core.prepare_batch(arrays, self._size(configs))
        results: list[dict] = [{} for _ in arrays]
        for plan in plans:
            for s, e in self._chunks(plan, len(arrays), configs):
                outputs = self._infer(plan, batch[s:e], parameters)
                self._collect(results, plan, s, outputs, infos[s:e], configs)
        return [ImageResult({t: r[t] for t in wanted}) for r in results]

    def _config(self, model: str) -> object:
        return self._call(model, self._client.get_model_config, model).config

    def _infer(self, plan: core.ModelPlan, batch: np.ndarray, parameters: dict) -> dict[str, np.ndarray]:
        names = plan.output_names()
        outs = [grpcclient.InferRequestedOutput(n) for n in names]
        result = self._call(plan.model, self._client.infer, plan.model, self._inputs(batch), outputs=outs,
                            parameters=parameters)
        return {n: result.as_numpy(n) for n in names}


class AsyncDetector(_Base):
    """asyncio polyhead client (same arguments and behaviour as :class:`Detector`)."""

    _mod = aioclient

    async def close(self) -> None:
        """Close the gRPC channel."""
        await self._client.close()

    async def __aenter__(self) -> AsyncDetector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, model: str, fn: Callable, *args: object, **kwargs: object) -> object:
        for attempt in range(self.retries + 1):
            try:
                return await fn(*args, client_timeout=self.timeout_s, **kwargs)
            except InferenceServerException as err:
                delay = self._retry_delay(err, attempt)
                if delay is None:
                    raise self._error(err, model) from err
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def tasks(self, refresh: bool = False) -> list[str]:
        """Served tasks: those with a READY ``detect_<task>`` model, sorted."""
        if refresh or not self._tasks_fresh():
            if not self._index_restricted:
                try:
                    index = await self._call("<repository index>", self._client.get_model_repository_index)
                    return self._set_index(index.models)
                except ServingError as err:
                    if not is_restricted_error(str(err)):
                        raise
                    self._index_restricted = True
            stats = await self._call("<statistics>", self._client.get_inference_statistics)
            return self._set_index(core.ready_from_statistics(stats))
        return list(self._tasks or ())

    async def detect(
        self, images: object, tasks: str | Sequence[str] | None = None, variant: str | None = None,
        arrived_unix_ns: int | None = None,
    ) -> list[ImageResult]:
        """Async :meth:`Detector.detect`; batches of one call run concurrently."""
        arrays = core.to_images(images)
        parameters = core.stamped(core.request_parameters(variant), arrived_unix_ns)
        await self.tasks()
        configs = self._configs
        if FANOUT_MODEL in self._ready_models and FANOUT_MODEL not in configs:
            configs[FANOUT_MODEL] = await self._config(FANOUT_MODEL)
        try:
            wanted, plans = self._plan(tasks, configs)
        except UnknownTaskError:
            await self.tasks(refresh=True)
            configs = self._configs
            if FANOUT_MODEL in self._ready_models:
                configs[FANOUT_MODEL] = await self._config(FANOUT_MODEL)
            wanted, plans = self._plan(tasks, configs)
        for name in self._config_names(plans, configs):
            configs[name] = await self._config(name)
        batch, infos = core.prepare_batch(arrays, self._size(configs))
        results: list[dict] = [{} for _ in arrays]
        jobs = [(plan, s, e) for plan in plans for s, e in self._chunks(plan, len(arrays), configs)]
        outputs = await asyncio.gather(*(self._infer(p, batch[s:e], parameters) for p, s, e in jobs))
        for (plan, s, e), out in zip(jobs, outputs, strict=True):
            self._collect(results, plan, s, out, infos[s:e], configs)
        return [ImageResult({t: r[t] for t in wanted}) for r in results]

    async def _config(self, model: str) -> object:
        return (await self._call(model, self._client.get_model_config, model)).config

    async def _infer(self, plan: core.ModelPlan, batch: np.ndarray, parameters: dict) -> dict[str, np.ndarray]:
        names = plan.output_names()
        outs = [aioclient.InferRequestedOutput(n) for n in names]
        result = await self._call(
            plan.model, self._client.infer, plan.model, self._inputs(batch), outputs=outs,
            parameters=parameters,
        )
        return {n: result.as_numpy(n) for n in names}
