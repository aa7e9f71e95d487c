"""The package's layout rule, checked on the source (docs/architecture.md):

    config, errors, files  <-  model  <-  loading  <-  pipeline  <-  serve, train  <-  eval  <-  cli

A module imports only from its own layer or the layers below; ``serve`` and ``train`` do not import
each other; nothing imports ``cli``; there are no import cycles (typing-only imports under
``if TYPE_CHECKING:`` do not run and are not counted).  An import inside a function is
allowed in ``cli/`` and package faces (``__init__.py``); anywhere else it says why with a
``# lazy: ...`` comment (an optional extra, or a light path that must not import torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "longvu"
BASE = {"config", "errors", "files"}
RANK = {"base": 0, "model": 1, "loading": 2, "pipeline": 3, "serve": 4, "train": 4, "eval": 5, "cli": 6}
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_TOP_MODULES = 600, 80, 6


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def imports(module: str, path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported longvu module, node, inside a function) for every import of the package."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing-only: never imported at run time
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "longvu" or target.startswith("longvu."):
                    for alias in child.names:
                        sub = f"{target}.{alias.name}"
                        found.append((sub if sub in MODULES else target, child, in_function))
                elif in_function:
                    found.append(("", child, True))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    name = alias.name if alias.name.startswith("longvu") else ""
                    if name or in_function:
                        found.append((name, child, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


MODULES = modules()


def test_few_modules_at_the_top():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_MODULES, top


def test_imports_only_run_downward():
    wrong = []
    for module, path in MODULES.items():
        here = layer(module)
        for target, node, _ in imports(module, path):
            if not target:
                continue
            there = layer(target)
            if there == "cli" and here != "cli":
                wrong.append(f"{module}:{node.lineno} imports the CLI ({target})")
            elif RANK[there] > RANK[here] or (RANK[there] == RANK[here] and there != here and here != "base"):
                wrong.append(f"{module}:{node.lineno} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package face (__init__) re-exporting its own modules is not a cycle with them
    for m in graph:
        if MODULES[m].name == "__init__.py":
            graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def walk(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]) if t in stack else f"{m} -> {t}")
            elif t not in state:
                walk(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_say_why():
    silent = []
    for module, path in MODULES.items():
        if layer(module) == "cli" or path.name == "__init__.py":
            continue
        lines = path.read_text().splitlines()
        for _, node, in_function in imports(module, path):
            if not in_function:
                continue
            around = lines[node.lineno - 2 : node.end_lineno]
            if not any("# lazy:" in line for line in around):
                silent.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, f"{len(silent)} imports inside functions without a '# lazy:' reason:\n" + "\n".join(silent)


def test_files_and_functions_stay_short():
    long = []
    for module, path in MODULES.items():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_FILE_LINES:
            long.append(f"{module}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {size} lines")
    assert not long, "\n".join(long)


def test_the_rule_itself_catches_an_upward_import(tmp_path):
    """The checker is not vacuous: a model module importing the pipeline is found."""
    path = tmp_path / "bad.py"
    path.write_text("from ..pipeline.api import LongVU\n\ndef f():\n    import torch\n")
    found = imports("longvu.model.bad", path)
    assert [(t, inside) for t, _, inside in found] == [("longvu.pipeline.api", False), ("", True)]
    assert layer("longvu.pipeline.api") == "pipeline" and RANK["pipeline"] > RANK["model"]
