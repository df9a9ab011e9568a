"""RSS that N trunk-variant sessions add in one process: own arenas, no arena, one shared arena (trimmed).

    .venv/bin/python -m bench.arena_memory --workdir polyhead-work [--variants reference,elastic-...]

What the per-request backend's ``shared_cpu_arena`` buys (``serving/triton/backend/model.py``
``session_options``). Each mode runs in a fresh subprocess (onnxruntime registers an environment
allocator once per process): it opens the first 1 and then all N variants' ``model.onnx``, runs each
at batch 1 and 8 on a random image, and reports the RSS added. ``shared_trim`` is the backend today:
the shared arena, then glibc's ``malloc_trim`` once the sessions are open (``return_freed_heap``).
The floor any set of separately exported variants has: the weights (ONNX initializers) of the
sessions after the first, which this also prints. Default variants: every folder of
``WORK/trunk`` with a ``model.onnx``, fp32 ones first, at most 6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODES = ("own", "none", "shared", "shared_trim")

_CHILD = r"""
import ctypes, json, os, sys
import numpy as np, onnxruntime as ort
mode, size, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
if mode.startswith("shared"):
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
base, out, held = rss(), {}, []
for f in files:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    if mode.startswith("shared"):
        o.add_session_config_entry("session.use_env_allocators", "1")
    o.enable_cpu_mem_arena = mode != "none"
    s = ort.InferenceSession(f, o, providers=["CPUExecutionProvider"])
    held.append(s)  # every session stays open, as in the backend
    for b in (1, 8):
        s.run(None, {s.get_inputs()[0].name: np.random.randint(0, 255, (b, 3, size, size), dtype=np.uint8)})
    if mode == "shared_trim":
        ctypes.CDLL(None).malloc_trim(0)
    out[len(out) + 1] = rss() - base
print(json.dumps(out))
"""


def measure(files: list[Path], size: int) -> dict[str, dict[int, float]]:
    """``{mode: {sessions: MiB added}}`` for every mode of :data:`MODES`."""
    result = {}
    for mode in MODES:
        run = subprocess.run([sys.executable, "-c", _CHILD, mode, str(size), *map(str, files)],
                             capture_output=True, text=True, check=True)
        result[mode] = {int(k): v for k, v in json.loads(run.stdout).items()}
    return result


def weights_mib(files: list[Path]) -> float:
    """MiB of the initializers of ``files`` (what their sessions must keep, whatever the allocator)."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for f in files for t in onnx.load(str(f)).graph.initializer) / 2**20


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="polyhead-work")
    ap.add_argument("--variants", help="comma-separated trunk variants (default: up to 6 fp32 ones)")
    args = ap.parse_args(argv)
    trunk = Path(args.workdir) / "trunk"
    meta = json.loads((trunk / "reference" / "variant.json").read_text())
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
    else:
        names = sorted((p.parent.name for p in trunk.glob("*/model.onnx")),
                       key=lambda n: (n != "reference", "int8" in n or "fp16" in n, n))[:6]
    missing = [n for n in names if not (trunk / n / "model.onnx").exists()]
    if missing:
        print(f"no model.onnx for {missing} under {trunk}", file=sys.stderr)
        return 2
    files = [trunk / n / "model.onnx" for n in names]
    result = measure(files, int(meta["input_size"]))
    print(f"variants: {names}")
    print("| sessions | " + " | ".join(f"{m} arena(s) MiB" for m in MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for n in (1, len(names)):
        print(f"| {n} | " + " | ".join(f"{result[m][n]:.1f}" for m in MODES) + " |")
    print(f"weights of sessions 2-{len(names)} (the floor of what they add): {weights_mib(files[1:]):.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
