"""The controller's decision logic on constructed p95 sequences, its config, and its plumbing."""

import json

import pytest
from prometheus_client import generate_latest

from serving.controller import Controller, ControllerConfig, Policy, Variant, read_variants
from serving.controller.objectives import load_optimize_yaml, parse_slo
from serving.monitoring.metrics import PolyheadMetrics
from serving.triton.repository import build_repository
from shared.errors import ConfigError, ServingError

# accurate/slow -> light/fast; "mid" is what an over-objective "ref" should fall to when it fits
LADDER = [
    Variant("ref", 1, accuracy=0.50, latency_ms=10.0),
    Variant("mid", 2, accuracy=0.45, latency_ms=7.0),
    Variant("small", 3, accuracy=0.40, latency_ms=4.0),
]
OBJ = {"cars": 0.010, "people": 0.020}  # seconds


def config(**kw):
    base = dict(objectives_s=OBJ, high=0.9, low=0.6, breach_evals=2, recover_evals=3, cooldown_s=60, interval_s=5)
    return ControllerConfig(**{**base, **kw})


def run(policy: Policy, sequence, dt: float = 5.0):
    """Feed p95 dicts every ``dt`` seconds; apply each decision; return (time, from, to) per switch."""
    switches = []
    for i, p95 in enumerate(sequence):
        now = i * dt
        d = policy.decide(p95, now)
        if d is not None:
            policy.commit(d, now)
            switches.append((now, d.from_variant, d.to.name, d.reason))
    return switches


def load_model(variant: Variant, clients: int) -> dict:
    """A toy server: p95 grows with load and the variant's cost (cars 1.2x, people 1x of cost x clients)."""
    base = variant.latency_ms / 1e3 * clients / 4
    return {"cars": 1.2 * base, "people": base}


def test_load_step_moves_to_the_most_accurate_variant_that_fits_then_back_when_load_falls():
    policy = Policy(LADDER, config(), live="ref")
    switches, worst = [], []
    clients_over_time = [1] * 10 + [6] * 40 + [1] * 60  # load step at t=50 s, back at t=250 s
    for i, clients in enumerate(clients_over_time):
        now = i * 5.0
        worst.append(policy.worst_ratio(load_model(policy.live, clients)))
        d = policy.decide(load_model(policy.live, clients), now)
        if d is not None:
            policy.commit(d, now)
            switches.append((now, d.from_variant, d.to.name, d.reason))
    # 6 clients on ref: cars p95 = 18 ms (1.8x); mid predicts 1.26x > 0.9; small predicts 0.72x: fits
    assert switches[0] == (55.0, "ref", "small", "over_objective")  # second evaluation over (hysteresis)
    assert switches[1][1:] == ("small", "ref", "load_fell")  # straight back to the most accurate that fits
    assert switches[1][0] >= 250 + 2 * 5  # only after the load fell (recover_evals evaluations)
    assert len(switches) == 2  # no flapping while loaded
    assert policy.live.name == "ref"
    assert max(worst[50 // 5 + 2 + 1 : 250 // 5]) < 1  # back inside the objective while loaded


def test_single_spike_does_not_switch_and_noise_inside_the_band_never_switches():
    policy = Policy(LADDER, config(), live="ref")
    spike = [{"cars": 0.005}] * 3 + [{"cars": 0.015}] + [{"cars": 0.005}] * 3
    assert run(policy, spike) == []  # one evaluation over high < breach_evals
    policy = Policy(LADDER, config(), live="small")
    # small at 0.7x objective: ref would be 1.75x (no room), small is inside (no breach): stay
    noisy = [{"cars": 0.007 + 0.001 * ((-1) ** i)} for i in range(50)]
    assert run(policy, noisy) == []


def test_cooldown_blocks_decisions_right_after_a_switch():
    policy = Policy(LADDER, config(breach_evals=1, cooldown_s=60), live="ref")
    overloaded = [{"cars": 0.05}] * 30  # every variant over: falls to the lightest, then waits
    switches = run(policy, overloaded)
    assert switches == [(0.0, "ref", "small", "over_objective")]  # already lightest: nothing further


def test_stepwise_moves_without_latency_data_one_rung_at_a_time():
    ladder = [Variant(v.name, v.version, v.accuracy, None) for v in LADDER]
    policy = Policy(ladder, config(breach_evals=1, recover_evals=1, cooldown_s=10), live="ref")
    switches = run(policy, [{"cars": 0.02}] * 6 + [{}] * 12)
    assert [(a, b) for _, a, b, _ in switches] == [("ref", "mid"), ("mid", "small"), ("small", "mid"), ("mid", "ref")]


def test_no_traffic_counts_as_room_and_nan_is_ignored():
    policy = Policy(LADDER, config(recover_evals=2), live="small")
    switches = run(policy, [{"cars": None, "people": float("nan")}] * 3)
    assert switches and switches[0][1:] == ("small", "ref", "load_fell")


def test_config_and_policy_reject_bad_values_naming_them():
    with pytest.raises(ConfigError, match="objective"):
        ControllerConfig(objectives_s={})
    with pytest.raises(ConfigError, match="low"):
        config(low=0.95)
    with pytest.raises(ConfigError, match="nope"):
        Policy(LADDER, config(), live="nope")


def test_parse_slo_and_yaml_reject_malformed_input(tmp_path):
    assert parse_slo(["cars=50", "people=12.5"]) == {"cars": 0.05, "people": 0.0125}
    for bad in ("cars", "cars=", "=5", "cars=-1", "cars=fast"):
        with pytest.raises(ConfigError, match="TASK=MILLISECONDS"):
            parse_slo([bad])
    good = tmp_path / "ok.yaml"
    good.write_text("prometheus: http://p:9090\nobjectives_ms: {cars: 40}\ncooldown_s: 30\n")
    assert load_optimize_yaml(good)["objectives_ms"] == {"cars": 40}
    bad = tmp_path / "bad.yaml"
    bad.write_text("prometheus: http://p:9090\ncooldown: 30\n")
    with pytest.raises(ConfigError, match="cooldown"):
        load_optimize_yaml(bad)


def test_read_variants_takes_accuracy_and_latency_from_variant_json(tmp_path, fakes):
    work = fakes.make_workspace(tmp_path / "work")
    fakes.add_variant_metrics(work)
    summary = build_repository(work)
    variants = {v.name: v for v in read_variants(work, summary.path)}
    assert set(variants) == {"ref", "small"}  # "rejected" is not admitted
    assert variants["ref"].accuracy == pytest.approx(0.5) and variants["ref"].latency_ms == 10.0
    assert summary.trunk_versions[variants["small"].version] == "small"
    meta = json.loads((work / "trunk/small/variant.json").read_text())
    (work / "trunk/small/variant.json").write_text(json.dumps({**meta, "pareto": False}))
    assert [v.name for v in read_variants(work, summary.path)] == ["ref"]


class FakeReader:
    def __init__(self, values):
        self.values = list(values)

    def p95(self, source="client"):
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


def test_dry_run_controller_logs_exports_and_survives_prometheus_outages(caplog):
    metrics = PolyheadMetrics()
    reader = FakeReader([ServingError("prometheus down"), {"cars": 0.05}, {"cars": 0.05}])
    ctl = Controller(Policy(LADDER, config(breach_evals=2), live="ref"), reader, None, metrics)
    with caplog.at_level("INFO", logger="serving.controller.loop"):
        assert ctl.step(now=0) is None  # outage: no decision, no crash
        assert ctl.step(now=5) is None
        d = ctl.step(now=10)
    assert d is not None and d.to.name == "small" and ctl.policy.live.name == "small"
    assert "dry-run decision" in caplog.text and '"to": "small"' in caplog.text
    text = generate_latest(metrics.registry).decode()
    assert 'polyhead_controller_decisions_total{from="ref",reason="over_objective",to="small"} 1.0' in text
    assert 'polyhead_trunk_variant_info{variant="small",version="3"} 1.0' in text
    assert 'polyhead_slo_objective_seconds{task="cars"} 0.01' in text
