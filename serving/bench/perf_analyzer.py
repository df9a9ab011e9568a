"""Run Triton's own load tester, ``perf_analyzer``, against a server and read its CSV report.

The ``tritonclient`` wheel installs the binary as ``<venv>/bin/perf_analyzer``. It needs two shared
libraries the wheel does not bring: ``libb64.so.0d`` (Debian: ``apt-get install libb64-0d``) and
``libcudart.so.12`` (pip ``nvidia-cuda-runtime-cu12``, in the ``test`` extra; it only has to load,
no GPU is used). :func:`perf_analyzer_env` puts the pip package's ``lib`` directory on
``LD_LIBRARY_PATH``; a missing library becomes a :class:`PerfAnalyzerUnavailable` naming the fix.

Example:
    >>> result = run_perf_analyzer("127.0.0.1:8001", "detect", concurrency=(1, 2))
    >>> for row in result.rows:
    ...     print(row.concurrency, row.infer_per_s, row.p50_us, row.p99_us)
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ServingError

_LIB_FIXES = {
    "libb64": "install it with `apt-get install libb64-0d` (Debian/Ubuntu)",
    "libcudart": "install it with `pip install nvidia-cuda-runtime-cu12` (in the `test` extra)",
}
_BINARY_FIX = "it ships with the tritonclient wheel: `pip install --force-reinstall tritonclient[grpc]==2.51.0`"
_CSV_COLUMNS = {  # PerfRow field -> perf_analyzer CSV header
    "concurrency": "Concurrency",
    "infer_per_s": "Inferences/Second",
    "p50_us": "p50 latency",
    "p90_us": "p90 latency",
    "p95_us": "p95 latency",
    "p99_us": "p99 latency",
}


class PerfAnalyzerUnavailable(ServingError):
    """``perf_analyzer`` cannot run here: the binary or a shared library it needs is missing."""


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of a perf_analyzer report (client-side latencies, microseconds)."""

    concurrency: int
    infer_per_s: float
    p50_us: int
    p90_us: int
    p95_us: int
    p99_us: int


@dataclass(frozen=True)
class PerfResult:
    """A perf_analyzer run on one model.

    Attributes:
        model: The model measured.
        rows: One row per concurrency level, in the order measured.
        succeeded: Successful requests the server counted for ``model`` during the run.
        failed: Failed requests the server counted for ``model`` during the run.
        command: The perf_analyzer command line (without its environment), to reproduce the run.
    """

    model: str
    rows: tuple[PerfRow, ...]
    succeeded: int
    failed: int
    command: tuple[str, ...]


def find_perf_analyzer() -> Path:
    """The ``perf_analyzer`` of this environment (its scripts directory first, then ``PATH``).

    Raises:
        PerfAnalyzerUnavailable: If there is none.
    """
    local = Path(sysconfig.get_path("scripts")) / "perf_analyzer"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("perf_analyzer")
    if found is None:
        raise PerfAnalyzerUnavailable(f"perf_analyzer not found in {local.parent} or on PATH; {_BINARY_FIX}")
    return Path(found)


def cuda_runtime_lib() -> Path | None:
    """The ``lib`` directory of the installed ``nvidia-cuda-runtime-cu12`` package, or ``None``."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:  # no ``nvidia`` namespace at all
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return lib if (lib / "libcudart.so.12").is_file() else None


def perf_analyzer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the pip CUDA runtime's ``lib`` first on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if base is None else base)
    lib = cuda_runtime_lib()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def check_perf_analyzer(binary: Path | None = None) -> str:
    """Run ``perf_analyzer --version`` and return the version line.

    Raises:
        PerfAnalyzerUnavailable: If the binary or one of its shared libraries is missing.
    """
    binary = find_perf_analyzer() if binary is None else Path(binary)
    if not binary.is_file():
        raise PerfAnalyzerUnavailable(f"perf_analyzer not found at {binary}; {_BINARY_FIX}")
    proc = subprocess.run(
        [str(binary), "--version"], env=perf_analyzer_env(), capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        _raise_for_output(binary, proc.returncode, proc.stdout + proc.stderr)
    return proc.stdout.strip()


def parse_csv(text: str) -> list[PerfRow]:
    """Rows of a perf_analyzer ``-f`` report (one line per concurrency level).

    Raises:
        ServingError: If a column this module reads is missing or a value is not a number.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _CSV_COLUMNS.values() if c not in (reader.fieldnames or [])]
    if missing:
        raise ServingError(f"perf_analyzer CSV lacks column(s) {missing}; header was {reader.fieldnames}")
    rows = []
    for line in reader:
        try:
            values = {f: float(line[c]) for f, c in _CSV_COLUMNS.items()}
        except (TypeError, ValueError) as err:
            raise ServingError(f"perf_analyzer CSV row {line} is not numeric: {err}") from err
        ints = {f: int(v) for f, v in values.items() if f != "infer_per_s"}
        rows.append(PerfRow(infer_per_s=values["infer_per_s"], **ints))
    return rows


def model_input_shapes(url: str, model: str, timeout_s: float = 10.0) -> dict[str, list[int]]:
    """Per-request input dims of ``model`` from the server's config (batch dimension excluded).

    For ``detect`` and ``detect_<task>`` this is ``{"images": [3, S, S]}`` (uint8, S the input size).

    Raises:
        ServingError: If the server does not answer or a dim is variable (pass ``shapes`` instead).
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        with grpcclient.InferenceServerClient(url) as client:
            config = client.get_model_config(model, client_timeout=timeout_s).config
    except InferenceServerException as err:
        raise ServingError(f"cannot read the config of model {model!r} from {url}: {err}") from err
    shapes = {inp.name: list(inp.dims) for inp in config.input}
    variable = {name: dims for name, dims in shapes.items() if any(d < 0 for d in dims)}
    if variable:
        raise ServingError(f"model {model!r} has variable input dims {variable}; pass shapes={{name: dims}}")
    return shapes


def run_perf_analyzer(
    url: str,
    model: str,
    concurrency: tuple[int, int] = (1, 2),
    shapes: dict[str, list[int]] | None = None,
    measurement_ms: int = 1000,
    stability_pct: float = 10.0,
    max_trials: int = 10,
    timeout_s: float = 300.0,
    binary: Path | None = None,
) -> PerfResult:
    """Load ``model`` at ``url`` (gRPC ``HOST:PORT``) with perf_analyzer and return its report.

    Args:
        url: gRPC endpoint of a Triton server.
        model: Model to load, e.g. ``detect`` or ``detect_cars``.
        concurrency: ``(start, end)`` concurrent requests, stepping by 1 (``--concurrency-range``).
        shapes: Per-request input dims (``--shape``); default: read from the server's model config.
        measurement_ms: Length of one measurement window (``--measurement-interval``).
        stability_pct: Allowed max/min spread of the last 3 windows (``--stability-percentage``);
            raise it on a shared CPU.
        max_trials: Windows per level before perf_analyzer gives up (``--max-trials``).
        timeout_s: Wall-clock limit of the whole run.
        binary: The perf_analyzer executable (default: :func:`find_perf_analyzer`).

    Returns:
        The :class:`PerfResult` with one row per concurrency level and the server's request counts.

    Raises:
        PerfAnalyzerUnavailable: If the binary or a shared library it needs is missing.
        ServingError: Unreachable server, unknown model, failed requests, unstable measurement, timeout.
    """
    start, end = concurrency
    if not 1 <= start <= end:
        raise ServingError(f"concurrency must be (start, end) with 1 <= start <= end, got {concurrency}")
    binary = find_perf_analyzer() if binary is None else Path(binary)
    shapes = model_input_shapes(url, model) if shapes is None else shapes
    shape_args = [a for name, dims in shapes.items() for a in ("--shape", f"{name}:{','.join(map(str, dims))}")]
    before = _request_counts(url, model)
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        report = Path(tmp) / "report.csv"
        cmd = (
            str(binary), "-m", model, "-u", url, "-i", "grpc", "--concurrency-range", f"{start}:{end}:1",
            "--measurement-interval", str(measurement_ms), "--stability-percentage", f"{stability_pct:g}",
            "--max-trials", str(max_trials), "--input-data", "random",
            *shape_args, "-f", str(report),
        )  # fmt: skip
        try:
            proc = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise ServingError(f"perf_analyzer on {model!r} ran past {timeout_s:.0f} s; lower measurement_ms") from err
        if proc.returncode != 0 or not report.is_file():
            _raise_for_output(binary, proc.returncode, proc.stdout + proc.stderr, model)
        rows = parse_csv(report.read_text())
    after = _request_counts(url, model)
    command = (binary.name, *cmd[1:-1], "report.csv")
    return PerfResult(model, tuple(rows), after[0] - before[0], after[1] - before[1], command)


def _request_counts(url: str, model: str) -> tuple[int, int]:
    """(successful, failed) requests the server has counted for ``model`` (all versions)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        with grpcclient.InferenceServerClient(url) as client:
            stats = client.get_inference_statistics(model, client_timeout=10.0).model_stats
    except InferenceServerException as err:
        raise ServingError(f"cannot read statistics of model {model!r} from {url}: {err}") from err
    return (
        sum(s.inference_stats.success.count for s in stats),
        sum(s.inference_stats.fail.count for s in stats),
    )


def _raise_for_output(binary: Path, returncode: int, output: str, model: str | None = None) -> None:
    """Turn a failed perf_analyzer run into the error that names its fix."""
    if "error while loading shared libraries" in output:
        for lib, fix in _LIB_FIXES.items():
            if lib in output:
                raise PerfAnalyzerUnavailable(f"{binary} cannot load {lib}: {fix}")
        raise PerfAnalyzerUnavailable(f"{binary} cannot load a shared library: {output.strip()[-300:]}")
    where = f" on model {model!r}" if model else ""
    if "Failed to obtain stable measurement" in output:
        raise ServingError(
            f"perf_analyzer{where} found no stable measurement; raise measurement_ms or stability_pct "
            "(a shared CPU is noisy)"
        )
    errors = [ln.strip() for ln in output.splitlines() if "error" in ln.lower()]
    detail = "; ".join(errors[-3:]) if errors else output.strip()[-500:]
    raise ServingError(f"perf_analyzer{where} exited with {returncode}: {detail}")
