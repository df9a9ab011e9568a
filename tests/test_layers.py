"""The package layers: imports point down only (shared <- heads <- transfer <- serving), files stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Each package and the project packages it may import (besides itself).
ALLOWED = {
    "shared": set(),
    "heads": {"shared"},
    "transfer": {"shared", "heads"},
    "serving": {"shared", "heads", "transfer"},
}
MAX_LINES = 500
SOURCES = sorted(p for pkg in (*ALLOWED, "bench", "tests") for p in (ROOT / pkg).rglob("*.py"))


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level project packages ``path`` imports, with the line of each import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
    return {(name, line) for name, line in found if name in ALLOWED or name in ("bench", "tests")}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_only(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name, line in sorted(imported_packages(path)):
            if name != package and name not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing'} of ours:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom serving.client import Detector\n\ndef f():\n    import transfer.train\n")
    assert imported_packages(bad) == {("serving", 2), ("transfer", 5)}


def test_no_file_passes_the_line_limit() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"split these into one concept per file (limit {MAX_LINES} lines):\n" + "\n".join(long)


def test_library_packages_never_import_tests_or_bench() -> None:
    library = sorted(p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py"))
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {name}"
             for p in library for name, line in imported_packages(p) if name in ("bench", "tests")]
    assert not wrong, "\n".join(wrong)


def test_the_client_sdk_and_the_triton_runtime_import_no_torch() -> None:
    """A client process (or the exporter beside Triton) must not pay torch's ~200 MB import."""
    code = ("import sys, serving.client, serving.monitoring.latency_exporter, serving.triton.repository, "
            "serving.triton.hot_add; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "a torch import crept into the client or the Triton runtime"
