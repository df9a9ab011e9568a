"""Which device a latency figure belongs to: the keys of ``variant.json``'s ``latency_ms``.

A key says the device and how it was driven: ``cpu-<model>-<threads>t`` (the CPU model name from
``/proc/cpuinfo`` or :func:`platform.processor`, sanitised, and the onnxruntime intra-op threads,
e.g. ``cpu-amd-epyc-7b13-2t``) or ``cuda-<name>`` (:func:`torch.cuda.get_device_name`, sanitised,
e.g. ``cuda-nvidia-h200``). Its *kind* is the part before the first ``-``; keys written by older
versions (``cpu-x86_64-2t``) read as kind ``cpu`` like any other.

:func:`comparison_key` picks the one key a set of variants is compared on: never two devices in
one comparison.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.errors import ConfigError

#: onnxruntime intra-op threads of every CPU latency measurement (and the ``<threads>t`` of CPU keys).
MEASURE_THREADS = 2
#: ``--device`` values of the measuring commands.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: The command that adds a device's figures to a catalogue (named in fallback warnings and errors).
MEASURE_HINT = "`polyhead measure --workdir W --device cuda|cpu` on the serving machine"

_NOISE = (
    r"\((?:r|tm|c)\)",  # Intel(R) Xeon(R)
    r"@.*$",  # CPU @ 2.20GHz
    r"\b\d+-core\b",  # 64-Core
    r"\b(?:cpu|processor|with radeon graphics)\b",
)


class LatencyDeviceWarning(UserWarning):
    """Latency figures of another device than the one asked for were used; the line says which and why."""


def sanitise(text: str) -> str:
    """``"AMD EPYC 7B13 64-Core Processor"`` -> ``"amd-epyc-7b13"`` (lower case, ``[a-z0-9.-]``, <= 40 chars)."""
    text = text.lower()
    for pattern in _NOISE:
        text = re.sub(pattern, " ", text)
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-.")[:40].strip("-.")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, sanitised: ``/proc/cpuinfo``'s first ``model name``, else the platform's.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (default: read it; ``""`` where it does not exist).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name" and sanitise(value):
            return sanitise(value)
    return sanitise(platform.processor()) or sanitise(platform.machine()) or "unknown"


def cpu_key(threads: int = MEASURE_THREADS, cpuinfo: str | None = None) -> str:
    """``cpu-<model>-<threads>t``, e.g. ``cpu-amd-epyc-7b13-2t`` (``cpuinfo`` as in :func:`cpu_model`)."""
    return f"cpu-{cpu_model(cpuinfo)}-{int(threads)}t"


def cuda_key(device_name: str) -> str:
    """``"NVIDIA H200"`` -> ``cuda-nvidia-h200``."""
    return f"cuda-{sanitise(device_name) or 'unknown'}"


def local_device_key(device: str = "auto", threads: int = MEASURE_THREADS) -> str:
    """The key of this machine's ``device`` (``auto``: CUDA when torch sees a GPU, else the CPU).

    Raises:
        ConfigError: ``device`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or CUDA is asked
            for and torch sees none.
    """
    from transfer.training.devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        import torch

        return cuda_key(torch.cuda.get_device_name(resolved))
    return cpu_key(threads)


def device_kind(key: str) -> str:
    """``cuda-nvidia-h200`` -> ``cuda``; ``cpu-x86_64-2t`` -> ``cpu``."""
    return key.split("-", 1)[0]


def comparison_key(wanted: str, tables: Sequence[Mapping[str, object]]) -> tuple[str | None, str]:
    """The one ``latency_ms`` key that every table has, preferring ``wanted``, then its kind.

    Args:
        wanted: The key asked for (the serving device).
        tables: The ``latency_ms`` of every variant compared.

    Returns:
        ``(key, why)``: ``why`` is ``""`` when ``key == wanted``, else names the variants without
        ``wanted``'s figures; ``key`` is ``None`` when no key is common to all tables.
    """
    common = [k for k in (tables[0] if tables else {}) if all(k in t for t in tables)]
    if wanted in common:
        return wanted, ""
    missing = sum(wanted not in t for t in tables)
    why = f"{missing} of {len(tables)} variants have no latency for {wanted}"
    same_kind = [k for k in common if device_kind(k) == device_kind(wanted)]
    return (same_kind or common or [None])[0], why


def require_known_key(wanted: str, tables: Sequence[Mapping[str, object]], what: str) -> None:
    """Refuse a key no table has (a typo, or a device never measured), naming the keys there are.

    Raises:
        ConfigError: ``wanted`` is in none of ``tables``.
    """
    if any(wanted in t for t in tables):
        return
    have = sorted({k for t in tables for k in t})
    raise ConfigError(f"{what} {wanted!r}: no variant has latency figures for it (have {have or 'none'}); "
                      f"pass one of those or 'auto', or measure it on that machine: {MEASURE_HINT}")
