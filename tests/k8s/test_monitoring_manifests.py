"""The PrometheusRule and dashboard ConfigMap are generated from monitoring/ (one source of truth)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import K8S, ROOT, one

sys.path.insert(0, str(K8S / "tools"))
import gen_monitoring  # noqa: E402


def test_generated_files_are_up_to_date() -> None:
    stale = gen_monitoring.stale()
    assert not stale, f"stale: {stale}; run `python k8s/tools/gen_monitoring.py`"


def test_prometheusrule_groups_equal_the_rules_file(rendered: dict) -> None:
    source = yaml.safe_load((ROOT / "monitoring/prometheus/rules.yml").read_text())
    for docs in rendered.values():
        rule = one(docs, "PrometheusRule", "polyhead")
        assert rule["spec"]["groups"] == source["groups"]
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheusrule_rules_pass_promtool(rendered: dict, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: apt-get install -y --no-install-recommends prometheus")
    rule = one(rendered["gpu"], "PrometheusRule", "polyhead")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    n_rules = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"{n_rules} rules found" in out.stdout


def test_dashboard_configmap_is_the_dashboard_labelled_for_grafana(rendered: dict) -> None:
    source = json.loads((ROOT / "monitoring/grafana/polyhead.json").read_text())
    for docs in rendered.values():
        cm = one(docs, "ConfigMap", "polyhead-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["polyhead.json"]) == source


def test_generator_rejects_a_file_without_groups() -> None:
    with pytest.raises(ValueError, match="groups"):
        gen_monitoring.prometheus_rule("rules: []\n")
