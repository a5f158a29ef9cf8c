"""Architecture rules, each one a test (docs/architecture.md, "What never imports what").

- The serving image (every module of service/ and what it pulls from export/ and training/) never loads
  torch, sentence_transformers or transformers; only the opt-in torch backend (``service.backends.torch``)
  may. What it pulls in is installed by ``Dockerfile.serve`` (copied folders, ``pip install .``).
- FastAPI and Starlette are loaded by the HTTP layer only (``service.http``, and ``service.__main__``,
  which starts it).
- Dependencies run one way, training → export → retrain / service: training imports nothing of export,
  retrain or service; export nothing of retrain or service; service nothing of retrain.
- Inside the service, http → engine → model / storage: only the HTTP layer imports ``service.http`` and
  ``service.engine``; the model side (``service.model``, ``service.batching``, ``service.backends``) imports
  nothing of the engine, the generations or storage.
- No import circles in training/, export/, retrain/, service/.
- No module there over 400 lines.

Imports are read two ways: by importing modules in a fresh interpreter (what really loads, third-party
packages included), and by an ``ast`` walk of every import statement of every module, at the top and inside
functions alike, so a lazy import counts as an import (``importlib.import_module`` calls are not seen).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import pkgutil
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip's vendored copy of the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "export", "retrain", "service")
ML_LIBRARIES = ("torch", "sentence_transformers", "transformers")
HTTP_LIBRARIES = ("fastapi", "starlette")
TORCH_BACKEND = "service.backends.torch"
HTTP_LAYER = ("service.http", "service.__main__")
NEVER_IMPORTS = {"training": ("export", "retrain", "service"), "export": ("retrain", "service"),
                 "service": ("retrain",)}
# Inside the service, http → engine → model / storage: the top two are imported from above only, and the model
# side (runtime pre/post, batching, backends) knows nothing of where documents live.
IMPORTED_ONLY_BY = {"service.http": HTTP_LAYER, "service.engine": HTTP_LAYER}
MODEL_SIDE = ("service.model", "service.batching", "service.backends")
STORAGE_SIDE = ("service.engine", "service.http", "service.generation", "service.storage", "service.collection",
                "service.index", "service.milvus", "service.store", "service.wal")
MAX_LINES = 400


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# --------------------------------------------------------------------------- what really loads
def service_modules() -> list[str]:
    """Every module of service/, as ``pkgutil.walk_packages`` finds it. The walk imports the packages in this
    process to look inside them; the checks import in a fresh interpreter."""
    import service

    def reraise(name: str) -> None:
        raise  # called inside walk_packages' except block, which would otherwise skip a broken package

    return ["service", *(m.name for m in pkgutil.walk_packages(service.__path__, "service.", onerror=reraise))]


def serving_modules() -> list[str]:
    """What the serving image may run: every service module but the torch backend, and every module of export/
    and training/ that those import, lazily too (the ast walk below), never through the torch backend."""
    modules = [m for m in service_modules() if m != TORCH_BACKEND]
    edges = graph(first_party_only=True)
    seen, todo = set(modules), list(modules)
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen and target != TORCH_BACKEND:
                seen.add(target)
                todo.append(target)
    return modules + sorted(seen - set(modules))


LOAD = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    importlib.import_module(name)
    loaded[name] = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
"""


def load_fresh(modules: list[str]) -> dict[str, list[str]]:
    """Imports ``modules`` in this order in a fresh interpreter: for each, the modules its import loaded first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", LOAD, *modules], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


def offenders(loaded: dict[str, list[str]], libraries: tuple[str, ...]) -> list[str]:
    """For each library that got loaded: the first module whose import loaded it, with the chain of import
    statements that leads there, and every checked module that imports the library itself."""
    lines = []
    for library in libraries:
        first = next((module for module, new in loaded.items() if library in new), None)
        if first is None:
            continue
        chain = import_chain(first, library)
        lines.append(f"{library}: loaded by importing {first}"
                     + (f" ({' → '.join(chain)})" if chain else " (through a third-party package)"))
        lines += dict.fromkeys(f"    {imp.where}: {imp.source} imports {library}"
                               + (" (in a function)" if imp.lazy else "")
                               for imp in all_imports() if imp.target == library and imp.source in loaded)
    return lines


def test_serving_image_loads_no_torch() -> None:
    modules = serving_modules()
    assert "service.__main__" in modules and len(modules) >= 10, modules  # the walk found the service
    loaded = load_fresh(modules)
    found = offenders(loaded, ML_LIBRARIES)
    assert not found, "the serving image must not load torch:\n" + "\n".join(found)
    # nor import it in a function, which the import above does not run
    lazy = [f"{imp.where}: {imp.source} imports {imp.target}" for imp in all_imports()
            if imp.source in loaded and imp.target in ML_LIBRARIES]
    assert not lazy, "the serving image must not import torch, even in a function:\n" + "\n".join(lazy)

    # what the serving image takes from the other stages (the bundle reader, the runtime, the data format, ...)
    everything = {name for new in loaded.values() for name in new}
    pulled = sorted(n for n in everything if n.split(".")[0] in ("export", "training"))
    print("serving imports from export/ and training/:", ", ".join(pulled))
    assert pulled, "service/ imports nothing of export/ or training/: is the walk importing anything?"
    assert not [n for n in everything if within(n, "retrain")]


def test_serving_image_holds_what_the_service_imports() -> None:
    """Dockerfile.serve copies every first-party package the service loads, ``pip install .`` installs it
    (pyproject's package list) and every third-party package those modules import when loaded is a base
    dependency (or one of theirs): the image has no [train] extra."""
    loaded = {n for new in load_fresh(serving_modules()).values() for n in new}
    first_party = sorted({n for n in loaded if n.split(".")[0] in PACKAGES})
    dockerfile = (ROOT / "Dockerfile.serve").read_text()
    build_stage = dockerfile.split("\nFROM ")[1]  # the stage that runs `pip install .`
    assert "pip install ." in build_stage
    copied = {src.rstrip("/") for line in build_stage.splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1] if not src.startswith("--")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in sorted({n.split(".")[0] for n in first_party}):
        assert package in copied, f"Dockerfile.serve does not COPY {package}/, which the service imports"
        assert any(fnmatch.fnmatch(package, p) for p in included), f"pip install . leaves out {package}"

    installed = base_dependencies(project["project"]["dependencies"])
    distributions = metadata.packages_distributions()
    missing = []
    for imp in all_imports():
        top = imp.target.split(".")[0]
        if (imp.source not in first_party or imp.lazy or top in PACKAGES or top in sys.stdlib_module_names):
            continue
        names = {canonical(d) for d in distributions.get(top, [])}
        if not names & installed:
            missing.append(f"{imp.where}: {imp.source} imports {top} ({', '.join(sorted(names)) or 'not installed'})")
    assert not missing, "imported by the service at load time, not installed in the image:\n" + "\n".join(missing)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_dependencies(requirements: list[str]) -> set[str]:
    """Distributions ``pip install .`` brings: the base requirements and theirs, extras followed."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = canonical(req.name) + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(dep)
    return {key.split("[")[0] for key in seen}


def test_only_the_http_layer_loads_fastapi() -> None:
    modules = [m for m in service_modules() if not any(within(m, layer) for layer in HTTP_LAYER)]
    assert "service.engine" in modules and len(modules) >= 10, modules
    found = offenders(load_fresh(modules), HTTP_LIBRARIES)
    assert not found, f"only {', '.join(HTTP_LAYER)} may load FastAPI/Starlette:\n" + "\n".join(found)


# --------------------------------------------------------------------------- imports read from the source
@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a first-party module, or a third-party package's top-level name
    where: str  # path:line
    lazy: bool  # inside a function: runs when called, not when the module loads
    relative: bool  # `from .x import y`


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def source_files() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_in(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import statement of a module, relative ones resolved; ``from pkg import name`` imports the module
    ``pkg.name`` when there is one, else ``pkg``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        for target in targets:
            top = target.split(".")[0]
            found.append(Import(module, target if top in PACKAGES else top,
                                f"{path.relative_to(ROOT)}:{node.lineno}", lazy, bool(getattr(node, "level", 0))))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    known = source_files()
    return tuple(imp for module, path in known.items() for imp in imports_in(module, path, known))


@cache
def graph(first_party_only: bool) -> dict[str, set[str]]:
    known = source_files()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for imp in all_imports():
        if imp.target != imp.source and (imp.target in known or not first_party_only):
            edges[imp.source].add(imp.target)
    return edges


def import_chain(start: str, target: str) -> list[str]:
    """Shortest chain of import statements from ``start`` to ``target`` ([] when the source shows none)."""
    edges = graph(first_party_only=False)
    previous = {start: start}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        if node == target:
            chain = [node]
            while chain[-1] != start:
                chain.append(previous[chain[-1]])
            return chain[::-1]
        for nxt in sorted(edges.get(node, ())):
            if nxt not in previous:
                previous[nxt] = node
                todo.append(nxt)
    return []


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_import_graph_is_read() -> None:
    """Guards the two rules below: the walk sees the packages, resolves relative imports and finds cycles."""
    known = source_files()
    assert {"training", "export", "service"} <= {m.split(".")[0] for m in known}
    edges = graph(first_party_only=True)
    assert sum(len(targets) for targets in edges.values()) >= 30
    relative = [imp for imp in all_imports() if imp.relative]
    assert relative and not [imp for imp in relative if imp.target not in known], "relative imports resolved"
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_chain("service.__main__", "service.__main__") == ["service.__main__"]


def test_no_import_circles() -> None:
    edges = graph(first_party_only=True)
    cycles = []
    for component in strongly_connected(edges):
        members = set(component)
        inner = {m: edges[m] & members for m in component}
        # one concrete circle through the component's first module, for the message
        start = component[0]
        loop = min((import_chain(nxt, start) for nxt in inner[start]), key=len)
        cycles.append(" → ".join([start, *loop]) + (f"  (component: {', '.join(component)})"
                                                    if len(component) > len(loop) else ""))
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_dependencies_run_one_way() -> None:
    wrong = [f"{imp.where}: {imp.source} imports {imp.target}" for imp in all_imports()
             if imp.target.split(".")[0] in NEVER_IMPORTS.get(imp.source.split(".")[0], ())]
    assert not wrong, "training → export → retrain/service, never backwards:\n" + "\n".join(wrong)


def test_service_layers() -> None:
    wrong = []
    for imp in all_imports():
        for layer, importers in IMPORTED_ONLY_BY.items():
            if within(imp.target, layer) and not any(within(imp.source, i) for i in importers):
                wrong.append(f"{imp.where}: {imp.source} imports {imp.target} (only {', '.join(importers)} may)")
        if any(within(imp.source, m) for m in MODEL_SIDE) and any(within(imp.target, s) for s in STORAGE_SIDE):
            wrong.append(f"{imp.where}: {imp.source} imports {imp.target} (the model side knows no storage)")
    assert not wrong, "inside the service, http → engine → model / storage:\n" + "\n".join(wrong)


def test_no_module_over_400_lines() -> None:
    lengths = {path: len(path.read_text().splitlines()) for path in source_files().values()}
    long = [f"{path.relative_to(ROOT)}: {n} lines" for path, n in sorted(lengths.items()) if n > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines (split by concept):\n" + "\n".join(long)
