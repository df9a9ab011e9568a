"""The closed-loop load generator: on local callables (counts, failures, idle clients) and on a real server."""

import contextlib
import math
import threading
import time

import pytest

from serving.bench.load_generator import BackgroundTraffic, ClosedLoopLoad, detector_client, percentiles_ms


class Flaky:
    """Per-client senders: request ``n`` of client ``i`` sleeps 2 ms and fails when ``n % 3 == 2``."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.sent: dict[int, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, index: int):
        with self._lock:
            self.opened.append(index)
            self.sent[index] = 0

        def send() -> None:
            n = self.sent[index]
            self.sent[index] = n + 1
            time.sleep(0.002)
            if n % 3 == 2:
                raise RuntimeError(f"client {index} request {n} refused")

        try:
            yield send
        finally:
            with self._lock:
                self.closed.append(index)


def test_every_request_is_a_sample_and_failures_are_recorded_not_raised():
    flaky = Flaky()
    with ClosedLoopLoad(flaky, clients=3) as load:
        time.sleep(0.3)
    assert sorted(flaky.opened) == sorted(flaky.closed) == [0, 1, 2]  # each client's context closed on stop
    samples = load.samples
    assert len(samples) == sum(flaky.sent.values()) == load.ok + load.failed
    assert load.failed == sum(n // 3 for n in flaky.sent.values()) > 0
    assert all(s.ok == (s.error is None) for s in samples)
    assert all(e.startswith("RuntimeError: client ") and e.endswith(" refused") for e in load.errors)
    assert all(0 <= s.t <= load.elapsed_s and s.latency_s >= 0.0019 for s in samples)
    assert load.ok_per_s() == pytest.approx(load.ok / load.elapsed_s)
    p = load.percentiles_ms((50, 95, 99))
    assert list(p) == ["p50_ms", "p95_ms", "p99_ms"] and 2.0 <= p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
    assert len(load.latencies_s()) == load.ok


def test_only_the_first_active_clients_send_and_the_count_can_change():
    flaky = Flaky()
    load = ClosedLoopLoad(flaky, clients=3, active=0, describe=lambda err: str(err)[:8], idle_poll_s=0.005)
    with load:
        time.sleep(0.1)
        assert load.samples == [] and sorted(flaky.opened) == [0, 1, 2]  # clients built, none sending
        load.set_clients(1)
        time.sleep(0.15)
        one = dict(flaky.sent)
        load.set_clients(9)  # clamped to the 3 clients
        assert load.active == 3
        time.sleep(0.15)
    assert one[0] > 0 and one[1] == one[2] == 0
    assert flaky.sent[1] > 0 and flaky.sent[2] > 0
    assert set(load.errors) == {"client 0", "client 1", "client 2"}  # the caller's error text


def test_summaries_without_successes_are_nan():
    assert all(math.isnan(v) for v in percentiles_ms([]).values())
    assert percentiles_ms([0.001, 0.003]) == {"p50_ms": pytest.approx(2.0), "p95_ms": pytest.approx(2.9)}
    load = ClosedLoopLoad(Flaky(), clients=2)
    assert load.ok == load.failed == 0 and math.isnan(load.percentiles_ms()["p95_ms"])


@pytest.mark.triton
def test_detector_clients_against_a_real_server_count_successes_and_record_failures(workspace, server_factory, fakes):
    images = fakes.random_images(3)
    with server_factory(workspace) as server:
        with (
            BackgroundTraffic(server.url, images, "cars", threads=2) as good,
            ClosedLoopLoad(detector_client(server.url, images, "nope", timeout_s=10), clients=1) as bad,
        ):
            time.sleep(1.5)
    assert good.failed == 0 and good.errors == [] and good.ok > 5, good.errors[:3]
    assert all(s.ok and s.latency_s > 0 for s in good.samples)
    assert bad.ok == 0 and bad.failed == len(bad.samples) > 0
    assert all(e.startswith("UnknownTaskError: ") and "nope" in e for e in bad.errors), bad.errors[:3]
