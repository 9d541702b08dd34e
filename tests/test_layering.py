"""The import graph of the package: imports point down only, no cycles, no private names across modules.

Every import is read from the source (absolute and relative, at any depth, including imports inside
functions), resolved to the module it names, and checked against the layer table of docs/architecture.md §1.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG_DIR = PKG_ROOT = Path(__file__).resolve().parents[1] / "mcp_interp"

# Higher ranks may import lower ones; equal ranks only themselves. (docs/architecture.md §1)
RANK = {
    "tasks": 0, "models": 0, "artifacts": 0, "prompts": 0, "skills": 0,
    "methods": 1, "toymodels": 1,
    "evaluation": 2,
    "runtime": 3,
    "tools": 4,
    "server": 5,
}


def _module_of(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PKG_DIR.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _imports(path: Path):
    """(target module, imported names, line) for every import in the file, resolved to absolute names."""
    mod, is_pkg = _module_of(path)
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[: len(base) - (node.level - 1)]
                target = ".".join(root + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _sources() -> list[Path]:
    return sorted(p for p in PKG_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _family(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mcp_interp" else None


def test_every_package_has_a_layer():
    packages = {p.name for p in PKG_DIR.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.name for p in PKG_DIR.iterdir() if p.is_dir() and any(p.glob("*.md"))}
    assert packages - set(RANK) == set(), "a new package needs a row in RANK (and in docs/architecture.md §1)"


def _down_only(path: Path) -> list[str]:
    mod, _ = _module_of(path)
    here = _family(mod)
    out = []
    for target, names, line in _imports(path):
        there = _family(target)
        if not target.startswith("mcp_interp") or there is None or here is None or there == here:
            continue
        if RANK[there] >= RANK[here]:
            out.append(f"{mod}:{line} imports {target}: {here} may not import {there}")
    return out


def _families_share_only_core(path: Path) -> list[str]:
    """methods/<family> imports only itself and methods/core; core imports no family."""
    mod, _ = _module_of(path)
    parts = mod.split(".")
    if parts[:2] != ["mcp_interp", "methods"] or len(parts) < 3:
        return []
    fam, out = parts[2], []
    for target, _, line in _imports(path):
        t = target.split(".")
        if t[:2] == ["mcp_interp", "methods"] and len(t) > 2 and t[2] != fam and not (t[2] == "core" and fam != "core"):
            out.append(f"{mod}:{line} imports {target}")
    return out


def _no_private_names(path: Path) -> list[str]:
    mod, _ = _module_of(path)
    out = []
    for target, names, line in _imports(path):
        if target.startswith("mcp_interp") and target != mod:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                out.append(f"{mod}:{line} imports private {private} from {target}")
    return out


# One test per rule over every source file (not one per file: the suite's count says how much behaviour is tested).
@pytest.mark.parametrize("rule", [_down_only, _families_share_only_core, _no_private_names],
                         ids=["imports_point_down_only", "method_families_share_only_core", "no_private_names"])
def test_every_module_keeps_the_rule(rule):
    sources = _sources()
    assert len(sources) > 100  # the walk found the package
    violations = [v for p in sources for v in rule(p)]
    assert not violations, "\n".join(violations)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """Each rule fails on a file that breaks it (read from a fake package laid out like ours)."""
    pkg = tmp_path / "mcp_interp"
    (pkg / "models").mkdir(parents=True)
    (pkg / "methods" / "das").mkdir(parents=True)
    bad_up = pkg / "models" / "x.py"
    bad_up.write_text("from ..tools import base\n")
    bad_family = pkg / "methods" / "das" / "y.py"
    bad_family.write_text("from ..scrubbing import z\nfrom ..core.sites import _HOOKS\n")
    globals()["PKG_DIR"] = pkg  # the helpers read the package root from here
    try:
        assert _down_only(bad_up) and _families_share_only_core(bad_family) and _no_private_names(bad_family)
    finally:
        globals()["PKG_DIR"] = PKG_ROOT


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    known = {_module_of(p)[0] for p in _sources()}
    for p in _sources():
        mod, _ = _module_of(p)
        deps = graph.setdefault(mod, set())
        for target, names, _ in _imports(p):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in known and cand != mod:
                    deps.add(cand)
                    break
    # Package __init__ files re-export their modules, so edges into a package's own init are expected;
    # a cycle is a path back to the start through other modules.
    def pkg_of(m: str) -> str:
        return m.rsplit(".", 1)[0]

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in graph.get(m, ()):
            if m.startswith(d + ".") or pkg_of(m) == d:
                continue  # a module importing its own package's API
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
