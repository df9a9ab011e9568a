"""Where training runs: the device choice, its mixed precision and CPU thread settings, in one place.

``train``, and later ``compress`` and ``add-task``, call :func:`plan_device` once and use the
returned :class:`DevicePlan` for autocast, the gradient scaler, threads and moving data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from shared.errors import ConfigError

#: Values of ``--device``: ``auto`` picks CUDA when available, else the CPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device ``--device name`` means.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: This process's rank on its node; with ``cuda`` it selects GPU ``local_rank``.

    Returns:
        ``cpu`` or ``cuda:<index>``.

    Raises:
        ConfigError: For another name, or ``cuda`` when torch sees no CUDA device.
    """
    name = str(name).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name!r} is not one of {', '.join(DEVICE_CHOICES)} (or cuda:N); pick one of them")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"--device {name} but torch {torch.__version__} ({build}) sees no CUDA device; "
            "run with --device cpu (or auto), or install a CUDA build of torch on a machine with an NVIDIA GPU"
        )
    index = int(name.split(":", 1)[1]) if ":" in name else local_rank
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name} (local rank {local_rank}) but only {torch.cuda.device_count()} CUDA "
                          "device(s) are visible; lower --nproc or pick an existing index")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class DevicePlan:
    """A device and how to train on it.

    Attributes:
        device: Where the model, batches and teacher live.
        amp_dtype: Autocast dtype (``bfloat16`` on CUDA when supported, else ``float16``); ``None``
            on the CPU (full precision).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None

    @property
    def is_cuda(self) -> bool:
        """Whether this plan trains on a GPU."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of a forward pass (a no-op without ``amp_dtype``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler: enabled for ``float16`` only (bf16 and fp32 gradients need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def set_threads(self, threads: int) -> None:
        """``torch.set_num_threads(threads)`` on the CPU; on CUDA the GPU does the work, threads stay as they are."""
        if not self.is_cuda:
            torch.set_num_threads(max(1, int(threads)))

    def move(self, obj: Any) -> Any:
        """``obj`` with every tensor (in nested lists, tuples and dicts) on :attr:`device`."""
        return map_tensors(obj, lambda t: t.to(self.device, non_blocking=self.is_cuda))


#: The CPU in fp32: what training code uses when no plan is given.
CPU_PLAN = DevicePlan(torch.device("cpu"))


def scaled_step(
    scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer, loss: torch.Tensor,
    clip: Iterable[torch.nn.Parameter] | None = None, max_norm: float = 10.0,
) -> None:
    """One optimiser step from ``loss`` through ``scaler`` (:meth:`DevicePlan.grad_scaler`).

    Zeroes the gradients, back-propagates the scaled loss, unscales and clips ``clip``'s gradients
    to ``max_norm`` (when given), steps and updates the scale; with a disabled scaler this is a
    plain ``backward`` / ``step``.
    """
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    scaler.step(opt)
    scaler.update()


def plan_device(name: str = "auto", local_rank: int = 0) -> DevicePlan:
    """Resolve ``--device name`` (see :func:`resolve_device`) and choose its mixed precision.

    On CUDA the GPU is made current (``torch.cuda.set_device``) and autocast uses bf16 where the
    GPU supports it (Ampere and later), else fp16 with a gradient scaler; the CPU trains in fp32.
    """
    device = resolve_device(name, local_rank)
    if device.type != "cuda":
        return DevicePlan(device)
    torch.cuda.set_device(device)
    return DevicePlan(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def map_tensors(obj: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor in nested dicts, lists and tuples (other values pass unchanged)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor copied to the CPU: a checkpoint that loads on any machine."""
    return map_tensors(obj, lambda t: t.detach().cpu())


def cpu_module(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` if its parameters are on the CPU, else a CPU copy (to save device-independent weights)."""
    if all(p.device.type == "cpu" for p in module.parameters()):
        return module
    import copy

    return copy.deepcopy(module).cpu()
