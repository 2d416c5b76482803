"""What a newcomer reads and types, run as written: `make run`'s last lines, the README's curl,
CLI and Python examples, and the commands of docs/tutorial.md — against one live dashboard
started as `make run` starts it (`python -m backend.run_local`: the server and a real worker,
SQLite and the folder broker), from a folder of its own so that the paths it prints are the
ones a newcomer sees.

Commands name the address a newcomer's server has (localhost:8000); here it is this test's
port. The examples are taken from the documents, so a changed example is tested as changed."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, WORKER_TEST_ENV, Process, free_port, wait_for

DOCUMENTED_ADDRESS = re.compile(r"(?:http://)?localhost:8000")


def code_blocks(path: Path, section: str | None = None) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks of a Markdown file, in order; with `section`, only
    those under the level-2 heading of that title."""
    from markdown_it import MarkdownIt

    blocks, current = [], None
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            current = tokens[i + 1].content
        elif token.type == "fence" and (section is None or current == section):
            blocks.append((token.info.strip(), token.content))
    return blocks


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """`make run` in a fresh folder; stopped with Ctrl-C (SIGINT) at the end."""
    home = tmp_path_factory.mktemp("newcomer")
    (home / ".venv").symlink_to(sys.prefix)  # the tutorial's `source .venv/bin/activate`
    port = free_port()
    env = {**os.environ, **WORKER_TEST_ENV, "PORT": str(port), "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    for name in ("VAR_DIR", "DATABASE_URL", "BROKER_URL", "LOG_LEVEL", "API_TOKEN"):
        env.pop(name, None)
    process = Process([sys.executable, "-m", "backend.run_local"], env, home / "make-run.log", cwd=home)
    process.wait_for_log("missmod is ready at", timeout=180)
    process.url = f"http://127.0.0.1:{port}"
    process.port = port
    process.home = home
    process.env = {**env, "MISSMOD_URL": process.url}
    yield process
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGINT)
        try:
            process.popen.wait(60)
        except subprocess.TimeoutExpired:
            process.stop()


def run_block(dashboard, language: str, code: str) -> str:
    code = DOCUMENTED_ADDRESS.sub(lambda m: dashboard.url if m.group().startswith("http") else
                                  f"127.0.0.1:{dashboard.port}", code)
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-e", "-o", "pipefail", "-c", code]
    completed = subprocess.run(command, cwd=dashboard.home, env=dashboard.env, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, f"{language} block failed:\n{code}\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def test_make_run_ends_with_where_to_go_where_the_data_is_and_what_trains(dashboard):
    log = dashboard.log()
    lines = log.splitlines()
    ready = next(i for i, line in enumerate(lines) if line.startswith("missmod is ready at"))
    assert [line for line in lines[:ready] if line.strip()] == (  # before it, at most one line of each
        ["missmod: starting the server and a worker…"]
        + (["missmod: running as root. Fine on a machine of your own; on a shared host, run it as a normal user."]
           if os.geteuid() == 0 else [])), log
    last = lines[ready:ready + 6]
    assert last[0] == f"missmod is ready at http://localhost:{dashboard.port}/"
    assert last[1].split() == ["database:", "./var/missmod.db", "(SQLite)"]
    assert last[2].split() == ["run", "files:", "./var/artifacts"]
    assert last[3].startswith("  datasets:  ./var/data ")
    assert re.fullmatch(r"  workers:   1 slot ready on cpu .*", last[4])
    assert "Ctrl-C" in last[5]
    # Quiet by default: no Celery banner, no root warning of Celery's (said once, plainly, instead)
    assert "[config]" not in log and "[queues]" not in log and "superuser privileges" not in log
    assert log.count("running as root") == (1 if os.geteuid() == 0 else 0)


def test_the_readme_examples_and_the_tutorial_run_as_written(dashboard):
    readme = code_blocks(ROOT / "README.md", "From a script")
    assert [language for language, _ in readme] == ["sh", "sh", "python"]  # curl, the CLI, Python
    curl, cli, python = readme
    # curl first: its example names run 1, the first run of a fresh dashboard
    streamed = run_block(dashboard, *curl)
    assert "event: end" in streamed and '"state":"succeeded"' in streamed.replace(" ", "")
    assert "succeeded" in run_block(dashboard, *cli)
    printed = run_block(dashboard, *python)
    state, accuracy, *_ = printed.split()
    assert state == "succeeded" and 0 < float(accuracy) <= 1
    predicted = ast.literal_eval(printed.strip().splitlines()[-1])  # its model, from the top halves alone
    assert len(predicted) == 5 and set(predicted) <= {str(digit) for digit in range(10)}
    assert (dashboard.home / "model.zip").stat().st_size > 0  # the CLI's download of run 1's model

    # one terminal for the whole tutorial, as a reader has: what one step sets (an activated
    # virtualenv) holds for the next
    tutorial = [code for language, code in code_blocks(ROOT / "docs" / "tutorial.md") if language == "sh"]
    assert tutorial, "docs/tutorial.md has no commands"
    run_block(dashboard, "sh", "\n".join(tutorial))
    table = (dashboard.home / "fig5.csv").read_text()
    assert "mle" in table and "zero_padding" in table

    runs = httpx.get(f"{dashboard.url}/api/runs", params={"limit": 100}).json()["items"]
    assert runs and {run["state"] for run in runs} == {"succeeded"}


def test_make_run_stays_quiet_while_it_serves_and_stops_on_ctrl_c(dashboard):
    """Every request above went unlogged (no access log by default); Ctrl-C stops both processes."""
    assert "GET /api/" not in dashboard.log() and "POST /api/" not in dashboard.log()
    dashboard.popen.send_signal(signal.SIGINT)
    assert dashboard.popen.wait(60) == 0
    wait_for(lambda: "missmod: stopped" in dashboard.log(), 10, what="missmod: stopped")
