"""The package's layers: imports point only down, with no circles, and importing the package (or a
light module) does not load what it does not need."""
import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lfvit_jax"
# Bottom to top. A module may import its own package and packages of lower layers only.
LAYERS = (("core",), ("io",), ("models", "data"), ("tasks",), ("weights",), ("evaluation",),
          ("inference",), ("training",), ("demo",), ("cli",))
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit(module):
    """'lfvit_jax.models.vit' -> 'models'; the package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph():
    """{module: {imported lfvit_jax modules}}, every import in the source, function-local too."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets |= {(node.module, a.name) for a in node.names}
        graph[name] = targets
    modules = set(graph)

    def resolve(target):  # `from a.b import c` imports module a.b.c if there is one, else a.b
        if isinstance(target, str):
            return target
        module, name = target
        return f"{module}.{name}" if f"{module}.{name}" in modules else module
    return {m: {t for t in map(resolve, ts) if t in modules and t != "lfvit_jax"}
            for m, ts in graph.items()}


def test_imports_point_down():
    wrong = []
    for module, targets in import_graph().items():
        here = unit(module)
        for target in targets:
            there = unit(target)
            if here is None or there is None or there == here:
                continue
            if RANK[there] >= RANK[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_every_unit_has_a_layer():
    assert {unit(m) for m in import_graph()} - {None} <= set(RANK)


def test_no_import_circles():
    graph = import_graph()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError(" -> ".join(path[path.index(nxt):] + [nxt])
                                     if nxt in path else f"{node} -> {nxt}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def loaded(code):
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print(sorted({m.split('.')[0]"
                          " for m in sys.modules}))"], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    return set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))


def test_the_package_loads_without_plotting_or_data_libraries():
    assert not loaded("import lfvit_jax; lfvit_jax.LFViT") & {"matplotlib", "tensorflow_datasets",
                                                               "grain"}


def test_pure_modules_load_without_jax():
    assert "jax" not in loaded("import lfvit_jax.inference.exit_queue, lfvit_jax.models.geometry, "
                               "lfvit_jax.core.config_args")
