"""The latency controller's loop: read p95, let the policy decide, apply, log and export."""

from __future__ import annotations

import logging
import threading
import time

from serving.controller.actuator import TrunkSwitcher, format_delay
from serving.controller.policy import Decision, Policy
from serving.monitoring.metrics import PolyheadMetrics, PrometheusReader
from shared.errors import ServingError

log = logging.getLogger(__name__)


class Controller:
    """Evaluate, decide, apply (unless dry-run), log and export; in a loop.

    Args:
        policy: The decision logic (knows the live variant and delay).
        reader: Where p95 comes from.
        switcher: Applies decisions; ``None`` for a dry run (decisions are logged and exported,
            and the policy proceeds as if they had been applied).
        metrics: Where decisions, objectives, the live variant and delay are exported (optional).
        source: ``client`` or ``server`` p95 (see :data:`serving.monitoring.metrics.P95_QUERIES`).
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
            metrics.set_batch_delay(policy.delay)

    def _apply(self, decision: Decision) -> bool:
        """Apply ``decision`` unless dry run; False (logged) if a replica refused it."""
        if self.switcher is None or decision.knob is None:
            return True
        try:
            if decision.knob == "variant":
                self.switcher.apply(decision.to)
            else:
                self.switcher.apply_batch_delay(decision.to_delay_us)
        except ServingError as err:
            log.error("%s failed, still on %s / delay %s: %s", decision.to_json(), decision.from_variant,
                      format_delay(decision.from_delay_us), err)  # fmt: skip
            return False
        return True

    def reconcile(self) -> list[str]:
        """Bring replicas that serve another variant or delay than the policy's live ones back to them.

        A replica started after a switch (a scale-up, a restart) serves its repository's choice;
        this reloads it with the controller's. Dry runs change nothing. Failures are logged.

        Returns:
            The replicas reloaded.
        """
        if self.switcher is None:
            return []
        try:
            changed = self.switcher.reconcile(self.policy.live.version, self.policy.delay)
        except ServingError as err:
            log.error("could not bring every replica to %s / delay %s: %s", self.policy.live.name,
                      format_delay(self.policy.delay), err)
            return []
        for address in changed:
            log.warning("replica %s served another trunk variant or delay; set to %s / delay %s", address,
                        self.policy.live.name, format_delay(self.policy.delay))
        return changed

    def step(self, now: float | None = None) -> Decision | None:
        """One evaluation; returns the decision applied (or that would be, in a dry run).

        Every replica is first brought to the live variant and delay (:meth:`reconcile`).
        """
        now = time.monotonic() if now is None else now
        self.reconcile()
        try:
            p95 = self.reader.p95(self.source)
        except ServingError as err:
            log.warning("no decision this round: %s", err)
            return None
        decision = self.policy.decide(p95, now)
        if decision is None or not self._apply(decision):
            return None
        self.policy.commit(decision, now)
        self.decisions.append(decision)
        log.info("%sdecision %s", "dry-run " if self.switcher is None else "", decision.to_json())
        if self.metrics is not None:
            self.metrics.record_decision(*decision.labels(), decision.reason)
            self.metrics.set_live_variant(decision.to.version, decision.to.name)
            self.metrics.set_batch_delay(decision.to_delay_us)
        return decision

    def run(self, stop: threading.Event) -> None:
        """Evaluate every ``config.interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            self.step()
            stop.wait(self.policy.config.interval_s)
