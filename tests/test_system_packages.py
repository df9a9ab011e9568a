"""``make test``'s first step names (or, as root, installs) the system packages the tests need."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "system_packages.sh"


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{shutil.which('sh')}\n{body}\n")
    path.chmod(0o755)


def test_a_non_root_run_names_each_missing_package_with_its_install_command(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "id", "echo 1000")  # not root: nothing is installed
    _stub(bin_dir, "dpkg", "exit 1")  # libb64-0d absent; promtool, chromium and kubectl are not on this PATH
    run = subprocess.run([shutil.which("bash"), str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert "missing system package prometheus: the Prometheus and monitoring-manifest tests will be skipped" in err
    assert "sudo apt-get install -y --no-install-recommends prometheus" in err
    assert "missing system package libb64-0d: the perf_analyzer tests" in err
    assert "missing system package chromium: the report page test" in err
    assert "sudo apt-get install -y --no-install-recommends chromium" in err
    assert "kubectl missing" in err and "installing" not in run.stdout


def test_nothing_is_reported_when_every_package_is_there(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("promtool", "kubectl", "chromium"):
        _stub(bin_dir, name, "exit 0")
    _stub(bin_dir, "dpkg", "exit 0")
    _stub(bin_dir, "id", "echo 1000")
    run = subprocess.run([shutil.which("bash"), str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and "missing" not in run.stderr and run.stdout == ""
