"""Data-parallel training across processes: the rank's view of the job, the process group and a local launcher.

A worker learns its place from the variables torchrun (``torch.distributed.run``) or the elastic
launcher sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``PORT``).
:func:`launch` starts ``nproc`` such workers on this machine through
``torch.distributed.launcher.api.elastic_launch``; several machines run ``torchrun --nnodes ...``
themselves (docs/deploy.md, "Distributed training").
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from shared.errors import ConfigError, PolyheadError

#: How long a rank waits at a collective (a barrier while rank 0 exports and evaluates, included).
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job (the defaults: a single process).

    Attributes:
        rank: Global rank, 0..world_size-1; rank 0 alone writes files.
        world_size: Processes in the job.
        local_rank: Rank on this machine (selects the GPU).
        local_world_size: Processes on this machine (they share its CPU cores).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes checkpoints, exports and metrics."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process (and so a process group)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op for one process)."""
        if self.is_distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; unset it or let torchrun "
                          "set it") from None


def env_context() -> DistContext:
    """The :class:`DistContext` the launcher's environment variables describe (one process without them)."""
    world = _env_int("WORLD_SIZE", 1)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    return DistContext(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0), local_world)


def launched() -> bool:
    """Whether this process is a worker that torchrun or :func:`launch` started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistContext]:
    """Join the job's process group (gloo on the CPU, nccl on CUDA) for the duration of the block.

    With one process nothing is initialised. A group this call created is destroyed on exit.
    """
    ctx = env_context()
    owned = ctx.is_distributed and not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
    try:
        yield ctx
    finally:
        if owned:
            dist.destroy_process_group()


def _entry(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[str, Any]:
    """A worker's entry point: run ``fn``, and hand a polyhead error back to the launcher as a value."""
    try:
        return "ok", fn(*args, **kwargs)
    except PolyheadError as exc:
        return "error", exc


def launch(nproc: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` in ``nproc`` fresh processes on this machine, as one torch.distributed job.

    The processes are spawned by ``elastic_launch`` with a local c10d rendezvous on a free port
    (like ``torchrun --standalone --nproc-per-node nproc``) and no restarts; inside, ``fn`` sees the
    launcher's variables (:func:`env_context`). ``fn`` and its arguments must be picklable
    (module-level functions, plain values).

    Args:
        nproc: Processes, >= 1.
        fn: What every process runs.
        *args: Positional arguments of ``fn``.
        **kwargs: Keyword arguments of ``fn``.

    Returns:
        Every rank's return value, in rank order.

    Raises:
        ConfigError: If ``nproc`` < 1.
        PolyheadError: The first (lowest rank's) polyhead error a worker raised.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: need at least 1 process; pass --nproc 1 or more")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5, start_method="spawn",
    )
    results = elastic_launch(config, _entry)(fn, args, kwargs)
    ordered = [results[rank] for rank in sorted(results)]
    for status, value in ordered:
        if status == "error":
            raise value
    return [value for _, value in ordered]
