"""Process and port helpers for the embedded tritonserver (Linux ``/proc``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from shared.errors import ServingError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int, name: str) -> None:
    """Raise a :class:`ServingError` naming the flag to change when ``port`` has a listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, catch listeners
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServingError(
                f"{name} port {port} on {host} is already in use ({err.strerror}); "
                f"stop the other server or pick another with --{name}-port "
                f"({name}_port=...)"
            ) from err


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_processes(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid`` (Linux ``/proc``)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # fields: state, ppid, pgrp, ...
            pids.append(int(stat.parent.name))
    return pids


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every live process of group ``pgid``.

    Differences of two calls are the group's CPU time in between (a process that exited in
    between is missing from the second call: measure over steady loads).
    """
    total = 0
    for pid in group_processes(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def group_memory_mib(pgid: int) -> dict[str, float]:
    """RSS and PSS (MiB) summed over every live process of group ``pgid``, and their count.

    For the embedded server that is tritonserver plus all its backend stub processes. RSS counts
    pages shared between processes (libraries, onnxruntime) once per process, as ``ps`` would;
    PSS splits them, so it adds up to the real footprint.

    Returns:
        ``{"rss_mib": ..., "pss_mib": ..., "processes": n}``.
    """
    totals = {"Rss:": 0, "Pss:": 0}
    pids = group_processes(pgid)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key = line.split(maxsplit=1)[0] if line else ""
                if key in totals:
                    totals[key] += int(line.split()[1])
        except OSError:
            continue
    return {"rss_mib": totals["Rss:"] / 1024, "pss_mib": totals["Pss:"] / 1024, "processes": len(pids)}
