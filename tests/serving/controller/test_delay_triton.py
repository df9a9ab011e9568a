"""The controller's batching-delay knob against the real embedded Triton, with clients sending throughout."""

import threading

import pytest
import tritonclient.grpc as grpcclient

from serving.client import Detector
from serving.controller import Controller, ControllerConfig, Policy, TrunkSwitcher, Variant
from serving.monitoring.metrics import PolyheadMetrics
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.model_configs import read_config
from serving.triton.repository import build_repository

pytestmark = pytest.mark.triton


class ScriptedReader:
    """p95 per evaluation, as Prometheus would report it (here: always far over the objective)."""

    def __init__(self, values):
        self.values = list(values)

    def p95(self, source="client"):
        return self.values.pop(0)


def served(client) -> tuple[int | None, list[int]]:
    """(max_queue_delay_microseconds or None when batching is off, pinned versions) of the served trunk."""
    cfg = client.get_model_config("trunk").config
    delay = cfg.dynamic_batching.max_queue_delay_microseconds if cfg.HasField("dynamic_batching") else None
    return delay, list(cfg.version_policy.specific.versions)


def test_delay_probe_and_revert_apply_through_model_control_with_zero_failed_requests(workspace, fakes):
    summary = build_repository(workspace, max_batch_size=4, live_variant="ref")
    by_name = {n: v for v, n in summary.trunk_versions.items()}
    variants = [Variant("ref", by_name["ref"], 0.5, 10.0), Variant("small", by_name["small"], 0.4, 5.0)]
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    with EmbeddedTriton(summary.path, **ports) as server, Detector(server.url) as det:
        client = grpcclient.InferenceServerClient(server.url)
        switcher = TrunkSwitcher(server.url, summary.path)
        assert switcher.batch_delay() == (None, None)  # the CPU default: batching off, and that is home
        config = ControllerConfig({"cars": 0.01}, breach_evals=1, cooldown_s=0, batch_delays_us=(500,))
        over = {"cars": 0.05, "people": 0.05}
        policy = Policy(variants, config, live="ref", delays=switcher.batch_delay())
        ctl = Controller(policy, ScriptedReader([over] * 4), switcher, PolyheadMetrics())
        images, stop, errors, done = fakes.random_images(2), threading.Event(), [], [0]

        def hammer():
            while not stop.is_set():
                try:
                    det.detect(images[done[0] % 2], tasks="cars" if done[0] % 2 else None)  # single + fan-out
                    done[0] += 1
                except Exception as err:  # counted: there must be none
                    errors.append(err)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            moves = [ctl.step(now=0.0), ctl.step(now=1.0)]  # ref -> small, then probe 500 us
            probing = served(client)  # read back while the probe is live and requests flow
            moves += [ctl.step(now=2.0), ctl.step(now=3.0)]  # judged: revert; then 500 is held
            reverted = served(client)
            switcher.apply_batch_delay(500)
            switcher.apply(variants[0])  # a variant switch keeps the live delay
            switched = served(client)
            home = switcher.batch_delay()
        finally:
            stop.set()
            worker.join()
        assert [(d.knob, d.reason, d.to.name, d.to_delay_us) for d in moves[:3]] == [
            ("variant", "over_objective", "small", None),
            ("batch_delay", "over_objective", "small", 500),  # lightest variant: probe the delay
            ("batch_delay", "probe_reverted", "small", None),  # no better: back off
        ]
        assert moves[3] is None  # 500 is held now: not retried
        assert probing == (500, [by_name["small"]])  # the new delay, the live version policy intact
        assert reverted == (None, [by_name["small"]])
        assert switched == (500, [by_name["ref"]])
        assert home == (500, None)  # the deployment's own delay is recorded in the served config
        assert errors == [] and done[0] > 20
        on_disk = read_config(summary.path / "trunk" / "config.pbtxt")  # only the variant pin persists
        assert list(on_disk.version_policy.specific.versions) == [by_name["ref"]]
        assert not on_disk.HasField("dynamic_batching")
        client.close()
