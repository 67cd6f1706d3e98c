"""Every project import runs one way: scripts above gpt2 above lib, and no module imports
itself back through another."""
import ast

from lib.config import ROOT

LAYERS = {"lib": 0, "gpt2": 1, "scripts": 2}


def module_imports() -> dict:
    graph = {}
    for pkg in LAYERS:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_layer_imports_a_layer_above_it():
    wrong = [(m, d) for m, deps in module_imports().items() for d in deps
             if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]]]
    assert wrong == []


def test_no_import_cycles():
    graph = module_imports()

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert [m for m in graph if m in reachable(m)] == []
