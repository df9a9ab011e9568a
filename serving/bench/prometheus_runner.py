"""Start a real Prometheus on 127.0.0.1 with a generated configuration (benchmarks and tests).

Example:
    >>> with PrometheusServer({"polyhead-clients": ["127.0.0.1:9101"]}, rules=[RULES]) as prom:
    ...     prom.query("polyhead:request_latency_seconds:p95")

:func:`rules_with_window` writes a copy of ``monitoring/prometheus/rules.yml`` whose rate windows
are shorter (e.g. ``5s`` instead of ``1m``), so a test can watch a load step come and go in
seconds; the expressions are otherwise the shipped ones.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import yaml

from serving.monitoring.metrics import PrometheusReader
from serving.triton.processes import free_port
from shared.errors import ServingError

#: The rules the controller and the dashboard use, as shipped.
RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "rules.yml"

_WINDOW = re.compile(r"\[(\d+[smh])\]")


def rules_with_window(dst: Path, window: str, src: Path = RULES) -> Path:
    """Copy ``src`` to ``dst`` with every range selector ``[1m]``/``[5m]`` replaced by ``[window]``.

    Args:
        dst: Where to write the rules file.
        window: A Prometheus duration, e.g. ``"5s"``.
        src: Rules file to copy (default: the shipped ``rules.yml``).

    Returns:
        ``dst``.
    """
    text = _WINDOW.sub(f"[{window}]", Path(src).read_text())
    Path(dst).write_text(text)
    return Path(dst)


def find_prometheus() -> str:
    """Path of the ``prometheus`` binary.

    Raises:
        ServingError: Not installed (with the Debian install command).
    """
    path = shutil.which("prometheus")
    if path is None:
        raise ServingError("prometheus is not installed: apt-get install -y --no-install-recommends prometheus")
    return path


class PrometheusServer:
    """A ``prometheus`` process scraping ``targets`` with ``rules``, TSDB in a temporary directory.

    Args:
        targets: Job name -> ``host:port`` targets.
        rules: Rule files to load.
        interval_s: Scrape and rule-evaluation interval.
        port: Listen port on 127.0.0.1 (default: a free one).
        binary: The ``prometheus`` executable (default: from ``$PATH``).
        startup_timeout_s: Seconds to wait for ``/-/ready``.
    """

    def __init__(
        self,
        targets: Mapping[str, Sequence[str]],
        rules: Sequence[Path] = (RULES,),
        interval_s: float = 1.0,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.targets = {job: list(t) for job, t in targets.items()}
        self.rules = [Path(r) for r in rules]
        self.interval_s = interval_s
        self.port = port or free_port()
        self.binary = binary or find_prometheus()
        self.startup_timeout_s = startup_timeout_s
        self.dir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        """The generated ``prometheus.yml`` as a mapping."""
        every = f"{max(int(round(self.interval_s * 1000)), 100)}ms"
        return {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(r) for r in self.rules],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in self.targets.items()
            ],
        }

    def start(self) -> PrometheusServer:
        """Write the config, start the process and wait until ``/-/ready`` answers.

        Raises:
            ServingError: The process exits or is not ready in time (with its log).
        """
        self._tmp = tempfile.TemporaryDirectory(prefix="polyhead-prometheus-")
        self.dir = Path(self._tmp.name)
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.config()))
        with open(self.dir / "prometheus.log", "wb") as log:
            self._proc = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log_text = self.log()
                    self.stop()
                    raise ServingError(f"prometheus did not become ready on {self.url}:\n{log_text[-2000:]}") from None
                time.sleep(0.1)

    def log(self) -> str:
        """The process log so far."""
        path = self.dir / "prometheus.log" if self.dir is not None else None
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Instant query (see :meth:`serving.monitoring.metrics.PrometheusReader.query`)."""
        return PrometheusReader(self.url).query(expr)

    def stop(self) -> None:
        """Terminate the process and delete its TSDB."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
