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


def test_dockerfile_installs_what_pyproject_lists():
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    instructions = [line.strip() for line in re.sub(r"\\\n", " ", dockerfile).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    # the base image's Python satisfies requires-python
    base = re.match(r"FROM python:(\d+)\.(\d+)", instructions[0])
    required = re.match(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert base and required and tuple(map(int, base.groups())) >= tuple(map(int, required.groups()))
    # dependencies come from pyproject.toml itself (no package installed beside it), the test extra not
    pip_installs = [arg for line in instructions for arg in re.findall(r"pip install ([^&]+)", line)]
    assert [arg.strip() for arg in pip_installs] == [".", "--no-deps -e ."]
    assert "[test]" not in dockerfile
    copy_pyproject = next(i for i, line in enumerate(instructions) if line.startswith("COPY pyproject.toml"))
    first_install = next(i for i, line in enumerate(instructions) if "pip install ." in line)
    assert copy_pyproject < first_install and "README.md" in instructions[copy_pyproject]  # readme = README.md
    # every package pyproject.toml ships is copied, and what the app reads at run time beside its code
    packages = [name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    stubbed = re.search(r"mkdir -p ([a-z ]+) &&", dockerfile).group(1).split()
    assert sorted(stubbed) == sorted(packages)
    for name in packages + ["frontend"]:
        assert f"COPY {name} {name}" in instructions, name
    assert "COPY alembic.ini ./" in instructions
    assert re.search(r"^USER (?!root)", dockerfile, flags=re.MULTILINE)  # not root


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
