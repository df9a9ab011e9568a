"""A real Prometheus scraping the real embedded Triton, the exporter and client metrics.

One module-scoped stack: fake workspace -> repository (live variant "ref") -> EmbeddedTriton;
``polyhead monitor``'s exporter and an InstrumentedDetector's metrics on free ports; Prometheus
(1 s scrape and rule evaluation) with monitoring/prometheus/rules.yml; traffic for every task;
one real controller step that switches the trunk. Then every dashboard query must return data.
"""

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from serving.client import Detector
from serving.controller import Controller, ControllerConfig, Policy, TrunkSwitcher, read_variants
from serving.monitoring.latency_exporter import TritonExporter
from serving.monitoring.metrics import InstrumentedDetector, PolyheadMetrics, PrometheusReader
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.repository import build_repository

pytestmark = pytest.mark.triton
MONITORING = Path(__file__).resolve().parents[3] / "monitoring"
RULES = MONITORING / "prometheus" / "rules.yml"
DASHBOARD = MONITORING / "grafana" / "polyhead.json"


def query(prom: str, expr: str) -> list:
    qs = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{prom}/api/v1/query?{qs}", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_for(prom: str, expr: str, timeout_s: float = 20.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(prom, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and annotation, variables substituted."""
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    out += [(a["name"], a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    subst = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "1m", "$task": ".*"}
    return [(title, re.sub("|".join(re.escape(k) for k in subst), lambda m: subst[m.group(0)], e)) for title, e in out]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fakes, prometheus_bin):
    tmp = tmp_path_factory.mktemp("monitoring")
    work = fakes.make_workspace(tmp / "work")
    fakes.add_variant_metrics(work)
    summary = build_repository(work, max_batch_size=4, live_variant="ref")
    ports = {k: free_port() for k in ("grpc", "http", "metrics", "client", "exporter", "controller", "prom")}
    server = EmbeddedTriton(
        summary.path, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"]
    )
    server.start()
    started, stops, prom_proc = [], [], None
    try:
        client_metrics, exporter_metrics, controller_metrics = PolyheadMetrics(), PolyheadMetrics(), PolyheadMetrics()
        for m, port in ((client_metrics, "client"), (exporter_metrics, "exporter"), (controller_metrics, "controller")):
            started.append(m.serve(ports[port])[0])
        stops.append(TritonExporter(server.metrics_url, exporter_metrics, server=server.url).start(0.5))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{ports[port]}"]}]}
                for job, port in (("triton", "metrics"), ("polyhead-clients", "client"),
                                  ("polyhead-monitor", "exporter"), ("polyhead-controller", "controller"))
            ],  # fmt: skip
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed with the process)
        prom_proc = subprocess.Popen(
            [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prom']}"],
            stdout=prom_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        prom = f"http://127.0.0.1:{ports['prom']}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{prom}/-/ready", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and prom_proc.poll() is None, (tmp / "prometheus.log").read_text()
                time.sleep(0.1)
        objectives = {t: 0.5 for t in fakes.TASKS}
        yield {
            "server": server, "prom": prom, "work": work, "repo": summary.path, "ports": ports,
            "client_metrics": client_metrics, "controller_metrics": controller_metrics, "objectives": objectives,
        }  # fmt: skip
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(timeout=10)
        for stop in stops:
            stop.set()
        for httpd in started:
            httpd.shutdown()
        server.stop()


@pytest.fixture(scope="module")
def traffic(stack, fakes):
    """~6 s of requests for every task (single and fan-out) and one failing call, then a controller step."""
    images = fakes.random_images(4)
    det = InstrumentedDetector(Detector(stack["server"].url), stack["client_metrics"], stack["objectives"])
    failures = []
    with det:
        t_end = time.monotonic() + 6
        i = 0
        while time.monotonic() < t_end:
            try:
                det.detect(images[i % 4], tasks=None if i % 4 == 0 else list(fakes.TASKS)[i % 3])
            except Exception as err:  # counted below: there must be none
                failures.append(err)
            i += 1
        with pytest.raises(Exception, match="boats"):
            det.detect(images[0], tasks="boats")
    return {"requests": i, "failures": failures}


@pytest.fixture(scope="module")
def switched(stack, traffic):
    """One real controller decision: objectives far below the measured p95 force ref -> small."""
    reader = PrometheusReader(stack["prom"])
    assert wait_for(stack["prom"], "polyhead:request_latency_seconds:p95"), "recording rule never evaluated"
    tiny = {t: 1e-5 for t in stack["objectives"]}
    policy = Policy(read_variants(stack["work"], stack["repo"]), ControllerConfig(tiny, breach_evals=1), live="ref")
    switcher = TrunkSwitcher(stack["server"].url, stack["repo"])
    controller = Controller(policy, reader, switcher, stack["controller_metrics"])
    decision = controller.step()
    return {"decision": decision, "switcher": switcher}


def test_traffic_succeeds_and_the_controller_switches_the_live_trunk(traffic, switched):
    assert traffic["requests"] > 20 and traffic["failures"] == []
    assert switched["decision"] is not None and switched["decision"].to.name == "small"
    assert switched["switcher"].live_version() == switched["decision"].to.version


def test_every_recording_rule_evaluates(stack, switched):
    rules = yaml.safe_load(RULES.read_text())
    records = [r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r]
    assert len(records) >= 8
    empty = [name for name in records if not wait_for(stack["prom"], name, timeout_s=10)]
    assert empty == []
    rows = query(stack["prom"], "polyhead:request_latency_seconds:p95")
    p95 = {r["metric"]["task"]: float(r["value"][1]) for r in rows}
    assert set(p95) >= set(stack["objectives"]) and all(0 < v < 2 for v in p95.values())


def test_every_dashboard_query_returns_data(stack, switched):
    queries = dashboard_queries()
    assert len(queries) >= 15
    missing = [(title, expr) for title, expr in queries if not wait_for(stack["prom"], expr, timeout_s=10)]
    assert missing == []


def test_dashboard_task_variable_and_live_variant_come_from_the_real_server(stack, switched):
    dash = json.loads(DASHBOARD.read_text())
    var = next(v for v in dash["templating"]["list"] if v["name"] == "task")
    metric = re.match(r"label_values\((\w+), task\)", var["definition"]).group(1)
    qs = urllib.parse.urlencode({"match[]": metric})
    with urllib.request.urlopen(f"{stack['prom']}/api/v1/label/task/values?{qs}", timeout=5) as resp:
        assert set(json.loads(resp.read())["data"]) >= set(stack["objectives"])
    # the exporter reads the live variant from Triton itself: it must follow the switch
    live = wait_for(stack["prom"], 'polyhead_trunk_variant_info{job="polyhead-monitor",variant="small"}')
    assert live, "exporter did not report the new live variant"
    text = DASHBOARD.read_text()
    assert "${datasource}" in text and "127.0.0.1" not in text and "localhost" not in text


def test_server_side_histograms_cover_every_task(stack, switched):
    result = wait_for(stack["prom"], 'polyhead_server_latency_seconds_count{stage="request",task!=""}')
    assert {r["metric"]["task"] for r in result} >= set(stack["objectives"])


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_and_config(promtool):
    res = _promtool(promtool, "check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    res = _promtool(promtool, "check", "config", str(MONITORING / "prometheus" / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_rule_unit_tests_pass(promtool):
    res = _promtool(promtool, "test", "rules", str(MONITORING / "prometheus" / "rules_test.yml"))
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_dashboard_json_is_grafana_shaped():
    dash = json.loads(DASHBOARD.read_text())
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "task"} <= names
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["type"] == "row" or p["datasource"]["uid"] == "${datasource}", p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])


def test_optimize_cli_dry_run_once_proposes_the_accurate_variant_when_there_is_room(stack, switched, capsys):
    from serving.cli.main import main

    argv = ["optimize", "--workdir", str(stack["work"]), "--prometheus", stack["prom"], "--server",
            stack["server"].url, "--slo", "cars=1000", "--slo", "people=1000", "--slo", "signs=1000",
            "--recover-evals", "1", "--dry-run", "--once"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "live small" in out and "[dry run]" in out
    decision = json.loads(out.strip().splitlines()[-1])
    assert decision["to"] == "ref" and decision["reason"] == "load_fell"
    assert switched["switcher"].live_version() == switched["decision"].to.version  # dry run: nothing applied


def test_override_switch_without_a_local_repository_serves_throughout(stack, switched, fakes):
    switcher = TrunkSwitcher(stack["server"].url)  # what Kubernetes uses: no local repository
    assert switcher.versions() == {1: "ref", 2: "small"}
    ref = next(v for v in read_variants(stack["work"], switcher.versions()) if v.name == "ref")
    images = fakes.random_images(2)
    with Detector(stack["server"].url) as det:
        stop, errors = threading.Event(), []

        def hammer():
            while not stop.is_set():
                try:
                    det.detect(images[0], tasks="cars")
                except Exception as err:
                    errors.append(err)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            switcher.apply(ref)
        finally:
            stop.set()
            worker.join()
    assert switcher.live_version() == ref.version and errors == []
