"""The layering rules of the design, checked: the API never imports torch at import time (it
must start fast and without a GPU), and the training library never imports the backend."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_api_and_its_pages_load_without_torch():
    loaded = modules_loaded_by("from backend.main import create_app; import backend.sweeps.routes, "
                               "backend.pages.routes, backend.runs.validation, backend.sweeps.presets")
    assert "torch" not in loaded


def test_the_training_library_knows_nothing_of_the_backend():
    loaded = modules_loaded_by("import worker.training.train, worker.training.spec, worker.training.datasets")
    assert not {m for m in loaded if m.split(".")[0] in ("backend", "fastapi", "sqlalchemy", "celery")}
