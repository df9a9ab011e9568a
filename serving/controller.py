"""The latency controller: keep every task inside its p95 objective by switching trunk variants.

Pieces (composed by :class:`Controller`, each testable alone):

* :func:`read_variants`: the admitted variants with their accuracy (mean mAP over tasks, from
  ``variant.json``) and relative cost (``latency_ms``) and Triton version number.
* :class:`Policy`: the decision logic, pure: hysteresis (``high``/``low`` thresholds on
  p95/objective, ``breach_evals``/``recover_evals`` consecutive evaluations) and a cool-down
  after each switch at least as long as the recording rules' rate window, so the p95 that
  triggered a switch is not read again as a reason for the next one.
* :class:`serving.metrics.PrometheusReader`: p95 per task from Prometheus' HTTP API.
* :class:`TrunkSwitcher`: ``set_live_trunk_version`` + Triton ``load("trunk")`` (or a load with
  a config override, for remote repositories), on every replica; Triton keeps serving the old
  version until the new one is ready, so no request fails during a switch.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.metrics import PolyheadMetrics, PrometheusReader
from serving.repository import read_trunk_versions, set_live_trunk_version
from shared.errors import ArtifactError, ConfigError, ServingError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Variant:
    """One admitted trunk variant as the controller sees it.

    Attributes:
        name: Variant name (``trunk/<name>``).
        version: Its Triton version number in the repository.
        accuracy: Mean COCO mAP over tasks (``variant.json`` ``map``); higher is better.
        latency_ms: Measured latency on one device (``variant.json`` ``latency_ms``), or ``None``.
    """

    name: str
    version: int
    accuracy: float
    latency_ms: float | None = None


@dataclass(frozen=True)
class ControllerConfig:
    """Objectives and hysteresis of the controller.

    Attributes:
        objectives_s: p95 objective per task, seconds.
        high: Step to a lighter variant when some task's p95 > ``high`` x objective.
        low: Step to a more accurate variant when every task's predicted p95 there is below
            ``low`` x objective (prediction: p95 scaled by the variants' latency ratio).
        breach_evals: Consecutive evaluations over ``high`` before stepping down.
        recover_evals: Consecutive evaluations with room before stepping up.
        cooldown_s: No decision this long after a switch (>= the p95 rate window, 1 m).
        interval_s: Seconds between evaluations.
    """

    objectives_s: dict[str, float]
    high: float = 0.9
    low: float = 0.6
    breach_evals: int = 2
    recover_evals: int = 3
    cooldown_s: float = 60.0
    interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.objectives_s:
            raise ConfigError("no latency objective given; pass --slo TASK=MS (or objectives_ms in the YAML)")
        for task, value in self.objectives_s.items():
            if not value > 0:
                raise ConfigError(f"objective of task {task!r} must be > 0, got {value!r}")
        if not 0 < self.low < self.high:
            raise ConfigError(f"need 0 < low < high, got low={self.low}, high={self.high}")
        if self.breach_evals < 1 or self.recover_evals < 1 or self.cooldown_s < 0 or self.interval_s <= 0:
            raise ConfigError("breach_evals, recover_evals must be >= 1, cooldown_s >= 0, interval_s > 0")


@dataclass(frozen=True)
class Decision:
    """A switch decided by :class:`Policy`.

    Attributes:
        from_variant: Live variant before.
        to: The chosen variant.
        reason: ``over_objective`` (step down) or ``load_fell`` (step back up).
        p95_s: The p95 per task that led to it (``None``: no traffic).
    """

    from_variant: str
    to: Variant
    reason: str
    p95_s: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line for the decision log."""
        return json.dumps(
            {"from": self.from_variant, "to": self.to.name, "version": self.to.version, "reason": self.reason,
             "p95_ms": {t: None if v is None else round(v * 1e3, 3) for t, v in self.p95_s.items()}},
            sort_keys=True,
        )  # fmt: skip


class Policy:
    """Stateful decision logic over a ladder of variants (no I/O; time is passed in).

    Args:
        variants: Admitted variants (at least one).
        config: Objectives and hysteresis.
        live: Name of the variant live now.
    """

    def __init__(self, variants: list[Variant], config: ControllerConfig, live: str) -> None:
        if not variants:
            raise ConfigError("no admitted trunk variant to choose from")
        self.variants = sorted(variants, key=lambda v: (-v.accuracy, v.name))  # most accurate first
        self.by_name = {v.name: v for v in self.variants}
        if live not in self.by_name:
            raise ConfigError(f"live variant {live!r} is not among the admitted ones {sorted(self.by_name)}")
        self.config = config
        self.live = self.by_name[live]
        self.last_switch = -math.inf
        self.breaches = 0
        self.recoveries = 0

    def worst_ratio(self, p95_s: Mapping[str, float | None]) -> float:
        """Largest p95/objective over the objective's tasks (0 for tasks without traffic)."""
        ratios = [
            p95_s[t] / obj
            for t, obj in self.config.objectives_s.items()
            if p95_s.get(t) is not None and not math.isnan(p95_s[t])
        ]
        return max(ratios, default=0.0)

    def _scale(self, to: Variant) -> float | None:
        """Predicted p95 factor of moving from the live variant to ``to`` (None: unknown)."""
        if to.latency_ms is None or self.live.latency_ms is None or self.live.latency_ms <= 0:
            return None
        return to.latency_ms / self.live.latency_ms

    def _lighter(self, worst: float) -> Variant | None:
        """Most accurate lighter variant predicted under ``high``; else the lightest one."""
        idx = self.variants.index(self.live)
        below = self.variants[idx + 1 :]
        known = [v for v in below if self._scale(v) is not None and self._scale(v) < 1]
        if not known:  # no latency data: one step down the accuracy ladder
            return below[0] if below else None
        fits = [v for v in known if worst * self._scale(v) <= self.config.high]
        return fits[0] if fits else min(known, key=lambda v: v.latency_ms)

    def _better(self, worst: float) -> Variant | None:
        """Most accurate variant predicted under ``low`` (more accurate than the live one)."""
        above = self.variants[: self.variants.index(self.live)]
        for v in above:
            scale = self._scale(v)
            if scale is None:  # unknown cost: only the next step up, and only with room
                return above[-1] if worst < self.config.low else None
            if worst * scale < self.config.low:
                return v
        return None

    def decide(self, p95_s: Mapping[str, float | None], now: float) -> Decision | None:
        """Fold one evaluation in; return a decision when one is due (apply it, then :meth:`commit`).

        Args:
            p95_s: p95 latency per task in seconds (``None``/NaN: no traffic).
            now: Monotonic time in seconds.
        """
        if now - self.last_switch < self.config.cooldown_s:
            return None
        worst = self.worst_ratio(p95_s)
        down = self._lighter(worst) if worst > self.config.high else None
        up = self._better(worst) if down is None and worst <= self.config.high else None
        self.breaches = self.breaches + 1 if down is not None else 0
        self.recoveries = self.recoveries + 1 if up is not None else 0
        snapshot = {t: p95_s.get(t) for t in self.config.objectives_s}
        if down is not None and self.breaches >= self.config.breach_evals:
            return Decision(self.live.name, down, "over_objective", snapshot)
        if up is not None and self.recoveries >= self.config.recover_evals:
            return Decision(self.live.name, up, "load_fell", snapshot)
        return None

    def commit(self, decision: Decision, now: float) -> None:
        """Record that ``decision`` was applied at ``now`` (starts the cool-down)."""
        self.live = decision.to
        self.last_switch = now
        self.breaches = self.recoveries = 0


def _latency(meta: dict, device: str | None) -> float | None:
    table = meta.get("latency_ms") or {}
    if not isinstance(table, dict) or not table:
        return None
    entry = table.get(device) if device is not None else next(iter(table.values()))
    if isinstance(entry, dict):
        entry = entry.get("b1", next(iter(entry.values()), None))
    return float(entry) if isinstance(entry, (int, float)) else None


def read_variants(workdir: Path, versions: Path | Mapping[int, str], device: str | None = None) -> list[Variant]:
    """Admitted (and Pareto-optimal, where recorded) variants that the server has as trunk versions.

    Args:
        workdir: Workspace with ``trunk/<variant>/variant.json``.
        versions: Trunk version -> variant name, or a model repository (its ``versions.json``).
        device: ``latency_ms`` key to compare costs on (default: each file's first entry).

    Raises:
        ArtifactError: No usable variant.
    """
    if not isinstance(versions, Mapping):
        versions = read_trunk_versions(versions)
    usable: list[tuple[int, str, dict]] = []
    for version, name in versions.items():
        path = Path(workdir) / "trunk" / name / "variant.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        if meta.get("admitted", False) and meta.get("pareto") is not False:
            usable.append((version, name, meta))
    # Rank on the tasks every usable variant was evaluated on, so a task evaluated on one variant
    # only (e.g. added later) cannot make that variant look more or less accurate.
    common = set.intersection(*(set(meta.get("map") or {}) for _, _, meta in usable)) if usable else set()
    out = []
    for version, name, meta in usable:
        per_task = (meta.get("map") or {}).items()
        maps = [float(m["map"] if isinstance(m, dict) else m) for t, m in per_task if t in common]
        accuracy = sum(maps) / len(maps) if maps else 0.0
        out.append(Variant(name, version, accuracy, _latency(meta, device)))
    if not out:
        raise ArtifactError(f"no admitted trunk variant among versions {dict(versions)} in {workdir}/trunk")
    latencies = [v.latency_ms for v in out]
    if None in latencies:  # compare like with like: all known or none
        out = [Variant(v.name, v.version, v.accuracy, None) for v in out]
    return out


class TrunkSwitcher:
    """Applies a variant on every Triton replica behind ``server``; the old version serves until then.

    Two ways, same effect: with ``repo`` (a local repository the server reads) the version is pinned
    in ``trunk/config.pbtxt`` (:func:`set_live_trunk_version`, persists across restarts) and
    ``trunk`` is reloaded; without it (repositories on S3/GCS, Kubernetes) ``trunk`` is reloaded
    with a config override carrying the new ``version_policy``.

    Args:
        server: Triton gRPC ``host:port``; a host resolving to several addresses (a headless
            Service) means one replica per address, each switched.
        repo: Local model repository the server reads, or ``None`` for config overrides.
        headers: gRPC metadata for model control (``serving.admin.control_headers()``).
        timeout_s: Deadline of one load call.
    """

    def __init__(
        self, server: str, repo: Path | None = None, headers: dict[str, str] | None = None, timeout_s: float = 120.0
    ) -> None:
        self.server = server
        self.repo = Path(repo) if repo is not None else None
        self.headers = headers
        self.timeout_s = timeout_s

    def replicas(self) -> list[str]:
        """``ip:port`` of every address ``server`` resolves to (sorted, unique)."""
        host, _, port = self.server.rpartition(":")
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as err:
            raise ServingError(f"cannot resolve Triton address {self.server!r}: {err}") from err
        return sorted({f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}" for i in infos})

    def _call(self, address: str, method: str, *args: object, **kwargs: object) -> object:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(address)
        try:
            return getattr(client, method)(*args, headers=self.headers, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as err:
            raise ServingError(f"{method}('trunk') on Triton {address} failed: {err.message()}") from err
        finally:
            client.close()

    def live_version(self) -> int:
        """Highest ready version of ``trunk`` (on the first replica)."""
        meta = self._call(self.replicas()[0], "get_model_metadata", "trunk")
        return max(int(v) for v in meta.versions)

    def versions(self) -> dict[int, str]:
        """Trunk version -> variant name, from the served trunk config (``versions`` parameter)."""
        cfg = self._call(self.replicas()[0], "get_model_config", "trunk").config
        if "versions" not in cfg.parameters:
            raise ServingError(f"the trunk served at {self.server} has no 'versions' parameter; rebuild its repository")
        return {int(v): n for v, n in json.loads(cfg.parameters["versions"].string_value).items()}

    def apply(self, variant: Variant) -> None:
        """Make ``variant`` live on every replica.

        Raises:
            ServingError: If a replica cannot load it (that replica keeps the old version).
        """
        from google.protobuf.json_format import MessageToJson

        if self.repo is not None:
            set_live_trunk_version(self.repo, variant.version)
        for address in self.replicas():
            if self.repo is not None:
                self._call(address, "load_model", "trunk")
                continue
            cfg = self._call(address, "get_model_config", "trunk").config
            cfg.ClearField("version_policy")
            cfg.version_policy.specific.versions.append(variant.version)
            self._call(address, "load_model", "trunk", config=MessageToJson(cfg, preserving_proto_field_name=True))


class Controller:
    """Evaluate, decide, apply (unless dry-run), log and export; in a loop.

    Args:
        policy: The decision logic (knows the live variant).
        reader: Where p95 comes from.
        switcher: Applies decisions; ``None`` for a dry run (decisions are logged and exported,
            and the policy proceeds as if they had been applied).
        metrics: Where decisions, objectives and the live variant are exported (optional).
        source: ``client`` or ``server`` p95 (see :data:`P95_QUERIES`).
    """

    def __init__(
        self,
        policy: Policy,
        reader: PrometheusReader,
        switcher: TrunkSwitcher | None = None,
        metrics: PolyheadMetrics | None = None,
        source: str = "client",
    ) -> None:
        self.policy, self.reader, self.switcher, self.metrics, self.source = policy, reader, switcher, metrics, source
        self.decisions: list[Decision] = []
        if metrics is not None:
            metrics.set_objectives(policy.config.objectives_s)
            metrics.set_live_variant(policy.live.version, policy.live.name)

    def step(self, now: float | None = None) -> Decision | None:
        """One evaluation; returns the decision applied (or that would be, in a dry run)."""
        now = time.monotonic() if now is None else now
        try:
            p95 = self.reader.p95(self.source)
        except ServingError as err:
            log.warning("no decision this round: %s", err)
            return None
        decision = self.policy.decide(p95, now)
        if decision is None:
            return None
        if self.switcher is not None:
            try:
                self.switcher.apply(decision.to)
            except ServingError as err:
                log.error("switch to %s failed, still on %s: %s", decision.to.name, decision.from_variant, err)
                return None
        self.policy.commit(decision, now)
        self.decisions.append(decision)
        log.info("%sdecision %s", "dry-run " if self.switcher is None else "", decision.to_json())
        if self.metrics is not None:
            self.metrics.record_decision(decision.from_variant, decision.to.name, decision.reason)
            self.metrics.set_live_variant(decision.to.version, decision.to.name)
        return decision

    def run(self, stop: threading.Event) -> None:
        """Evaluate every ``config.interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            self.step()
            stop.wait(self.policy.config.interval_s)
