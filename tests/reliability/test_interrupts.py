"""`polyhead add-task` and `polyhead compress` killed (SIGKILL) or interrupted (SIGINT) at several points.

Each command runs as a real subprocess on a tiny workspace. After every interruption the visible
workspace holds only complete artifacts (no partial ``heads/<name>`` or ``trunk/<variant>``), the
reference trunk is untouched, and rerunning the command completes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shared.artifacts import sha256_file

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # 1 thread: fastest on 2 shared cores
Trigger = Callable[[subprocess.Popen], bool]


@pytest.fixture(scope="module")
def template(tiny_workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nano trunk `reference` (+ an admitted copy `narrow`) with one head `signs`; untrained."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tiny_workspace(tmp_path_factory.mktemp("interrupts"), 12, 4, {"narrow": True})
    finally:
        torch.set_num_threads(threads)


def _visible(root: Path) -> dict[str, str]:
    """Every path under ``root`` outside hidden (staging) directories and files -> sha256 or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = "dir" if path.is_dir() else sha256_file(path)
    return out


def _interrupt(cmd: list[str], trigger: Trigger, delay: float, sig: int, timeout: float = 60) -> tuple[int, str]:
    """Start ``cmd``; once ``trigger(proc)`` holds, wait ``delay`` s and send ``sig``.

    Returns:
        ``(returncode, output)``; a run that ends before the trigger is returned as it ended.
    """
    # SIGINT back to default in the child: under a non-interactive shell's `cmd &` it is inherited as
    # ignored, and Python then never raises KeyboardInterrupt (Ctrl-C would do nothing).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while not trigger(proc) and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"trigger never held within {timeout} s: {proc.communicate()[0][-2000:]}")
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]  # reaps it: its pid is then gone
    return proc.returncode, out


def _after(seconds: float) -> Trigger:
    start = time.monotonic()
    return lambda proc: time.monotonic() - start >= seconds


def test_add_task_killed_at_any_point_leaves_the_workspace_consistent_and_reruns(template, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(template / "work", work)
    data = template / "data"
    cmd = [sys.executable, "-m", "serving.cli.main", "add-task", "--workdir", str(work), "--name", "shapes",
           "--train-json", str(data / "shapes/train.json"), "--val-json", str(data / "shapes/val.json"),
           "--images", str(data / "images"), "--epochs", "1", "--views", "1"]
    before = _visible(work)
    reference = {p: sha256_file(work / p) for p in ("trunk/reference/model.onnx", "checkpoints/nano.pt")}

    def stage(proc: subprocess.Popen) -> list[Path]:
        return list(work.glob(f".add-task-shapes-*-{proc.pid}-*"))

    points: list[tuple[str, Trigger | None, float, int]] = [
        ("starting", None, 1.0, signal.SIGKILL),  # imports, validation
        ("staged", lambda p: bool(stage(p)), 0.0, signal.SIGKILL),  # feature cache being built
        ("training", lambda p: bool(stage(p)), 0.7, signal.SIGKILL),
        ("evaluating", lambda p: any((s / "heads/shapes").is_dir() for s in stage(p)), 0.0, signal.SIGKILL),
        ("ctrl-c", lambda p: bool(stage(p)), 0.5, signal.SIGINT),
    ]
    for label, trigger, delay, sig in points:
        code, out = _interrupt(cmd, trigger or _after(0.0), delay, sig)
        assert code == -sig or (sig == signal.SIGINT and code == 130), (label, code, out[-2000:])
        assert not (work / "heads/shapes").exists(), label
        assert _visible(work) == before, label
        if sig == signal.SIGINT:  # it cleaned its own stage; stale ones were removed at its start
            assert "interrupted" in out and not list(work.glob(".add-task-*")), (label, out[-2000:])
        elif trigger is not None:
            assert list(work.glob(".add-task-*")), f"{label}: a SIGKILL cannot clean up its staging directory"
    stale = work / ".add-task-shapes-deadhost-1-abc"  # another host's (or a foreign) directory: kept
    stale.mkdir()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert [p.name for p in work.glob(".*")] == [stale.name]  # every dead run's staging removed
    head = work / "heads/shapes"
    meta = json.loads((head / "head.json").read_text())
    assert meta["sha256"] == sha256_file(head / "model.onnx") and set(meta["map"]) == {"reference", "narrow"}
    for variant in ("reference", "narrow"):
        assert "shapes" in json.loads((work / "trunk" / variant / "variant.json").read_text())["map"]
    assert reference == {p: sha256_file(work / p) for p in reference}


def _complete_variants(work: Path) -> set[str]:
    """Names of the visible trunk variants, asserting each is complete (files present, sha256 matching)."""
    names = set()
    for vdir in (work / "trunk").iterdir():
        if vdir.name.startswith(".") or not vdir.is_dir():
            continue
        meta = json.loads((vdir / "variant.json").read_text())
        assert meta["sha256"] == sha256_file(vdir / "model.onnx"), vdir.name
        names.add(vdir.name)
    for head in (work / "heads").iterdir():
        assert head.name.startswith(".") or json.loads((head / "head.json").read_text())["sha256"] == sha256_file(
            head / "model.onnx"
        )
    return names


def test_compress_killed_mid_run_leaves_only_complete_variants_and_reruns(template, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(template / "work", work)
    shutil.rmtree(work / "trunk/narrow")
    cmd = [sys.executable, "-m", "serving.cli.main", "compress", "--workdir", str(work), "--rounds", "1",
           "--finetune-steps", "3", "--prune-ratio", "0.3"]
    reference = sha256_file(work / "trunk/reference/model.onnx")

    def hidden() -> set[str]:
        return {p.name for p in (work / "trunk").iterdir() if p.name.startswith(".") and p.is_dir()}

    def building(proc: subprocess.Popen, seen: dict[int, set[str]] = {}) -> bool:  # noqa: B006 (per-run memo)
        """A variant directory is being written by this run (a hidden one that was not there at its start)."""
        return bool(hidden() - seen.setdefault(proc.pid, hidden()))

    points: list[tuple[str, Trigger | None, float]] = [
        ("writing a variant", building, 0.0),
        ("after the first variant", lambda p: (work / "trunk/pruned-r1/variant.json").exists(), 0.3),
    ]
    for label, trigger, delay in points:
        code, out = _interrupt(cmd, trigger or _after(0.0), delay, signal.SIGKILL)
        assert code == -signal.SIGKILL, (label, code, out[-2000:])
        assert _complete_variants(work) <= {"reference", "pruned-r1", "int8", "pruned-r1-int8", "fp16"}, label
        assert sha256_file(work / "trunk/reference/model.onnx") == reference, label
        if trigger is building:
            assert hidden(), f"{label}: a SIGKILL leaves its hidden variant directory behind"
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("built "))
    assert "pruned-r1" not in line[len("built "):line.index(" in ")].split(", "), line  # resumed, not redone
    expected = {"reference", "pruned-r1", "int8", "pruned-r1-int8", "fp16"}
    assert _complete_variants(work) == expected
    assert set(json.loads((work / "trunk/catalogue.json").read_text())["variants"]) == expected
    assert sha256_file(work / "trunk/reference/model.onnx") == reference


def test_export_ignores_the_hidden_directory_a_killed_compress_leaves(workspace):
    """``workspace``: the serving fakes' (tests/conftest.py)."""
    from serving.triton.repository import build_repository

    leftover = workspace / "trunk/.fp16.k2x9q1ab"  # what atomic_directory leaves when SIGKILLed mid-write
    leftover.mkdir()
    shutil.copy2(workspace / "trunk/ref/model.onnx", leftover / "model.onnx")
    summary = build_repository(workspace, max_batch_size=2)
    assert sorted(summary.trunk_versions.values()) == ["ref", "small"]
