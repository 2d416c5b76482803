"""The layering rules (docs/architecture.md), checked on the real import graph that grimp builds
from every import statement of the code, those inside functions included:

    training  ←  backend  ←  worker          missmod (the client) → none of them
    (bottom)     (API)        (Celery)

no arrow points up and there is no import cycle anywhere. Beside the graph, two run-time facts:
the API never imports torch when it starts (it must start fast and without a GPU), and the
training library loads nothing of the web side."""

from __future__ import annotations

import os
import subprocess
import sys

import grimp
import pytest

from tests.support import ROOT

OUR_PACKAGES = ("training", "backend", "worker", "missmod")
WEB_SIDE = ("backend", "worker", "missmod", "fastapi", "starlette", "sqlalchemy", "alembic", "celery", "kombu",
            "redis", "uvicorn", "sse_starlette")
# What each of our packages must never import, directly or through a function-level import.
FORBIDDEN = {
    "training": WEB_SIDE,
    "backend": ("worker", "missmod"),
    # The client installs and imports for scripts and notebooks: nothing of the server, no torch.
    "missmod": ("worker", "training", "torch", "backend"),
    # A sweep is made of runs: runs know nothing of sweeps (what both use lies below both, and a
    # sweep hears of its runs' ends through backend/runs/outcomes.py's listeners).
    "backend.runs": ("backend.sweeps", "backend.studies"),
    # A study is made of runs and of a sweep (its final runs): neither knows of studies.
    "backend.sweeps": ("backend.studies",),
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph():
    present = [name for name in OUR_PACKAGES if (ROOT / name / "__init__.py").exists()]
    return grimp.build_graph(*present, include_external_packages=True, exclude_type_checking_imports=True)


def ours(module: str) -> bool:
    return module.split(".")[0] in OUR_PACKAGES


def import_edges(graph) -> dict[str, set[str]]:
    """module → the modules of ours it imports. Importing `a.b.c` runs `a/__init__` and
    `a/b/__init__` first, so an import that comes from outside package `a.b` is also an edge to
    it: that is how a package's __init__ can close a cycle that the modules alone do not show."""
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        if not ours(module):
            continue
        targets = set()
        for imported in graph.find_modules_directly_imported_by(module):
            if not ours(imported):
                continue
            targets.add(imported)
            parts = imported.split(".")
            for depth in range(1, len(parts)):
                parent = ".".join(parts[:depth])
                if not (module == parent or module.startswith(parent + ".")):
                    targets.add(parent)
        targets.discard(module)
        edges[module] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_cycle_finder_finds_what_it_must_and_only_that():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_there_is_no_import_cycle_anywhere(graph):
    assert cycles(import_edges(graph)) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_arrows_point_only_down(graph, package):
    if not (ROOT / package.replace(".", "/") / "__init__.py").exists():
        pytest.fail(f"{package}/ is missing")
    wrong = []
    for module in sorted(m for m in graph.modules if within(m, package)):
        for imported in graph.find_modules_directly_imported_by(module):
            if any(within(imported, forbidden) for forbidden in FORBIDDEN[package]):
                wrong.append(f"{module} → {imported}")
    assert wrong == []


def modules_loaded_by(statement: str, env: dict[str, str] | None = None) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_api_and_its_pages_load_without_torch():
    loaded = modules_loaded_by("from backend.main import create_app; import backend.sweeps.routes, "
                               "backend.pages.routes, backend.runs.validation, backend.sweeps.presets, "
                               "backend.studies.routes")
    assert "torch" not in loaded
    # optuna (a second to import) waits for a study's first decision: the API starts without it.
    assert "optuna" not in loaded


def test_a_study_decides_without_torch():
    """The API asks Optuna for a study's trials and draws its figures: optuna, never torch."""
    loaded = modules_loaded_by("import backend.studies.optimiser, optuna.visualization")
    assert "optuna" in loaded and "torch" not in loaded


def test_the_training_library_loads_nothing_of_the_web_side():
    loaded = modules_loaded_by("import training.train, training.spec, training.datasets")
    assert not {m for m in loaded if m.split(".")[0] in WEB_SIDE}


def test_the_api_offers_and_validates_a_method_plugin_without_torch(tmp_path):
    """With the example plugin installed, the API's registry loads its description, its options
    model and validates a run of it: only the worker imports its torch implementation."""
    from tests.support.plugins import EXAMPLE_PLUGIN, pip_install, python_path

    site = pip_install(tmp_path / "site", EXAMPLE_PLUGIN)
    loaded = modules_loaded_by(
        "from backend.main import create_app; import backend.catalog.routes as catalog\n"
        "from training.spec import METHODS, TrainSpec\n"
        "assert [m.name for m in map(catalog.method_out, METHODS.values())][-1] == 'moddrop'\n"
        "TrainSpec(dataset='digits', method='moddrop', missing_modality='bottom', missing_rate=0.9, "
        "method_options={'drop_rate': 0.2})",
        env={**os.environ, "PYTHONPATH": python_path(site)})
    assert "missmod_moddrop" in loaded and "torch" not in loaded and "missmod_moddrop.method" not in loaded
