"""The package's import graph: no cycle between modules, and the library never imports the CLIs."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eager2trt"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every eager2trt module `path` imports, at module level or inside functions (a lazy import is a dependency)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in MODULES and c != name)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: imports(p) for m, p in MODULES.items()}


def test_no_import_cycle():
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_library_never_imports_the_clis():
    library = {m: deps for m, deps in GRAPH.items() if not m.startswith("eager2trt.cli")}
    offenders = {m: sorted(d for d in deps if d.startswith("eager2trt.cli")) for m, deps in library.items()}
    assert not {m: d for m, d in offenders.items() if d}


def test_no_library_function_takes_argparse_args():
    """The library takes keyword arguments; only the CLIs see argparse's namespace."""
    offenders = []
    for m, path in MODULES.items():
        if m.startswith("eager2trt.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "args" for a in node.args.args):
                offenders.append(f"{m}.{node.name}")
    assert not offenders
