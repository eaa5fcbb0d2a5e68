"""The packages' import graph, read from the source with ast (imports inside functions
included): no module of minigpt/ or lens/ imports itself back through others, and minigpt
never imports lens."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minigpt", "lens")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set) -> set:
    """The modules of `modules` that the file imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from . import gpt2" imports the module minigpt.gpt2; "from .gpt2 import embed" imports minigpt.gpt2
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules}
    found.discard(name)
    return found


def import_graph() -> dict:
    paths = [p for package in PACKAGES for p in sorted((ROOT / package).glob("*.py"))]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "minigpt.gpt2" in graph["minigpt.model"] and "minigpt.layout" in graph["minigpt.checkpoint"]
    assert "minigpt.parallel" in graph["lens.cells"] and "lens.formulas" in graph["lens.cells"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_minigpt_never_imports_lens():
    for module, targets in import_graph().items():
        if module.split(".")[0] == "minigpt":
            assert not {t for t in targets if t.split(".")[0] == "lens"}, module


def imports_of(path):
    """Top-level names a file imports; relative imports as ".module"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {"." * node.level + (node.module or "").split(".")[0] if node.level else node.module.split(".")[0]
                 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return imported


def test_gpt2_imports_numpy_the_standard_library_and_the_thread_pool_only():
    # the forward pass reads alone: its one helper, parallel.py, is a leaf of the standard library
    assert imports_of(ROOT / "minigpt" / "gpt2.py") <= {"numpy", "math", "functools", ".parallel"}
    assert imports_of(ROOT / "minigpt" / "parallel.py") <= {"numpy", "os", "threading", "functools", "concurrent"}
