"""The reading path (../shared/DESIGN.md, "Files and the shape of the code"):
no package imports, directly or not, a package that imports it back, and
lenet.py and models_handling.py load nothing that sits above them."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The project's own top-level modules and packages: each a node of the graph.
NODES = {path.stem for path in ROOT.glob("*.py")} | {
    path.parent.name for path in ROOT.glob("*/__init__.py") if path.parent.name != "tests"
}


def node_of(module):
    return module.split(".")[0]


def imports_of(path):
    """The project's nodes a file imports, anywhere in it (inside functions too)."""
    found = set()
    for statement in ast.walk(ast.parse(path.read_text())):
        if isinstance(statement, ast.Import):
            found |= {node_of(alias.name) for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            found.add(node_of(statement.module))
    return found & NODES


def graph():
    edges = {node: set() for node in NODES}
    for node in NODES:
        files = [ROOT / f"{node}.py"] if (ROOT / f"{node}.py").exists() else list((ROOT / node).glob("*.py"))
        for path in files:
            edges[node] |= imports_of(path) - {node}
    return edges


def reachable(edges, start):
    seen, todo = set(), [start]
    while todo:
        for target in edges[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_package_imports_one_that_imports_it_back():
    edges = graph()
    cycles = sorted(node for node in NODES if node in reachable(edges, node))
    assert not cycles, {node: sorted(edges[node]) for node in cycles}


def test_lenet_and_models_handling_stand_below_what_wraps_a_training():
    edges = graph()
    assert reachable(edges, "lenet") <= {"common", "utils"}  # utils: the data and the errors, TensorFlow-free
    assert reachable(edges, "models_handling") <= {"common", "training", "lenet", "utils"}
    script = "import sys, lenet, models_handling; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert not loaded & {"harness", "study", "main", "studies", "bench", "visualizations", "dask", "distributed"}
