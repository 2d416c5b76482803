"""Method plugins for the tests: small packages written into a temporary folder and installed
with pip (`--no-deps --target`) into a folder of their own, never into the shared environment.
A process started with that folder on its PYTHONPATH finds them through importlib.metadata,
exactly as an installed package (docs/methods.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from . import ROOT

EXAMPLE_PLUGIN = ROOT / "examples" / "moddrop"


def write_package(root: Path, distribution: str, modules: dict[str, str], entry_points: dict[str, str],
                  version: str = "0.1.0") -> Path:
    """A source project: `modules` maps a module path (`pkg/__init__.py`) to its code."""
    project = root / distribution
    (project / "src").mkdir(parents=True, exist_ok=True)
    lines = "\n".join(f'{name} = "{target}"' for name, target in entry_points.items())
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{distribution}"
        version = "{version}"

        [project.entry-points."missmod.methods"]
        """) + lines + '\n\n[tool.setuptools.packages.find]\nwhere = ["src"]\n')
    for path, code in modules.items():
        target = project / "src" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(code))
    return project


def pip_install(target: Path, *projects: Path) -> Path:
    """`pip install --no-deps --target target projects…` (no build isolation: offline, and the
    environment's setuptools is the one the projects ask for)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), *map(str, projects)], check=True, cwd=target.parent)
    return target


def python_path(*sites: Path) -> str:
    """PYTHONPATH for a child process: the repository, then the plugin folders."""
    return ":".join([str(ROOT), *map(str, sites)])
