"""The deployment files are valid and say what they must (docker-compose v1 validates and
resolves them without a Docker engine), and the image installs what pyproject.toml lists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from backend.settings import Settings

from tests.support import ROOT

SECRETS = {"API_TOKEN": "t" * 32, "POSTGRES_PASSWORD": "p" * 32, "REDIS_PASSWORD": "r" * 32,
           "MINIO_ROOT_USER": "missmod", "MINIO_ROOT_PASSWORD": "m" * 32}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (apt-get install --no-install-recommends docker-compose)")
    environment = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("COMPOSE_")}
    environment.update(env if env is not None else SECRETS)
    return subprocess.run(["docker-compose", "-f", "docker-compose.yml", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Target → (source, mode) from docker-compose v1's resolved short syntax."""
    return {target: (source, mode) for source, target, mode in (v.rsplit(":", 2) for v in service["volumes"])}


def resolved(*profiles: str) -> dict:
    completed = compose(*[arg for p in profiles for arg in ("--profile", p)], "config")
    assert completed.returncode == 0, completed.stderr
    return yaml.safe_load(completed.stdout)


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_compose_file_is_valid(profile):
    completed = compose("--profile", profile, "config", "-q")
    assert completed.returncode == 0, completed.stderr


def test_compose_refuses_to_start_without_its_secrets():
    for missing in SECRETS:
        completed = compose("config", "-q", env={k: v for k, v in SECRETS.items() if k != missing})
        assert completed.returncode != 0 and missing in completed.stderr, missing


def test_compose_services_do_what_the_design_asks():
    services = resolved("gpu", "cpu")["services"]
    assert {"api", "worker", "worker-cpu", "redis", "postgres", "migrate"} <= set(services)
    # the GPU worker: one process per GPU, every GPU visible, each replica claims its own
    worker = services["worker"]
    assert worker["command"][-1] == "worker.gpu_worker" and worker["profiles"] == ["gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert worker["init"] is True and worker["stop_grace_period"]
    assert "deploy" not in services["worker-cpu"] and services["worker-cpu"]["profiles"] == ["cpu"]
    # Redis: never evicts a queued id, keeps them across a restart, says when it is up
    redis_command = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_command and "--appendonly yes" in redis_command
    assert "--requirepass" in redis_command and services["redis"]["healthcheck"]["test"]
    # PostgreSQL: a health check and a named volume
    assert services["postgres"]["healthcheck"]["test"]
    assert mounts(services["postgres"])["/var/lib/postgresql/data"][0] == "postgres-data"
    # migrations run once, before the API serves and the workers start
    assert services["migrate"]["command"][-1] == "backend.migrate" and services["migrate"]["restart"] == "no"
    for name in ("api", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        mounted = mounts(services[name])
        # the raw datasets and the weights are read-only; DATA_DIR takes the preprocessing caches
        assert mounted["/datasets/ravdess"][1] == "ro" and mounted["/datasets/enterface05"][1] == "ro"
        assert mounted["/cache/torch"][1] == "ro" and mounted["/data"][1] == "rw"
        assert mounted["/var/lib/missmod"][0] == "artifacts"
        assert services[name]["environment"]["RAVDESS_DIR"] == "/datasets/ravdess"
        assert services[name]["environment"]["BROKER_URL"].startswith("redis://:")
        # every host's processes share the artifact store: MinIO's bucket, with MinIO's keys
        environment = services[name]["environment"]
        assert environment["ARTIFACT_URL"] == "s3://missmod/artifacts"
        assert environment["S3_ENDPOINT_URL"] == "http://minio:9000"
        assert environment["AWS_SECRET_ACCESS_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"]
        assert services[name]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully", name
    # MinIO: a health check, a named volume, credentials from .env, a bucket made by a one-shot service
    assert services["minio"]["healthcheck"]["test"] and mounts(services["minio"])["/data"][0] == "minio-data"
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == SECRETS["MINIO_ROOT_PASSWORD"]
    assert services["minio"]["ports"][0].startswith("127.0.0.1:")
    bucket = services["minio-bucket"]
    assert bucket["restart"] == "no" and bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(bucket["entrypoint"])
    assert services["api"]["environment"]["API_TOKEN"] == SECRETS["API_TOKEN"]
    assert services["api"]["ports"][0].startswith("127.0.0.1:")  # published on the host only, by default


def test_env_example_names_every_setting():
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert {name.upper() for name in Settings.model_fields} <= named
    compose_variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert compose_variables <= named | {"COMPOSE_PROFILES"}, compose_variables - named


def dockerfile_stages() -> dict[str, list[str]]:
    """Dockerfile.gpu's instructions (continuation lines joined, comments left out), by stage name."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile.gpu").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[-1], [])
        current.append(line)
    return stages


def test_dockerfile_installs_what_pyproject_lists():
    stages = dockerfile_stages()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # the base image is pinned to a patch version whose Python satisfies requires-python
    base = re.match(r"FROM python:(\d+)\.(\d+)\.(\d+)-", stages["base"][0])
    required = re.match(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert base and required and tuple(map(int, base.groups()[:2])) >= tuple(map(int, required.groups()))
    assert stages["base"][1:] and any(line.startswith("COPY pyproject.toml README.md") for line in stages["base"])

    def installs(stage: str) -> list[str]:
        return [arg.strip() for line in stages[stage] for arg in re.findall(r"pip install ([^&]+)", line)]

    # dependencies come from pyproject.toml itself (nothing installed beside it), the test extra not:
    # the API's image without the worker extra, the worker's with it
    assert installs("api-dependencies") == ["."] and installs("worker-dependencies") == ["'.[worker]'"]
    assert stages["api"][0] == "FROM api-dependencies AS api" and installs("api") == ["--no-deps -e ."]
    assert stages["worker"][0] == "FROM worker-dependencies AS worker" and installs("worker") == ["--no-deps -e ."]
    assert "[test]" not in (ROOT / "Dockerfile.gpu").read_text()
    # the worker's image has the compilers torch.compile builds its kernels with
    assert re.search(r"apt-get install .*\bgcc\b.*\bg\+\+", " ".join(stages["worker-dependencies"]))
    # every package pyproject.toml ships is copied, and what the app reads at run time beside its code
    packages = [name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for stage in ("api-dependencies", "worker-dependencies"):
        stubbed = re.search(r"mkdir -p ([a-z ]+) &&", " ".join(stages[stage])).group(1).split()
        assert sorted(stubbed) == sorted(packages), stage
    for name in packages + ["frontend"]:
        assert f"COPY {name} {name}" in stages["code"], name
    assert "COPY alembic.ini ./" in stages["code"]
    assert "COPY --from=code /app /app" in stages["api"] and "COPY --from=code /app /app" in stages["worker"]
    for stage in ("api", "worker"):
        assert any(re.match(r"USER (?!root)", line) for line in stages[stage]), stage  # not root
    assert list(stages)[-1] == "worker"  # `docker build` without a target builds the worker, as before


def installed_requirements(requirements: list[str]) -> set[str]:
    """Every distribution that installing `requirements` brings, resolved from the metadata of the
    distributions installed here (the versions the tests run with), markers and extras included."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, set[str]] = {}
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in found and extras <= found[name]:
            continue
        found[name] = found.get(name, set()) | extras
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{name} is required but not installed here: the install set cannot be resolved")
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in {"", *found[name]}):
                pending.append(sub)
    return set(found)


TORCH_SIDE = {"torch", "torchvision", "triton", "av", "librosa", "nvidia-ml-py", "numba"}


def test_the_api_image_installs_no_torch():
    """What `pip install .` (Dockerfile.gpu, target api) brings: no torch, no CUDA library, nothing
    of the training side; what the worker's `.[worker]` brings: torch and its CUDA libraries."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    api = installed_requirements(project["dependencies"])
    assert {"fastapi", "sqlalchemy", "alembic", "celery", "numpy"} <= api
    assert not api & TORCH_SIDE and not {name for name in api if name.startswith("nvidia-")}, api & TORCH_SIDE
    worker = installed_requirements(project["dependencies"] + project["optional-dependencies"]["worker"])
    assert {"torch", "torchvision", "av", "librosa", "nvidia-ml-py"} <= worker
    assert any(name.startswith("nvidia-cudnn") for name in worker)  # the wheel's own CUDA libraries


# The API process, its pages and routes, with every package of the worker extra (and what only they
# bring) unimportable: what the API image lacks.
API_WITHOUT_THE_WORKER_EXTRA = """
import importlib.abc, sys

BLOCKED = {"torch", "torchvision", "triton", "av", "librosa", "numba", "pynvml", "psutil"}


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the API's image")


sys.meta_path.insert(0, Absent())
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.migrate import upgrade
from backend.settings import Settings

settings = Settings(var_dir=sys.argv[1], database_url="", broker_url="", trusted_hosts=["testserver"])
settings.make_dirs()
upgrade(settings.database_url)
spec = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}
with TestClient(create_app(settings)) as client:
    run = client.post("/api/runs", json=spec)
    assert run.status_code == 201, run.text
    sweep = client.post("/api/sweeps", json={**spec, "name": "s", "seed": [0, 1]})
    assert sweep.status_code == 201, sweep.text
    for path in ("/api/health", "/api/datasets", "/api/choices", "/api/methods", "/api/runs", "/api/sweeps",
                 f"/api/runs/{run.json()['id']}", f"/api/runs/{run.json()['id']}/metrics", "/", "/runs/new",
                 f"/runs/{run.json()['id']}", "/sweeps", "/sweeps/new", f"/sweeps/{sweep.json()['id']}", "/compare",
                 "/workers", f"/api/sweeps/{sweep.json()['id']}/table", "/studies", "/api/studies"):
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
assert not BLOCKED & {name.split(".")[0] for name in sys.modules}
print("served")
"""


def test_the_api_serves_without_the_worker_extra(tmp_path):
    completed = subprocess.run([sys.executable, "-c", API_WITHOUT_THE_WORKER_EXTRA, str(tmp_path / "var")], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0 and completed.stdout.strip().endswith("served"), completed.stderr[-3000:]


def test_every_third_party_image_is_pinned_to_a_version():
    services = resolved("gpu", "cpu")["services"]
    ours = {"api": "api", "migrate": "api", "worker": "worker", "worker-cpu": "worker"}
    for name, service in services.items():
        if name in ours:
            assert service["build"]["target"] == ours[name], name
            assert service["build"]["dockerfile"] == "Dockerfile.gpu", name
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), (name, image)


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git", ".env"} <= set(ignored)


def test_the_api_and_the_worker_modules_do_not_load_torch():
    """The API starts without torch; the worker loads it only once it starts (below)."""
    probe = ("import sys, backend.main, worker.celery_app, worker.tasks, worker.gpu_worker; "
             "sys.exit('torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "VAR_DIR": str(ROOT / "var")})
    assert completed.returncode == 0, completed.stderr or "torch was imported"


def test_the_worker_preloads_the_training_library_without_touching_cuda_or_starting_threads():
    """What the worker's main process does when it starts (Celery's worker_init), so that each
    run's process, forked from it, starts at once; CUDA must be touched only inside a run."""
    probe = ("import sys, threading, worker.celery_app; from celery import signals; "
             "signals.worker_init.send(sender=None); import torch; "
             "assert 'worker.executor' in sys.modules and 'torch._dynamo' in sys.modules; "
             "assert not torch.cuda.is_initialized(); assert threading.active_count() == 1, threading.enumerate()")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "VAR_DIR": str(ROOT / "var")})
    assert completed.returncode == 0, completed.stderr


def test_each_worker_of_a_host_claims_a_gpu_of_its_own(tmp_path):
    """What lets `--scale worker=N` give N workers N different GPUs (no GPU needed to test it)."""
    from worker.gpu_worker import claim_gpu

    gpus = ["GPU-aaaa", "GPU-bbbb"]
    first, second = claim_gpu(gpus, tmp_path), claim_gpu(gpus, tmp_path)
    assert (first[0], second[0]) == ("GPU-aaaa", "GPU-bbbb")
    assert claim_gpu(gpus, tmp_path) is None  # a third replica waits
    os.close(first[1])  # its worker died: the kernel drops the lock
    again = claim_gpu(gpus, tmp_path)
    assert again is not None and again[0] == "GPU-aaaa"
    # a lock held by another process, killed with SIGKILL, is free again
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from worker.gpu_worker import claim_gpu; "
                               f"from pathlib import Path; print(claim_gpu(['GPU-cccc'], Path({str(tmp_path)!r}))[0], "
                               "flush=True); time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "GPU-cccc"
    assert claim_gpu(["GPU-cccc"], tmp_path) is None
    holder.kill()
    holder.wait()
    assert claim_gpu(["GPU-cccc"], tmp_path)[0] == "GPU-cccc"
