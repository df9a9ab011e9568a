"""Which trunk variant answers a request in the per-request variants mode (runs in Triton's python stub).

Copied next to the backend's ``model.py`` and ``variants_model.py``; it imports neither polyhead
nor Triton, so it is tested on its own.

A request names its variant with the request parameter ``variant`` (a held variant, or
``auto``) and may carry its own ``objective_ms``. Without ``variant`` the repository's default
applies: the file ``<repository>/live_variant.json``
``{"variant": "<name>" | "auto", "objective_ms": <number or null>, "headroom": <0..1>}``, written
atomically (temp file, rename) by the controller. The backend stats it at every ``execute`` and
re-reads it when its mtime or size changed, so a new default takes effect on the next execute,
with no model reload and no model-control call. Without the file (or a malformed one) the
default is ``fallback``: the variant of the trunk version Triton loaded.

``auto`` picks, per execute, the most accurate variant whose predicted latency fits
``headroom x objective``, else the fastest one (by the table: the heads are the same for every
variant, so the trunks' order is the served one). All the ``auto`` requests of one execute share that
variant (:meth:`VariantChoice.pick_batch`), chosen so it fits each of them: the one that waited
longest decides, and the batch runs whole rather than split into groups run one after another.
The prediction for ``d`` requests in this execute (the dynamic batcher hands the backend every
queued request, so ``d`` is the queue depth) is::

    execute_ms(v, d) = scale x (b1 + (b8 - b1) x (d - 1) / 7)     # variant.json latency_ms, linear in d
    predicted_ms(v, d) = execute_ms(v, d) + wait    # wait: previous execute's wall time, less the idle gap since

A request that carries its client's send time (the parameter ``sent_unix_ns``, which polyhead's
client sets on every request) is judged by the time it already waited instead of the ``wait``
estimate (SuperServe's slack: the objective less what is spent)::

    predicted_ms(v, d) = execute_ms(v, d) + (now - sent_unix_ns)     # when 0 <= now - sent < 60 s

so a queue that builds (arrivals faster than the variant serves) turns ``auto`` to faster
variants as soon as the waits grow, and back once they shrink. A stamp from a skewed clock
(negative, or a minute old) is ignored.

The stamps also give the arrival rate (:class:`ArrivalRate`, the last half second of arrivals), and a
variant must keep up with it: ``rate <= UTILISATION x capacity``, its capacity being
``max_batch / execute_ms(v, max_batch)``. Waits alone react only once a queue is long, when the
requests behind the first late one are late too; the rate turns ``auto`` to a faster variant as
soon as the arrivals outrun the accurate one.

Where ``b1``/``b8`` are ``variant.json``'s ``latency_ms`` at batch 1 and 8 on one device key
(extrapolated past 8) and ``scale`` is learned online: an exponential average of measured wall
time / ``execute_ms`` (heads, transport inside the server and this host's speed are in it), per
variant over the executes that ran it alone (the heads' fixed cost weighs more on a light trunk,
so one shared factor would overrate the light variants), the shared average over every execute
until then, starting at 1.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Name of the default-variant file at the repository root.
LIVE_VARIANT_FILE = "live_variant.json"
#: The ``variant`` value that lets the backend choose.
AUTO = "auto"
#: Request parameter: the client's send time in Unix ns (``serving.client.protocol.SENT_PARAMETER``).
SENT_PARAMETER = "sent_unix_ns"
_MAX_WAIT_MS = 60_000.0
#: Fraction of the objective a prediction may use by default (the rest: transport, client, noise).
DEFAULT_HEADROOM = 0.8
_SCALE_ALPHA, _SCALE_RANGE = 0.2, (0.1, 20.0)
#: Share of a variant's capacity the arrival rate may use before ``auto`` passes the variant over.
UTILISATION = 0.9
#: Seconds of arrivals behind :class:`ArrivalRate`.
DEFAULT_RATE_WINDOW_S = 0.5


@dataclass(frozen=True)
class HeldVariant:
    """One variant the backend holds.

    Attributes:
        name: Variant name.
        accuracy: Mean mAP over the tasks every held variant was evaluated on (higher first).
        b1_ms: Latency at batch 1 on the comparison device (``None``: unknown).
        b8_ms: Latency at batch 8 (``None``: ``8 x b1``).
    """

    name: str
    accuracy: float
    b1_ms: float | None = None
    b8_ms: float | None = None

    def execute_ms(self, depth: int, scale: float = 1.0) -> float | None:
        """Predicted wall time of one execute of ``depth`` requests (``None``: no latency figure)."""
        if self.b1_ms is None:
            return None
        b8 = self.b8_ms if self.b8_ms is not None else 8 * self.b1_ms
        return scale * (self.b1_ms + (b8 - self.b1_ms) * (max(depth, 1) - 1) / 7)


@dataclass(frozen=True)
class Default:
    """The default for requests without ``variant`` (see the module docstring)."""

    variant: str
    objective_ms: float | None = None
    headroom: float = DEFAULT_HEADROOM


class ArrivalRate:
    """Requests per second reaching the trunk, counted from their arrival stamps.

    Requests leave Triton's queue in arrival order, so when an execute's youngest request arrived at
    ``t``, every request that arrived before ``t`` has been seen; the rate is counted over the
    ``window_s`` before ``t``, not before now (the arrivals since ``t`` may still be queued unseen,
    and counting them short would hide an overload).

    Args:
        window_s: Seconds of arrivals counted.
    """

    def __init__(self, window_s: float = DEFAULT_RATE_WINDOW_S) -> None:
        self.window_ns = int(window_s * 1e9)
        self._stamps: deque[int] = deque()
        self._first: int | None = None
        self._youngest: int | None = None

    def add(self, arrivals_ns: Sequence[int]) -> None:
        """Fold in one execute's arrival stamps (Unix ns)."""
        if not arrivals_ns:
            return
        self._stamps.extend(sorted(arrivals_ns))
        self._first = min(arrivals_ns) if self._first is None else min(self._first, *arrivals_ns)
        self._youngest = max(self._youngest or 0, *arrivals_ns)
        while self._stamps and self._stamps[0] < self._youngest - 2 * self.window_ns:
            self._stamps.popleft()

    def per_s(self) -> float | None:
        """Arrivals per second over the window before the youngest stamp seen (``None``: under one window seen)."""
        if self._youngest is None or self._first is None or self._first > self._youngest - self.window_ns:
            return None
        start = self._youngest - self.window_ns
        return sum(t > start for t in self._stamps) / (self.window_ns / 1e9)


class VariantChoice:
    """Resolves each request's variant: its parameter, else the default file, else ``fallback``.

    Args:
        held: The variants held (any order; kept most accurate first).
        fallback: Default when the file is absent or malformed.
        live_file: The default-variant file (``<repository>/live_variant.json``).
        max_batch: The model's ``max_batch_size``: the batch a saturated queue runs at, which
            sets each variant's capacity (:meth:`capacity_per_s`).

    Raises:
        ValueError: ``fallback`` is not held, or ``held`` is empty.
    """

    def __init__(self, held: list[HeldVariant], fallback: str, live_file: Path, max_batch: int = 8) -> None:
        if not held:
            raise ValueError("per-request variants: no variant held; rebuild the repository")
        self.held = sorted(held, key=lambda v: (-v.accuracy, v.name))
        self.by_name = {v.name: v for v in self.held}
        if fallback not in self.by_name:
            raise ValueError(f"default variant {fallback!r} is not held; held variants: {self.names()}")
        self.fallback, self.live_file = Default(fallback), Path(live_file)
        self.default, self._stamp = self.fallback, None
        self.scale, self.last_execute_ms, self._last_end = 1.0, 0.0, 0.0
        self.scales: dict[str, float] = {}
        self.max_batch, self.arrivals = max(1, int(max_batch)), ArrivalRate()

    def names(self) -> list[str]:
        """Held variant names, most accurate first."""
        return [v.name for v in self.held]

    def refresh(self) -> Default:
        """Re-read the default file if its mtime or size changed since the last read; return the default."""
        try:
            st = os.stat(self.live_file)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self.default = self._read() if stamp is not None else self.fallback
        return self.default

    def _read(self) -> Default:
        try:
            data = json.loads(self.live_file.read_text())
            default = Default(str(data["variant"]), _objective(data.get("objective_ms")),
                              float(data.get("headroom", DEFAULT_HEADROOM)))
        except (OSError, ValueError, KeyError, TypeError):
            return self.fallback
        return default if default.variant == AUTO or default.variant in self.by_name else self.fallback

    def pick(self, parameters: dict, depth: int) -> str:
        """The variant of one request of an execute holding ``depth`` requests.

        Args:
            parameters: The request's parameters (``variant``, ``objective_ms``; others ignored).
            depth: Requests in this execute (the queue depth the batcher handed over).

        Raises:
            ValueError: The request names a variant that is not held (the message lists the held ones).
        """
        default = self.refresh()
        name = self._named(parameters, default)
        if name != AUTO:
            return name
        return self.fitting(depth, [(self._objective_of(parameters, default), waited_ms(parameters))], default.headroom)

    def pick_batch(self, requests: Sequence[dict]) -> list[str | ValueError]:
        """Every request's variant in one execute; the ``auto`` ones share one variant.

        A request naming a variant gets it. The ``auto`` ones (by name or by default) are served
        together, as one batch, by the most accurate variant that keeps *each of them* within its
        ``headroom x objective`` after the wait it already had, else by the fastest: the request
        with the least slack left decides (SuperServe's SlackFit), and the batch is not split into
        smaller, slower groups run one after the other. A variant whose capacity the arrival rate
        (:class:`ArrivalRate`, from the requests' stamps) exceeds is passed over even while the
        waits still fit: its queue would grow, and the slack alone would see it only once it is long.

        Args:
            requests: Each request's parameters, in execute order.

        Returns:
            One entry per request: its variant, or the ``ValueError`` of a variant that is not held.
        """
        default = self.refresh()
        chosen: list[str | ValueError] = []
        for parameters in requests:
            try:
                chosen.append(self._named(parameters, default))
            except ValueError as err:
                chosen.append(err)
        waits = [waited_ms(p) for p in requests]
        rows = list(zip(requests, waits, chosen, strict=True))
        self.arrivals.add([_stamp(p) for p, w, _ in rows if w is not None])  # a skewed clock's stamp left out
        auto = [(self._objective_of(p, default), w) for p, w, c in rows if c == AUTO]
        if auto:
            shared = self.fitting(len(requests), auto, default.headroom, self.arrivals.per_s())
            chosen = [shared if c == AUTO else c for c in chosen]
        return chosen

    def _named(self, parameters: dict, default: Default) -> str:
        name = parameters.get("variant", default.variant)
        if not isinstance(name, str) or (name != AUTO and name not in self.by_name):
            raise ValueError(f"variant {name!r} is not held; held variants: {self.names()} (or '{AUTO}')")
        return name

    @staticmethod
    def _objective_of(parameters: dict, default: Default) -> float | None:
        """The objective (ms) of one ``auto`` request: its own, else the default's."""
        return _objective(parameters.get("objective_ms", default.objective_ms))

    def predicted_ms(self, variant: str, depth: int, waited: float | None = None) -> float | None:
        """Predicted latency of a request served by ``variant`` in an execute of ``depth`` requests.

        ``waited``: ms the request already waited (from its send stamp); ``None``: estimated.
        """
        execute = self.by_name[variant].execute_ms(depth, self.scale_of(variant))
        if waited is None:  # requests queued behind the previous execute
            waited = max(0.0, self.last_execute_ms - 1e3 * (time.monotonic() - self._last_end))
        return None if execute is None else execute + waited

    def capacity_per_s(self, variant: str) -> float | None:
        """Requests per second ``variant`` serves with its queue saturated (batches of ``max_batch``)."""
        execute = self.by_name[variant].execute_ms(self.max_batch, self.scale_of(variant))
        return None if not execute else 1e3 * self.max_batch / execute

    def fitting(self, depth: int, requests: Sequence[tuple[float | None, float | None]],
                headroom: float = DEFAULT_HEADROOM, rate_per_s: float | None = None) -> str:  # fmt: skip
        """Most accurate variant predicted within ``headroom x objective`` for every request; else the fastest.

        Args:
            depth: Requests in the execute.
            requests: ``(objective_ms, waited_ms)`` per request; ``None`` objective: no bound,
                ``None`` wait: estimated from the previous execute.
            headroom: Fraction of each objective a prediction may use.
            rate_per_s: Arrivals per second (``None``: unknown); a variant must also keep up with
                it: ``rate <= UTILISATION x capacity_per_s``.

        Without an objective or latency figures: the most accurate variant.
        """
        bounded = [(headroom * o, w) for o, w in requests if o is not None]
        if not bounded or any(v.b1_ms is None for v in self.held):
            return self.held[0].name
        worst = {v.name: max(self.predicted_ms(v.name, depth, w) - limit for limit, w in bounded) for v in self.held}
        for v in self.held:
            capacity = self.capacity_per_s(v.name)
            keeps_up = rate_per_s is None or capacity is None or rate_per_s <= UTILISATION * capacity
            if worst[v.name] <= 0 and keeps_up:
                return v.name
        return self.fastest(depth)

    def fastest(self, depth: int) -> str:
        """The variant with the least table latency at ``depth``.

        The heads are the same for every variant, so the trunks' measured order is the served order; the
        learned factors, noisy, would only flip near-ties.
        """
        return min(self.held, key=lambda v: (v.execute_ms(depth), -v.accuracy)).name

    def observe(self, depths: dict[str, int], wall_ms: float) -> None:
        """Fold one execute in: ``depths`` (variant -> requests it ran) took ``wall_ms``."""
        raw = [self.by_name[n].execute_ms(d) for n, d in depths.items()]
        self.last_execute_ms, self._last_end = wall_ms, time.monotonic()
        if raw and None not in raw and sum(raw) > 0:
            ratio = min(max(wall_ms / sum(raw), _SCALE_RANGE[0]), _SCALE_RANGE[1])
            self.scale += _SCALE_ALPHA * (ratio - self.scale)
            if len(depths) == 1:  # a variant run alone: its own factor (heads weigh more on a light trunk)
                (name,) = depths
                own = self.scales.get(name, ratio)
                self.scales[name] = own + _SCALE_ALPHA * (ratio - own)

    def scale_of(self, variant: str) -> float:
        """The learned wall / ``execute_ms`` factor of ``variant``: its own once it ran alone, else the shared one."""
        return self.scales.get(variant, self.scale)


def _objective(value: object) -> float | None:
    """A positive number of milliseconds, else ``None``."""
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return None
    return ms if ms > 0 else None


def _stamp(parameters: dict) -> int | None:
    """The request's ``sent_unix_ns`` stamp (``None``: none, or not an integer)."""
    try:
        return int(parameters[SENT_PARAMETER])
    except (KeyError, TypeError, ValueError):
        return None


def waited_ms(parameters: dict, now_ns: int | None = None) -> float | None:
    """Milliseconds since the request's ``sent_unix_ns`` stamp (``None``: no stamp, or a skewed clock's)."""
    sent = _stamp(parameters)
    if sent is None:
        return None
    waited = ((time.time_ns() if now_ns is None else now_ns) - sent) / 1e6
    return waited if 0.0 <= waited < _MAX_WAIT_MS else None


def parse_parameters(text: str | None) -> dict:
    """A request's parameters (``request.parameters()``: a JSON object text) as a dict ({} if none)."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
