"""Run the tritonserver binary bundled with nvidia-pytriton on a polyhead model repository.

``EmbeddedTriton`` starts it in explicit model-control mode on 127.0.0.1 in its own process group
(so python-backend stub processes die with it), waits for readiness, and turns every failure
into a :class:`ServingError` carrying the relevant lines of the server log.

With a model-control key (``admin_key`` or ``$POLYHEAD_ADMIN_KEY``) Triton refuses load/unload
and the repository index to anyone without it (:mod:`serving.triton.model_control`); inference stays open.
With ``strict=False`` a model that cannot load at startup (a corrupt or missing head) does not
stop the server: every other model serves and :attr:`EmbeddedTriton.failed_models` names the
broken ones with Triton's reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType

from serving.triton.deployment_facts import GRPC_PORT, HTTP_PORT, METRICS_PORT
from serving.triton.model_configs import read_config
from serving.triton.model_control import admin_key, control_headers, restricted_flags
from serving.triton.processes import check_port_free, free_port, group_processes, signal_group
from serving.triton.server_environment import triton_environment
from shared.errors import ServingError

_ERROR_LINE = re.compile(r"^E\d{4} |failed to load|error:|unhealthy", re.IGNORECASE)
_NOISE = re.compile(r"CUDA|Cuda|GPU|NVML|DCGM|pinned memory")
_log = logging.getLogger(__name__)

__all__ = ["EmbeddedTriton", "free_port", "group_processes", "startup_models"]


class EmbeddedTriton:
    """A tritonserver process serving ``repository`` (a context manager).

    Example:
        >>> with EmbeddedTriton(Path("work/model_repository"), grpc_port=8001) as server:
        ...     Detector(server.url).detect(image)

    Args:
        repository: Model repository directory (from ``build_repository``).
        grpc_port: gRPC port (``--grpc-port``).
        http_port: HTTP port (``--http-port``); used for health checks and model control.
        metrics_port: Prometheus metrics port (``--metrics-port``).
        host: Address every endpoint binds to.
        models: Models to load at startup (default: every model, ensembles after their members).
        log_file: Where the server log goes (default: a temp file, see :attr:`log_path`).
        startup_timeout_s: Seconds to wait for ``/v2/health/ready``.
        stop_timeout_s: Seconds to wait after SIGTERM before SIGKILL.
        extra_args: More tritonserver flags, e.g. ``("--log-verbose=1",)``.
        admin_key: Model-control key; default ``$POLYHEAD_ADMIN_KEY``; ``""`` or unset: unrestricted.
        strict: Fail :meth:`start` when any startup model fails to load (``--exit-on-error``);
            ``False`` serves the healthy subset and reports the rest in :attr:`failed_models`.
    """

    def __init__(
        self,
        repository: Path,
        grpc_port: int = GRPC_PORT,
        http_port: int = HTTP_PORT,
        metrics_port: int = METRICS_PORT,
        host: str = "127.0.0.1",
        models: list[str] | None = None,
        log_file: Path | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        extra_args: tuple[str, ...] = (),
        admin_key: str | None = None,
        strict: bool = True,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        self.ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.models = models
        self.log_path = Path(log_file) if log_file is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = tuple(extra_args)
        self.admin_key = admin_key_from(admin_key)
        self.strict = strict
        self.failed_models: dict[str, str] = {}
        self.startup_s: float | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The gRPC address ``host:port`` for clients."""
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        """HTTP base URL."""
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL."""
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id (and process-group id) of the running server, else ``None``."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def command(self) -> list[str]:
        """The tritonserver command line (binary resolved from the installed nvidia-pytriton)."""
        env = triton_environment()
        models = self.models if self.models is not None else startup_models(self.repository)
        return [
            str(env.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={env.backend_dir}",
            f"--cache-directory={env.cache_dir}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            # strict: a model that cannot load at startup stops the server, and start() reports it;
            # lenient: serve the rest (readiness no longer waits for every model), report the broken
            *(("--exit-on-error=true",) if self.strict else ("--exit-on-error=false", "--strict-readiness=false")),
            *restricted_flags(self.admin_key),
            "--disable-auto-complete-config",
            f"--http-address={self.host}",
            f"--http-port={self.ports['http']}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports['metrics']}",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            "--exit-timeout-secs=5",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the server and wait until it and every startup model are ready.

        Raises:
            ServingError: Port in use, binary missing, a model failing to load (with the log
                lines naming it), the process exiting, or readiness timing out.
        """
        if self._proc is not None and self._proc.poll() is None:
            return
        if not (self.repository / "").is_dir():
            raise ServingError(
                f"model repository {self.repository} does not exist; build it first "
                "(serving.triton.repository.build_repository)"
            )
        for name, port in self.ports.items():
            check_port_free(self.host, port, name)
        cmd = self.command()
        env = triton_environment().env
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="polyhead-triton-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_ready(t0)
            self.failed_models = {} if self.strict else self._startup_failures()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        for name, reason in self.failed_models.items():
            _log.warning("model '%s' failed to load and is not served: %s", name, reason)

    def _startup_failures(self) -> dict[str, str]:
        """Startup models that are not READY -> Triton's reason (or the log line naming them)."""
        wanted = self.models if self.models is not None else startup_models(self.repository)
        req = urllib.request.Request(
            f"{self.http_url}/v2/repository/index",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json", **control_headers(self.admin_key or "", "http")},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                index = {m["name"]: m for m in json.loads(resp.read())}
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ServingError(f"cannot read the repository index of {self.http_url}: {err}") from err
        failed = {}
        for name in wanted:
            entry = index.get(name, {})
            if entry.get("state") != "READY":
                reason = str(entry.get("reason") or "").split("\n")[0]
                failed[name] = reason or "not loaded: " + self.log_tail(name, lines=1)
        return failed

    def _wait_ready(self, t0: float) -> None:
        """Poll ``/v2/health/ready`` and the metrics port until both answer, the process exits, or timeout.

        Triton opens its metrics endpoint a moment after HTTP reports ready; a caller (a scraper,
        a test) that reads metrics right after ``start()`` must find it listening.
        """
        assert self._proc is not None
        while time.perf_counter() - t0 < self.startup_timeout_s:
            code = self._proc.poll()
            if code is not None:
                raise ServingError(
                    f"tritonserver exited with code {code} during startup "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            if self._http_ok("/v2/health/ready") and self._port_open(self.ports["metrics"]):
                return
            time.sleep(0.05)
        raise ServingError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s "
            f"(log {self.log_path}):\n{self.log_tail()}"
        )

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1.0):
                return True
        except OSError:
            return False

    def _http_ok(self, path: str, method: str = "GET", timeout: float = 2.0) -> bool:
        try:
            req = urllib.request.Request(self.http_url + path, method=method)
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def is_ready(self) -> bool:
        """True when the process runs and ``/v2/health/ready`` answers 200."""
        return self._proc is not None and self._proc.poll() is None and self._http_ok("/v2/health/ready")

    def is_alive(self) -> bool:
        """True while the server process runs."""
        return self._proc is not None and self._proc.poll() is None

    def load(self, name: str, timeout_s: float = 120.0) -> None:
        """Load or reload model ``name`` from the repository (explicit model control).

        On a reload Triton keeps answering with the old instance until the new one is ready
        (switching trunk versions under load measured zero failed requests).

        Raises:
            ServingError: If the load fails, with the server's reason and log lines.
        """
        self._control(name, "load", timeout_s)

    def unload(self, name: str, timeout_s: float = 60.0) -> None:
        """Unload model ``name`` (in-flight requests finish first).

        Raises:
            ServingError: If Triton refuses.
        """
        self._control(name, "unload", timeout_s)

    def _control(self, name: str, action: str, timeout_s: float) -> None:
        if not self.is_alive():
            raise ServingError(f"cannot {action} model '{name}': the server is not running; call start()")
        req = urllib.request.Request(
            f"{self.http_url}/v2/repository/models/{name}/{action}",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json", **control_headers(self.admin_key or "", "http")},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s):
                return
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            try:
                reason = str(json.loads(body)["error"]).split("\n")[0]  # drop the embedded traceback
            except (ValueError, KeyError, TypeError):
                reason = body
        except (urllib.error.URLError, OSError) as err:
            reason = str(err)
        raise ServingError(f"{action} of model '{name}' failed: {reason}\n{self.log_tail(name)}")

    def log_tail(self, model: str | None = None, lines: int = 12) -> str:
        """Relevant lines of the server log: errors (about ``model`` if given) else the last lines.

        Tracebacks embedded in a line are cut, repeats dropped, CUDA/GPU noise (harmless on CPU) skipped.
        """
        if self.log_path is None or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        hits = [ln.split("\\n")[0][:400] for ln in text if _ERROR_LINE.search(ln) and not _NOISE.search(ln)]
        if model is not None:
            hits = [ln for ln in hits if model in ln] or hits
        return "\n".join(list(dict.fromkeys(hits or text))[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after ``stop_timeout_s``; no stub outlives it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the server's pid
        signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 5.0
        while group_processes(pgid) and time.monotonic() < deadline:  # stubs exit after the server
            time.sleep(0.05)
        if group_processes(pgid):
            signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 3.0
            while group_processes(pgid) and time.monotonic() < deadline:  # let the kernel reap them
                time.sleep(0.05)

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Start (if needed) and serve until SIGINT/SIGTERM; then stop cleanly.

        Raises:
            ServingError: If the server process dies on its own (with the log tail).
        """
        stop = threading.Event()

        def _handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(poll_s):
                if not self.is_alive():
                    code = self._proc.returncode if self._proc is not None else None
                    raise ServingError(
                        f"tritonserver died (exit code {code}); log {self.log_path}:\n{self.log_tail()}"
                    )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()


def admin_key_from(key: str | None) -> str | None:
    """The key to restrict model control with (``key``, else ``$POLYHEAD_ADMIN_KEY``), validated."""
    key = admin_key(key)
    restricted_flags(key)  # raises on a key the flag syntax cannot carry
    return key


def startup_models(repository: Path) -> list[str]:
    """Every model in ``repository``, ordered so each ensemble comes after the models it uses."""
    configs = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        if not path.parent.name.startswith("."):
            configs[path.parent.name] = read_config(path)
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in order or name not in configs or name in seen:
            return
        for step in configs[name].ensemble_scheduling.step:
            visit(step.model_name, (*seen, name))
        order.append(name)

    for name in sorted(configs, key=lambda n: (configs[n].platform == "ensemble", n)):
        visit(name)
    return order
