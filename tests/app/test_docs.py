"""README's layout section against the tree: every top-level folder, and every subpackage,
folder and module of training/, backend/ and worker/, is named there. A folder or module added
without a line in the layout fails here."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import ROOT

LAYERS = ("training", "backend", "worker")


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, flags=re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def tracked_files() -> list[str]:
    """The files of the tree as git knows it (so caches, var/ and the venv do not count)."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
    return [line for line in listing.stdout.splitlines() if (ROOT / line).exists()]


def top_level_folders() -> list[str]:
    return sorted({path.split("/")[0] for path in tracked_files() if "/" in path and not path.startswith(".")})


def parts_of(layer: str) -> tuple[list[str], list[str]]:
    """The folders (subpackages, migrations) and modules directly inside a layer."""
    folders, modules = set(), set()
    for path in tracked_files():
        parts = path.split("/")
        if parts[0] != layer or len(parts) < 2:
            continue
        if len(parts) > 2:
            folders.add(parts[1])
        elif parts[1].endswith(".py") and parts[1] != "__init__.py":
            modules.add(parts[1][: -len(".py")])
    return sorted(folders), sorted(modules)


def named(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w/]){re.escape(name)}(?![\w])", text) is not None


def test_every_top_level_folder_is_in_the_layout():
    section = layout_section()
    missing = [f"{folder}/" for folder in top_level_folders() if not named(section, f"{folder}/")]
    assert not missing, f"README's layout does not name: {', '.join(missing)}"


@pytest.mark.parametrize("layer", LAYERS)
def test_every_part_of_a_layer_is_in_the_layout(layer):
    section = layout_section()
    folders, modules = parts_of(layer)
    assert modules, f"{layer}/ has no modules: the tree changed under this test"
    missing = [f"{layer}/{folder}/" for folder in folders if not named(section, f"{folder}/")]
    missing += [f"{layer}/{module}.py" for module in modules if not named(section, module)]
    assert not missing, f"README's layout does not name: {', '.join(missing)}"


def test_tests_are_laid_out_by_feature_as_the_readme_says():
    section = layout_section()
    features = sorted({p.split("/")[1] for p in tracked_files() if p.startswith("tests/") and p.count("/") >= 2})
    missing = [f"tests/{feature}/" for feature in features if not named(section, f"{feature}/")]
    assert not missing, f"README's layout does not name: {', '.join(missing)}"


def test_names_match_as_whole_words():
    """The matching is by whole names: `runs/` is not found inside `sweeps/`, nor `train` in `training`."""
    assert named("  runs/   runs: models", "runs/") and not named("  reruns/ x", "runs/")
    assert not named("training/ the library", "train") and named("train.py the loop", "train")


def test_the_repository_cites_only_documents_it_contains():
    """Code and docs point at docs/architecture.md and the other files of docs/, never at a
    design note or folder outside the repository that users do not have."""
    outside, missing = [], []
    for path in tracked_files():
        if not path.endswith((".py", ".md", ".yml", ".js", ".html", ".toml")) and not path.startswith("Dockerfile"):
            continue
        text = (ROOT / path).read_text(encoding="utf-8", errors="replace")
        if path != "tests/app/test_docs.py" and re.search(r"DESIGN\.md|\.\./shared", text):
            outside.append(path)
        missing += [f"{path} → {cited}" for cited in re.findall(r"\bdocs/[\w./-]+\.md\b", text)
                    if not (ROOT / cited).exists()]
    assert outside == [] and missing == []
