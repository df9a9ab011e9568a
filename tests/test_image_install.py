"""The image installs what ``polyhead serve``, ``monitor`` and ``optimize`` import, with the Makefile's install line.

Statically: the imports of those commands (their function bodies included, then every project
module they reach, the Triton python backend too) give the third-party modules they load; each
must come from a distribution that the Dockerfile's ``pip install`` lines pull in (resolved
through this environment's package metadata, dependencies of dependencies included).
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
#: Modules the tritonserver python stub provides to the backend (no distribution installs them).
RUNTIME_PROVIDED = {"triton_python_backend_utils"}
PROJECT = ("shared", "heads", "transfer", "serving")
#: (file, function) whose body imports what each command runs; None: the whole module.
ENTRY_POINTS = (
    ("serving/cli/main.py", None),  # module level only (SHALLOW)
    ("serving/cli/serving_commands.py", "_cmd_serve"),
    ("serving/cli/serving_commands.py", "repository_to_serve"),
    ("serving/cli/monitor_commands.py", "_cmd_monitor"),
    ("serving/cli/monitor_commands.py", "_optimize_options"),
    ("serving/cli/monitor_commands.py", "_cmd_optimize"),
    ("serving/triton/backend/model.py", None),  # runs inside tritonserver's python stub, in the image's python
)


#: Command-line modules hold every command's lazy imports: only their module level counts (and ENTRY_POINTS).
SHALLOW = "serving.cli"


def _imports(tree: ast.AST, shallow: bool = False) -> set[str]:
    """Modules ``tree`` imports (``importlib.util.find_spec("x")`` counts); ``shallow``: module level only."""
    names = set()
    nodes = ast.walk(tree) if not shallow else (n for top in tree.body for n in ast.walk(top)
                                                if not isinstance(top, (ast.FunctionDef, ast.ClassDef)))
    for node in nodes:
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "find_spec" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def third_party_imports() -> set[str]:
    """Top-level names of the non-project, non-stdlib modules the entry points reach."""
    todo, seen, external = [], set(), set()
    for file, function in ENTRY_POINTS:
        tree = ast.parse((ROOT / file).read_text())
        if function is not None:
            tree = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
        todo += sorted(_imports(tree, shallow=function is None and file.startswith("serving/cli")))
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top not in PROJECT:
            if top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
            continue
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")  # the parent packages run their __init__ too
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(ast.parse(path.read_text()), shallow=name.startswith(SHALLOW)))
    return external - RUNTIME_PROVIDED


def image_requirements() -> list[Requirement]:
    """What the Dockerfile's ``pip install`` lines name: packages, and the project with its extras."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = pyproject["optional-dependencies"]
    reqs: list[Requirement] = []

    def project(selected: set[str]) -> None:
        reqs.extend(Requirement(r) for r in pyproject["dependencies"])
        for extra in selected:
            for r in map(Requirement, extras[extra]):
                if canonicalize_name(r.name) == canonicalize_name(pyproject["name"]):
                    project(set(r.extras))  # a self-reference: polyhead[cpu,embedded]
                else:
                    reqs.append(r)

    for line in re.findall(r"^RUN pip install (.+)$", (ROOT / "Dockerfile").read_text(), re.M):
        for arg in line.split():
            if arg.startswith("-"):
                continue
            found = re.fullmatch(r'"?\.\[([a-z0-9_,-]+)\]"?', arg)
            if found:
                project(set(found.group(1).split(",")))
            else:
                reqs.append(Requirement(arg.strip('"')))
    return reqs


def installed_closure(reqs: list[Requirement]) -> set[str]:
    """Canonical names of the distributions ``reqs`` install, dependencies included (this environment's metadata)."""
    done: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in reqs]
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), extras)
        if key in done:
            continue
        done.add(key)
        names.add(key[0])
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: the image has it, its dependencies are unknown here
        for text in requires:
            dep = Requirement(text)
            envs = [default_environment() | {"extra": e} for e in (extras or {""})]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append((dep, frozenset(dep.extras)))
    return names


def test_the_image_and_make_share_one_install_line() -> None:
    docker = re.findall(r'pip install "?\.\[([a-z0-9_,-]+)\]"?', (ROOT / "Dockerfile").read_text())
    makefile = (ROOT / "Makefile").read_text()
    assert docker == ["serve"]
    assert 'pip install -e ".[$(EXTRAS_$(EXTRA))]"' in makefile
    assert re.search(r"^EXTRA \?= cpu$", makefile, re.M) and re.search(r"^EXTRAS_cpu := serve,test$", makefile, re.M)


def test_the_image_installs_every_package_serve_monitor_and_optimize_import() -> None:
    modules = third_party_imports()
    assert {"tritonclient", "pytriton", "onnxruntime", "prometheus_client", "numpy"} <= modules
    installed = installed_closure(image_requirements())
    dists = metadata.packages_distributions()
    missing = {m: dists.get(m) for m in sorted(modules)
               if not any(canonicalize_name(d) in installed for d in dists.get(m, [m]))}
    assert missing == {}, f"the Dockerfile's install misses the distributions of {missing}"


def test_the_check_fails_for_an_image_without_the_embedded_server() -> None:
    reqs = [r for r in image_requirements() if canonicalize_name(r.name) != "nvidia-pytriton"]
    assert "nvidia-pytriton" not in installed_closure(reqs)  # so the test above can fail
