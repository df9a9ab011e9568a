"""The controller's second knob, the trunk's batching delay: pure policy, config, CLI parsing, plumbing."""

import json

import pytest
from prometheus_client import generate_latest

from serving.controller import Controller, ControllerConfig, Decision, Policy, Variant
from serving.controller.objectives import load_optimize_yaml, parse_delays
from serving.monitoring.metrics import PolyheadMetrics
from shared.errors import ConfigError, ServingError

LADDER = [Variant("ref", 1, accuracy=0.50, latency_ms=10.0), Variant("small", 2, accuracy=0.40, latency_ms=5.0)]
OBJ = {"cars": 0.010}  # seconds
DELAYS = (0, 500, 2000)  # microseconds; the deployment's own (home) is off


def config(**kw):
    base = dict(objectives_s=OBJ, breach_evals=1, recover_evals=1, cooldown_s=60, interval_s=5,
                batch_delays_us=DELAYS, probe_margin=0.1, probe_hold_s=600)  # fmt: skip
    return ControllerConfig(**{**base, **kw})


def simulate(policy: Policy, p95_of, until_s: float, dt: float = 5.0) -> list[tuple]:
    """Evaluate every ``dt`` s; ``p95_of(t, variant, delay)`` -> p95 dict; apply each decision."""
    out = []
    for i in range(int(until_s / dt)):
        now = i * dt
        d = policy.decide(p95_of(now, policy.live.name, policy.delay), now)
        if d is not None:
            policy.commit(d, now)
            out.append((now, d.knob, d.reason, d.to.name, d.to_delay_us))
    return out


def test_breach_steps_the_variant_first_then_probes_the_next_delay():
    policy = Policy(LADDER, config(), live="ref")
    steps = simulate(policy, lambda *_: {"cars": 0.05}, until_s=65)  # far over on every variant
    assert steps == [(0.0, "variant", "over_objective", "small", None), (60.0, "batch_delay", "over_objective",
                                                                          "small", 0)]  # fmt: skip
    assert policy.probe is not None and policy.probe.before == pytest.approx(5.0)


def test_a_delay_that_helps_is_kept_and_the_next_rung_probed():
    policy = Policy(LADDER, config(), live="small")
    gain = {None: 1.0, 0: 0.7, 500: 0.5, 2000: 0.5}  # batching helps (GPU-like), then saturates
    steps = simulate(policy, lambda t, v, d: {"cars": 0.05 * gain[d]}, until_s=250)
    assert [(s[2], s[4]) for s in steps] == [
        ("over_objective", 0), ("probe_kept", 0), ("over_objective", 500), ("probe_kept", 500),
        ("over_objective", 2000), ("probe_reverted", 500),  # 2000 did not help by the margin: back
    ]  # fmt: skip
    kept = [s for s in steps if s[2] == "probe_kept"]
    assert all(s[1] is None for s in kept)  # nothing to apply when keeping
    assert steps[1][0] == steps[2][0] - 5  # a kept probe starts no cool-down: the next probe follows
    assert policy.delay == 500 and policy.gains[(None, 0)] == pytest.approx(0.7)


def test_a_delay_that_does_not_help_is_reverted_and_not_retried_within_the_hold():
    policy = Policy(LADDER, config(probe_hold_s=600), live="small")
    hurts = {None: 1.0, 0: 1.05, 500: 1.2, 2000: 1.5}  # batching hurts (this CPU)
    steps = simulate(policy, lambda t, v, d: {"cars": 0.05 * hurts[d]}, until_s=1500)
    probes = [s for s in steps if s[2] == "over_objective"]
    reverts = [s for s in steps if s[2] == "probe_reverted"]
    assert probes[0][:1] == (0.0,) and probes[0][4] == 0  # tried the first rung
    assert reverts[0] == (60.0, "batch_delay", "probe_reverted", "small", None)  # back off at the judgement
    assert probes[1][0] >= reverts[0][0] + 600  # held: not tried again within probe_hold_s
    assert {p[4] for p in probes} == {0}  # 500 and 2000 lie beyond the unhelpful rung: never tried
    assert len(probes) <= 1 + 1500 // 600  # no insisting: at most one probe per hold period
    assert policy.delay is None


def test_recovery_returns_the_delay_home_first_then_the_variant():
    policy = Policy(LADDER, config(), live="small", delays=(500, None))  # after two kept probes
    steps = simulate(policy, lambda *_: {"cars": 0.001}, until_s=300)  # load fell: lots of room
    assert [(s[1], s[3], s[4]) for s in steps] == [
        ("batch_delay", "small", 0), ("batch_delay", "small", None), ("variant", "ref", None),
    ]  # fmt: skip
    assert all(s[2] == "load_fell" for s in steps)
    assert [b[0] - a[0] for a, b in zip(steps, steps[1:])] == [60.0, 60.0]  # one change per cool-down


def test_stepping_back_a_kept_delay_waits_until_its_measured_gain_leaves_room():
    policy = Policy(LADDER, config(low=0.6), live="small", delays=(500, None))
    policy.gains[(0, 500)] = 0.5  # 500 halved the p95 when it was probed
    assert policy.decide({"cars": 0.005}, now=0) is None  # 0.5 of objective, predicted 1.0 at 0 us
    d = policy.decide({"cars": 0.0025}, now=5)  # predicted 0.5 < low
    assert (d.knob, d.reason, d.from_delay_us, d.to_delay_us) == ("batch_delay", "load_fell", 500, 0)


def test_load_cycle_with_helpful_batching_never_flaps():
    policy = Policy(LADDER, config(breach_evals=2, recover_evals=3), live="ref")
    gain = {None: 1.0, 0: 0.8, 500: 0.6, 2000: 0.55}

    def p95(t, variant, delay):
        clients = 8 if 100 <= t < 700 else 1
        return {"cars": (10.0 if variant == "ref" else 5.0) * 1e-3 * clients / 4 * gain[delay]}

    steps = simulate(policy, p95, until_s=1500)
    changes = [s for s in steps if s[1] is not None]
    assert changes[0][1:4] == ("variant", "over_objective", "small")
    assert all(s[0] >= 700 for s in changes if s[2] == "load_fell")  # no step back under load
    assert (policy.live.name, policy.delay) == ("ref", None)  # home again after the load
    assert len(changes) <= 8


def test_knob_is_off_unless_a_ladder_is_given():
    policy = Policy(LADDER, config(batch_delays_us=()), live="small", delays=(100, 100))
    assert policy.delays == [100]
    assert simulate(policy, lambda *_: {"cars": 0.05}, until_s=300) == []  # lightest, nothing else to try


def test_delay_decisions_log_and_label_the_knob():
    d = Decision("small", LADDER[1], "over_objective", {"cars": 0.02}, None, 500)
    line = json.loads(d.to_json())
    assert line["knob"] == "batch_delay" and line["from_delay_us"] == "off" and line["to_delay_us"] == 500
    assert d.labels() == ("delay:off", "delay:500us")
    assert Decision("ref", LADDER[1], "over_objective").labels() == ("ref", "small")


def test_config_and_cli_parse_delay_ladders_and_reject_bad_ones(tmp_path):
    assert parse_delays("off,0, 500,2000") == (None, 0, 500, 2000)
    path = tmp_path / "c.yaml"
    path.write_text("prometheus: http://p:9090\nbatch_delays_us: [off, 0, 500]\nprobe_margin: 0.2\nprobe_hold_s: 60\n")
    assert parse_delays(load_optimize_yaml(path)["batch_delays_us"]) == (None, 0, 500)  # YAML's bare off: False
    for bad in ("-5", "fast", "1.5", [0.5]):
        with pytest.raises(ConfigError, match="batch delay"):
            parse_delays(bad)
    with pytest.raises(ConfigError, match="batch_delays_us"):
        config(batch_delays_us=(-1,))
    with pytest.raises(ConfigError, match="probe_margin"):
        config(probe_margin=1.0)


class FakeReader:
    def __init__(self, values):
        self.values = list(values)

    def p95(self, source="client"):
        return self.values.pop(0)


class FakeSwitcher:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def apply(self, variant):
        self.calls.append(("variant", variant.name))

    def apply_batch_delay(self, delay):
        if self.fail:
            raise ServingError("load refused")
        self.calls.append(("delay", delay))

    def reconcile(self, version, delay):  # every replica agrees (tests/serving/controller/test_multi_replica.py)
        return []


def test_controller_applies_only_real_changes_and_exports_the_live_delay():
    metrics, switcher = PolyheadMetrics(), FakeSwitcher()
    reader = FakeReader([{"cars": 0.05}, {"cars": 0.03}, {"cars": 0.002}])
    ctl = Controller(Policy(LADDER, config(cooldown_s=10), live="small"), reader, switcher, metrics)
    assert ctl.step(now=0).to_delay_us == 0  # probe applied
    assert ctl.step(now=10).reason == "probe_kept"  # 0.6 of before: kept, nothing applied
    assert ctl.step(now=15).to_delay_us is None  # load fell: home
    assert switcher.calls == [("delay", 0), ("delay", None)]
    text = generate_latest(metrics.registry).decode()
    assert "polyhead_trunk_batch_delay_seconds -1.0" in text
    assert 'polyhead_controller_decisions_total{from="delay:off",reason="over_objective",to="delay:0us"} 1.0' in text
    assert 'polyhead_controller_decisions_total{from="delay:0us",reason="probe_kept",to="delay:0us"} 1.0' in text


def test_a_refused_delay_change_is_not_committed():
    ctl = Controller(Policy(LADDER, config(), live="small"), FakeReader([{"cars": 0.05}]), FakeSwitcher(fail=True))
    assert ctl.step(now=0) is None
    assert ctl.policy.delay is None and ctl.policy.probe is None and ctl.decisions == []
