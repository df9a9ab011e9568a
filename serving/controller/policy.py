"""The latency controller's decisions: keep every task inside its p95 objective with the most accurate variant.

Two knobs, in this order: the trunk **variant** (admitted compression variants, most accurate
first) and the trunk's dynamic **batching delay** (``max_queue_delay_microseconds``, a ladder the
user gives; off by default). Pieces (composed by :class:`serving.controller.loop.Controller`, each testable alone):

* :func:`serving.controller.actuator.read_variants`: the variants with accuracy, cost and version.
* :class:`Policy`: the decision logic, pure: hysteresis (``high``/``low`` thresholds on
  p95/objective, ``breach_evals``/``recover_evals`` consecutive evaluations) and a cool-down
  after each change at least as long as the recording rules' rate window, so the p95 that
  triggered a change is not read again as a reason for the next one. Delays are probed: kept only
  if the worst p95/objective ratio fell by ``probe_margin``, else reverted and held off.
* :class:`serving.monitoring.metrics.PrometheusReader`: p95 per task from Prometheus' HTTP API.
* :class:`serving.controller.actuator.TrunkSwitcher`: a Triton ``load("trunk", config=<override>)`` on
  every replica; Triton keeps serving the old model until the new one is ready, so no request fails.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.controller.actuator import (
    Delay,
    Variant,
    delay_key,
    format_delay,
    parse_delay,
)
from shared.errors import ConfigError

__all__ = ["ControllerConfig", "Decision", "Policy"]


#: Decision reasons: a step down (either knob), a step back, and the two outcomes of a delay probe.
OVER, FELL, KEPT, REVERTED = "over_objective", "load_fell", "probe_kept", "probe_reverted"


@dataclass(frozen=True)
class ControllerConfig:
    """Objectives, hysteresis and the batching-delay ladder of the controller.

    Attributes:
        objectives_s: p95 objective per task, seconds.
        high: Step down when some task's p95 > ``high`` x objective: to a lighter variant, or (none
            left) probe the next batching delay.
        low: Step back when every task's predicted p95 there is below ``low`` x objective
            (prediction: p95 scaled by the variants' latency ratio, or by the gain a delay showed).
        breach_evals: Consecutive evaluations over ``high`` before stepping down.
        recover_evals: Consecutive evaluations with room before stepping back.
        cooldown_s: No decision this long after a change (>= the p95 rate window, 1 m).
        interval_s: Seconds between evaluations.
        batch_delays_us: Batching delays (microseconds; ``None``: batching off) the controller may
            use besides the deployment's own; empty: the delay is never changed.
        probe_margin: A probed delay is kept only if the worst p95/objective ratio fell by at least
            this fraction (0.1: 10 %) over its cool-down; otherwise it is reverted.
        probe_hold_s: A reverted delay, and every delay beyond it in that direction, is not tried
            again for this long.
    """

    objectives_s: dict[str, float]
    high: float = 0.9
    low: float = 0.6
    breach_evals: int = 2
    recover_evals: int = 3
    cooldown_s: float = 60.0
    interval_s: float = 5.0
    batch_delays_us: tuple[Delay, ...] = ()
    probe_margin: float = 0.1
    probe_hold_s: float = 600.0

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
        for delay in self.batch_delays_us:
            if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
                raise ConfigError(f"batch_delays_us: {delay!r} is not whole microseconds >= 0 or None (off)")
        if not 0 <= self.probe_margin < 1 or self.probe_hold_s < 0:
            raise ConfigError(
                f"need 0 <= probe_margin < 1 and probe_hold_s >= 0, got {self.probe_margin}, {self.probe_hold_s}"
            )


@dataclass(frozen=True)
class Decision:
    """A change decided by :class:`Policy`: of the variant or of the batching delay, never both.

    Attributes:
        from_variant: Live variant before.
        to: The variant after (the live one for delay decisions).
        reason: ``over_objective`` (step down / probe a delay), ``load_fell`` (step back),
            ``probe_kept`` (a probed delay helped: nothing to apply) or ``probe_reverted``.
        p95_s: The p95 per task that led to it (``None``: no traffic).
        from_delay_us: Batching delay before (``None``: off).
        to_delay_us: Batching delay after.
    """

    from_variant: str
    to: Variant
    reason: str
    p95_s: dict[str, float | None] = field(default_factory=dict)
    from_delay_us: Delay = None
    to_delay_us: Delay = None

    @property
    def knob(self) -> str | None:
        """``"variant"``, ``"batch_delay"`` or ``None`` (nothing to apply: a kept probe)."""
        if self.to.name != self.from_variant:
            return "variant"
        return "batch_delay" if self.to_delay_us != self.from_delay_us else None

    def labels(self) -> tuple[str, str]:
        """``from``/``to`` labels of the decisions counter: variant names, or ``delay:<us|off>``."""
        if self.knob == "variant":
            return self.from_variant, self.to.name
        return f"delay:{format_delay(self.from_delay_us)}", f"delay:{format_delay(self.to_delay_us)}"

    def to_json(self) -> str:
        """One JSON line for the decision log (delays: microseconds or ``"off"``)."""
        return json.dumps(
            {"from": self.from_variant, "to": self.to.name, "version": self.to.version, "reason": self.reason,
             "knob": self.knob, "from_delay_us": _json_delay(self.from_delay_us),
             "to_delay_us": _json_delay(self.to_delay_us),
             "p95_ms": {t: None if v is None else round(v * 1e3, 3) for t, v in self.p95_s.items()}},
            sort_keys=True,
        )  # fmt: skip


def _json_delay(delay: Delay) -> int | str:
    return "off" if delay is None else delay


@dataclass(frozen=True)
class _Probe:
    """A delay being tried: from, to, and the worst p95/objective ratio before it."""

    from_delay: Delay
    to_delay: Delay
    before: float


class Policy:
    """Stateful decision logic over a ladder of variants and one of batching delays (no I/O).

    Breach: a lighter variant first; at the lightest, probe the next delay away from the
    deployment's own ("home"), up first. A probe is judged on the first evaluation after its
    cool-down: kept if the worst ratio fell by ``probe_margin``, else reverted and held off for
    ``probe_hold_s``. Room: the delay steps back one rung towards home first, then the variant
    towards the most accurate. Time is passed in.

    Args:
        variants: Admitted variants (at least one).
        config: Objectives, hysteresis, delay ladder.
        live: Name of the variant live now.
        delays: ``(live, home)`` batching delays of the trunk (``None``: batching off); the ladder
            is ``config.batch_delays_us`` plus both.
    """

    def __init__(
        self, variants: list[Variant], config: ControllerConfig, live: str, delays: tuple[Delay, Delay] = (None, None)
    ) -> None:
        if not variants:
            raise ConfigError("no admitted trunk variant to choose from")
        self.variants = sorted(variants, key=lambda v: (-v.accuracy, v.name))  # most accurate first
        self.by_name = {v.name: v for v in self.variants}
        if live not in self.by_name:
            raise ConfigError(f"live variant {live!r} is not among the admitted ones {sorted(self.by_name)}")
        self.config = config
        self.live = self.by_name[live]
        self.delay, self.home = (parse_delay(d) for d in delays)
        self.delays = sorted({*config.batch_delays_us, self.delay, self.home}, key=delay_key)
        self.last_switch = -math.inf
        self.breaches = 0
        self.recoveries = 0
        self.probe: _Probe | None = None
        self.held: dict[Delay, float] = {}  # delay -> until when it is not probed again
        self.gains: dict[tuple[Delay, Delay], float] = {}  # (from, to) of a kept probe -> ratio after/before

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

    def _probe_target(self, now: float) -> int | None:
        """Index of the next delay to probe: one rung further from home (up first), not held."""
        i, home = self.delays.index(self.delay), self.delays.index(self.home)
        for j in (i + 1, i - 1):
            further = abs(j - home) > abs(i - home)
            if 0 <= j < len(self.delays) and further and self.held.get(self.delays[j], -math.inf) <= now:
                return j
        return None

    def _delay_back(self, worst: float) -> int | None:
        """Index of the delay one rung towards home if it is predicted under ``low``."""
        i, home = self.delays.index(self.delay), self.delays.index(self.home)
        if i == home:
            return None
        j = i - 1 if i > home else i + 1
        gain = self.gains.get((self.delays[j], self.delay))  # p95 ratio after/before when it was probed
        predicted = worst / gain if gain else worst
        return j if predicted < self.config.low else None

    def _judge(self, worst: float, snapshot: dict[str, float | None]) -> Decision:
        """Keep the probed delay if the worst ratio fell by the margin, else revert it."""
        probe = self.probe
        if worst <= probe.before * (1 - self.config.probe_margin):
            return Decision(self.live.name, self.live, KEPT, snapshot, self.delay, self.delay)
        return Decision(self.live.name, self.live, REVERTED, snapshot, self.delay, probe.from_delay)

    def decide(self, p95_s: Mapping[str, float | None], now: float) -> Decision | None:
        """Fold one evaluation in; return a decision when one is due (apply it, then :meth:`commit`).

        Args:
            p95_s: p95 latency per task in seconds (``None``/NaN: no traffic).
            now: Monotonic time in seconds.
        """
        if now - self.last_switch < self.config.cooldown_s:
            return None
        worst = self.worst_ratio(p95_s)
        snapshot = {t: p95_s.get(t) for t in self.config.objectives_s}
        if self.probe is not None:
            return self._judge(worst, snapshot)
        over = worst > self.config.high
        down = self._lighter(worst) if over else None
        probe = self._probe_target(now) if over and down is None else None
        back = None if over else self._delay_back(worst)
        up = self._better(worst) if not over and self.delay == self.home else None
        self.breaches = self.breaches + 1 if down is not None or probe is not None else 0
        self.recoveries = self.recoveries + 1 if back is not None or up is not None else 0
        live, delay = self.live, self.delay
        if self.breaches >= self.config.breach_evals:
            if down is not None:
                return Decision(live.name, down, OVER, snapshot, delay, delay)
            return Decision(live.name, live, OVER, snapshot, delay, self.delays[probe])
        if self.recoveries >= self.config.recover_evals:
            if back is not None:
                return Decision(live.name, live, FELL, snapshot, delay, self.delays[back])
            return Decision(live.name, up, FELL, snapshot, delay, delay)
        return None

    def commit(self, decision: Decision, now: float) -> None:
        """Record that ``decision`` was applied at ``now`` (a change starts the cool-down)."""
        worst = self.worst_ratio(decision.p95_s)
        if decision.reason == KEPT and self.probe is not None:
            if worst > 0 and self.probe.before > 0:
                self.gains[(self.probe.from_delay, self.probe.to_delay)] = worst / self.probe.before
            self.probe = None
        elif decision.reason == REVERTED and self.probe is not None:
            start, tried = self.delays.index(self.probe.from_delay), self.delays.index(self.probe.to_delay)
            step = 1 if tried > start else -1
            for k in range(tried, len(self.delays) if step > 0 else -1, step):  # the tried one and beyond
                self.held[self.delays[k]] = now + self.config.probe_hold_s
            self.probe = None
        elif decision.knob == "batch_delay" and decision.reason == OVER:
            self.probe = _Probe(decision.from_delay_us, decision.to_delay_us, worst)
        self.live = decision.to
        self.delay = decision.to_delay_us
        if decision.knob is not None:
            self.last_switch = now
        self.breaches = self.recoveries = 0
