"""The deployment files are valid (docker-compose v1 validates without a Docker engine)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import ROOT


def test_compose_file_is_valid():
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (apt-get install --no-install-recommends docker-compose)")
    completed = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr


def test_dockerfile_installs_the_project_and_its_code():
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    for needed in ["COPY pyproject.toml", "COPY backend backend", "COPY worker worker", "COPY frontend frontend",
                   "COPY alembic.ini", "pip install ."]:
        assert needed in dockerfile, needed
