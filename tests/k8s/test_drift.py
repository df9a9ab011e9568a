"""No drift between the manifests and the code: ports, probes, paths, model and metric names."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from serving.cli.main import build_parser
from serving.triton import deployment_facts as facts
from serving.triton.embedded_server import EmbeddedTriton
from shared.workspace import Workspace
from tests.fake_workspace import make_workspace
from tests.k8s.manifests import K8S, OVERLAYS, ROOT, container, find, one

ADAPTER = yaml.safe_load((K8S / "monitoring/prometheus-adapter-rules.yaml").read_text())


def _triton(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "polyhead-triton")


def _args(c: dict) -> dict[str, str]:
    """``--flag=value`` arguments of a container as a dict (repeated flags: last wins)."""
    return dict(a[2:].split("=", 1) for a in c.get("args", []) if a.startswith("--") and "=" in a)


def test_facts_match_the_embedded_server_defaults() -> None:
    params = inspect.signature(EmbeddedTriton.__init__).parameters
    assert params["http_port"].default == facts.HTTP_PORT
    assert params["grpc_port"].default == facts.GRPC_PORT
    assert params["metrics_port"].default == facts.METRICS_PORT
    source = inspect.getsource(EmbeddedTriton)
    assert facts.READY_PATH in source and "--model-control-mode=explicit" in source
    assert Workspace.at("w").repository.name == facts.REPOSITORY_DIRNAME


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_ports_and_probes_match_the_server(rendered: dict, overlay: str) -> None:
    c = container(_triton(rendered[overlay]), "triton")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": facts.HTTP_PORT, "grpc": facts.GRPC_PORT, "metrics": facts.METRICS_PORT}
    assert c["startupProbe"]["httpGet"] == {"path": facts.LIVE_PATH, "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": facts.LIVE_PATH, "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": facts.READY_PATH, "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "startup budget must cover model loading"


def test_gpu_triton_command_line_matches_the_facts(rendered: dict) -> None:
    c = container(_triton(rendered["gpu"]), "triton")
    args = _args(c)
    assert c["command"] == ["tritonserver"]
    assert args["model-control-mode"] == "explicit"
    assert (args["http-port"], args["grpc-port"], args["metrics-port"]) == tuple(
        str(p) for p in (facts.HTTP_PORT, facts.GRPC_PORT, facts.METRICS_PORT)
    )
    assert args["model-repository"] == f"$(WORKSPACE_URL)/{facts.REPOSITORY_DIRNAME}"
    for flag in ("grpc-restricted-protocol", "http-restricted-api"):
        protocols, key = args[flag].split(":", 1)
        assert "model-repository" in protocols.split(",")
        assert key == f"{facts.ADMIN_KEY_HEADER}=$({facts.ADMIN_KEY_ENV})"
    env = {e["name"]: e for e in c["env"]}
    assert env[facts.ADMIN_KEY_ENV]["valueFrom"]["secretKeyRef"]["name"] == "polyhead-admin-key"
    assert "WORKSPACE_URL" in env  # $(WORKSPACE_URL) is only expanded when defined
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:24.10-py3")


def test_cpu_triton_runs_polyhead_serve_with_arguments_the_cli_accepts(rendered: dict) -> None:
    dep = _triton(rendered["cpu"])
    c = container(dep, "triton")
    args = build_parser().parse_args(c["args"])  # SystemExit here = the CLI no longer takes them
    assert args.command == "serve"
    assert (args.http_port, args.grpc_port, args.metrics_port) == (facts.HTTP_PORT, facts.GRPC_PORT, facts.METRICS_PORT)
    assert args.host == "0.0.0.0"
    repo = Workspace.at(args.workdir).repository
    fetch = container(dep, "fetch-repository", init=True)
    assert fetch["command"][-2:] == [f"$(WORKSPACE_URL)/{facts.REPOSITORY_DIRNAME}", str(repo)]
    assert any(str(repo).startswith(m["mountPath"]) for m in c["volumeMounts"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_servicemonitors_and_policies_name_real_ports(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    pod_ports: dict[str, dict[str, int]] = {}
    for dep in find(docs, "Deployment"):
        component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        pod_ports[component] = {
            p["name"]: p["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
    for svc in find(docs, "Service"):
        ports = pod_ports[svc["spec"]["selector"]["app.kubernetes.io/component"]]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: targetPort {p['targetPort']}"
            assert p["port"] == ports[p["targetPort"]], f"{svc['metadata']['name']}: {p['name']}"
    for sm in find(docs, "ServiceMonitor"):
        component = sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        services = [
            s
            for s in find(docs, "Service")
            if s["spec"]["selector"]["app.kubernetes.io/component"] == component
            and s["spec"].get("clusterIP") != "None"
        ]
        svc_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in svc_ports, f"ServiceMonitor {sm['metadata']['name']} scrapes unknown port {ep['port']}"
            assert ep["path"] == facts.METRICS_PATH
    assert {e["port"] for e in one(docs, "ServiceMonitor", "polyhead-triton")["spec"]["endpoints"]} >= {"metrics"}
    for pol in find(docs, "NetworkPolicy"):
        ports = pod_ports[pol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]]
        for rule in pol["spec"]["ingress"]:
            for p in rule["ports"]:
                assert p["port"] in ports, f"NetworkPolicy {pol['metadata']['name']}: port {p['port']}"
    triton_policy = one(docs, "NetworkPolicy", "polyhead-triton")["spec"]["ingress"]
    client_ports = {p["port"] for p in triton_policy[0]["ports"]}
    monitoring_ports = {p["port"] for p in triton_policy[1]["ports"]}
    assert client_ports == {"grpc", "http"} and "metrics" in monitoring_ports
    monitoring_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert triton_policy[1]["from"] == [monitoring_ns]


def test_hpa_metric_is_the_one_the_adapter_serves(rendered: dict) -> None:
    (rule,) = ADAPTER["rules"]["custom"]
    assert rule["name"]["as"] == facts.HPA_METRIC
    assert re.fullmatch(rule["name"]["matches"], facts.TRITON_QUEUE_METRIC)
    query = rule["metricsQuery"]
    assert facts.TRITON_QUEUE_METRIC in query and facts.TRITON_SUCCESS_METRIC in query
    assert query.count(f'model="{facts.TRUNK_MODEL}"') == 2
    assert f'model="{facts.TRUNK_MODEL}"' in rule["seriesQuery"]
    for docs in rendered.values():
        hpa = one(docs, "HorizontalPodAutoscaler", "polyhead-triton")
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == facts.HPA_METRIC
        assert hpa["spec"]["scaleTargetRef"]["name"] == "polyhead-triton"


def test_triton_counters_named_by_the_adapter_are_the_ones_the_code_reads() -> None:
    from serving.monitoring import latency_exporter as exporter

    assert exporter.STAGES["queue"] == facts.TRITON_QUEUE_METRIC
    rules = (ROOT / "monitoring/prometheus/rules.yml").read_text()
    assert facts.TRITON_QUEUE_METRIC in rules and facts.TRITON_SUCCESS_METRIC in rules


@pytest.fixture(scope="module")
def built_repository(tmp_path_factory: pytest.TempPathFactory):
    from serving.triton.repository import build_repository

    work = make_workspace(tmp_path_factory.mktemp("k8s-work"))
    return build_repository(work, backend="onnxruntime", dynamic_batching=True)


def test_model_names_in_manifests_are_the_ones_the_repository_builds(built_repository, rendered: dict) -> None:
    models = built_repository.models
    assert facts.TRUNK_MODEL in models and facts.FANOUT_MODEL in models
    assert all(facts.MODEL_NAME_RE.match(m) for m in models), models
    for task in built_repository.tasks:
        assert facts.HEAD_MODEL.format(task=task) in models and facts.TASK_MODEL.format(task=task) in models
    assert built_repository.path.name == facts.REPOSITORY_DIRNAME
    assert (built_repository.path / facts.TRUNK_MODEL / "config.pbtxt").is_file()
    # the controller's config names tasks; each becomes a model name detect_<task>
    from serving.controller.objectives import load_optimize_yaml

    for overlay, docs in rendered.items():
        path = built_repository.path.parent / f"controller-{overlay}.yaml"
        path.write_text(one(docs, "ConfigMap", "polyhead-controller")["data"]["controller.yaml"])
        config = load_optimize_yaml(path)  # ConfigError on keys `polyhead optimize` does not know
        for task in config["objectives_ms"]:
            assert facts.MODEL_NAME_RE.match(facts.TASK_MODEL.format(task=task)), task


def test_controller_and_exporter_arguments_parse_with_the_cli(rendered: dict) -> None:
    docs = rendered["gpu"]
    controller = container(one(docs, "Deployment", "polyhead-controller"), "controller")
    exporter = container(_triton(docs), "exporter")
    for c in (controller, exporter):
        build_parser().parse_args(c["args"])  # SystemExit = the manifest passes flags the CLI lacks
    assert str(facts.METRICS_PORT) in " ".join(exporter["args"])


def _real_triton_metrics(repo: Path) -> str:
    import urllib.request

    from serving.triton.embedded_server import free_port

    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as srv:
        with urllib.request.urlopen(srv.metrics_url, timeout=10) as resp:
            return resp.read().decode()


@pytest.mark.triton
def test_real_triton_exports_the_adapter_series_for_the_trunk(tmp_path: Path) -> None:
    from serving.triton.repository import build_repository

    work = make_workspace(tmp_path / "work")
    summary = build_repository(work)  # python backend: what the bundled tritonserver runs
    text = _real_triton_metrics(summary.path)
    for metric in (facts.TRITON_QUEUE_METRIC, facts.TRITON_SUCCESS_METRIC):
        assert re.search(rf'^{metric}{{[^}}]*model="{facts.TRUNK_MODEL}"', text, re.M), f"{metric} for trunk missing"


@pytest.mark.triton
def test_real_triton_enforces_the_overlay_restricted_protocol_flags(rendered: dict, tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    from serving.triton.embedded_server import free_port

    key = "test-key-123"
    flags = [
        a.replace(f"$({facts.ADMIN_KEY_ENV})", key)
        for a in container(_triton(rendered["gpu"]), "triton")["args"]
        if "restricted" in a
    ]
    assert len(flags) == 2
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = EmbeddedTriton(
        repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), models=[], extra_args=tuple(flags)
    )
    with srv:
        index = f"{srv.http_url}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(index, data=b"{}", method="POST"), timeout=10)
        assert facts.ADMIN_KEY_HEADER in refused.value.read().decode()
        req = urllib.request.Request(index, data=b"{}", method="POST", headers={facts.ADMIN_KEY_HEADER: key})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read()) == []
        with urllib.request.urlopen(f"{srv.http_url}{facts.READY_PATH}", timeout=10) as resp:
            assert resp.status == 200
