"""The open-loop load: Poisson arrivals by phase, and latencies counted from the scheduled arrival."""

import contextlib
import threading
import time

import pytest

from serving.bench.open_loop import OpenLoopLoad, arrival_times


def test_arrival_times_follow_each_phase_rate():
    times = arrival_times([(20.0, 50.0), (10.0, 0.0), (20.0, 200.0)], seed=3)
    assert times == sorted(times)
    first = sum(t < 20 for t in times)
    quiet = sum(20 <= t < 30 for t in times)
    last = sum(t >= 30 for t in times)
    assert quiet == 0
    assert 900 < first < 1100  # 1000 expected, sd ~32
    assert 3700 < last < 4300  # 4000 expected, sd ~63
    assert arrival_times([(20.0, 50.0)], seed=3) == times[:first]  # the seed fixes the draw
    with pytest.raises(ValueError, match="seconds must be > 0"):
        arrival_times([(0.0, 5.0)])


class Counter:
    """Senders that take ``service_s`` each (one at a time per sender) and fail every third request."""

    def __init__(self, service_s: float) -> None:
        self.service_s, self.calls, self.opened, self.arrivals = service_s, 0, [], []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, index: int):
        self.opened.append(index)

        def send(arrived_unix_ns: int) -> None:
            with self._lock:
                self.arrivals.append(arrived_unix_ns)
                self.calls += 1
                n = self.calls
            time.sleep(self.service_s)
            if n % 3 == 0:
                raise RuntimeError(f"request {n} refused")

        yield send


def test_an_overloaded_sender_pool_shows_its_queue_in_the_latencies():
    # 20 arrivals 5 ms apart on one sender of 20 ms each: the k-th waits ~15 ms x k before it leaves.
    times = [0.005 * k for k in range(20)]
    counter = Counter(0.02)
    samples = OpenLoopLoad(counter, senders=1).run(times)
    assert [s.t for s in samples] == times
    assert counter.opened == [0] and counter.calls == 20
    assert sum(not s.ok for s in samples) == 6 and all("refused" in s.error for s in samples if not s.ok)
    assert samples[-1].latency_s > 0.2  # a closed loop would report ~0.02 s for every request
    assert samples[-1].latency_s > samples[0].latency_s + 0.15
    # each send is told its scheduled arrival (Unix ns), not the moment a sender picked it up
    late = counter.arrivals[-1] - counter.arrivals[0]
    assert late == pytest.approx(0.095e9, abs=2e6)


def test_enough_senders_keep_latency_at_the_service_time():
    times = [0.005 * k for k in range(20)]
    counter = Counter(0.02)
    samples = OpenLoopLoad(counter, senders=8).run(times)
    assert sorted(counter.opened) == list(range(8))
    assert max(s.latency_s for s in samples) < 0.15


def test_requests_not_answered_within_the_drain_fail_alone():
    samples = OpenLoopLoad(Counter(0.3), senders=1, drain_s=0.4).run([0.0, 0.001, 0.002])
    assert samples[0].ok
    assert [s.error for s in samples[1:]] == ["not answered within the drain"] * 2
