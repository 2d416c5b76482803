"""The documentation against the tree and against itself.

- The layout (docs/architecture.md, "Layout") names every top-level folder, and every
  subpackage, folder and module of training/, backend/ and worker/: a folder or module added
  without a line there fails here.
- Every link and anchor of README.md and docs/*.md leads somewhere: a file of the repository,
  and a heading of that file (as GitHub makes anchors of headings).
- The README stays a first screen: at most 300 lines.

The tutorial's and the README's commands are run in tests/app/test_tutorial.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

LAYERS = ("training", "backend", "worker")


LAYOUT = ROOT / "docs" / "architecture.md"
README_MAX_LINES = 300


def layout_section() -> str:
    text = LAYOUT.read_text(encoding="utf-8")
    match = re.search(r"^## (?:\d+\. )?Layout\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, "docs/architecture.md has no 'Layout' section"
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
    assert not missing, f"the layout (docs/architecture.md) does not name: {', '.join(missing)}"


@pytest.mark.parametrize("layer", LAYERS)
def test_every_part_of_a_layer_is_in_the_layout(layer):
    section = layout_section()
    folders, modules = parts_of(layer)
    assert modules, f"{layer}/ has no modules: the tree changed under this test"
    missing = [f"{layer}/{folder}/" for folder in folders if not named(section, f"{folder}/")]
    missing += [f"{layer}/{module}.py" for module in modules if not named(section, module)]
    assert not missing, f"the layout (docs/architecture.md) does not name: {', '.join(missing)}"


def test_tests_are_laid_out_by_feature_as_the_layout_says():
    section = layout_section()
    features = sorted({p.split("/")[1] for p in tracked_files() if p.startswith("tests/") and p.count("/") >= 2})
    missing = [f"tests/{feature}/" for feature in features if not named(section, f"{feature}/")]
    assert not missing, f"the layout (docs/architecture.md) does not name: {', '.join(missing)}"


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


# --- links and anchors -------------------------------------------------------------------


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (letters, digits, `_`
    and `-` kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def parsed(path: Path) -> tuple[list[str], list[str]]:
    """The anchors of a Markdown file's headings (a repeated heading gets -1, -2, … as on
    GitHub), and the targets of its links and images (code spans and blocks are not links)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    anchors, targets, seen = [], [], {}
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            text = "".join(child.content for child in tokens[i + 1].children
                           if child.type in ("text", "code_inline"))
            anchor = github_anchor(text)
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.append(anchor if count == 0 else f"{anchor}-{count}")
        for child in token.children or ():
            if child.type == "link_open":
                targets.append(child.attrs["href"])
            elif child.type == "image":
                targets.append(child.attrs["src"])
    return anchors, targets


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in parsed(path)[1]:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: — outside the repository
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or not linked.is_relative_to(root):
            broken.append(f"{target} (no such file)")
        elif anchor and (linked.suffix != ".md" or anchor not in parsed(linked)[0]):
            broken.append(f"{target} (no such heading)")
    return broken


def test_github_anchors_are_made_as_github_makes_them():
    assert github_anchor("Benchmarks: `make bench`") == "benchmarks-make-bench"
    assert github_anchor("6. What survives what") == "6-what-survives-what"
    assert github_anchor("RAVDESS and eNTERFACE'05 from the raw videos") == "ravdess-and-enterface05-from-the-raw-videos"
    assert github_anchor("Several runs per GPU (slots)") == "several-runs-per-gpu-slots"


def test_the_link_check_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    """The check itself can fail: a missing file and a missing heading are both reported."""
    (tmp_path / "a.md").write_text("# A\n\n## Real heading\n\n[ok](#real-heading) [ok](b.md#b) "
                                   "[bad](missing.md) [bad](b.md#nowhere) `[not a link](missing.md)`\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert broken_links(tmp_path / "a.md", root=tmp_path) == ["missing.md (no such file)",
                                                             "b.md#nowhere (no such heading)"]


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_leads_somewhere(path):
    assert broken_links(path) == []


def test_every_docs_file_is_in_the_index():
    """docs/README.md, the index, links every document of docs/."""
    indexed = {target.partition("#")[0] for target in parsed(ROOT / "docs" / "README.md")[1]}
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md" and p.name not in indexed]
    assert missing == [], f"docs/README.md does not link: {', '.join(missing)}"


def test_the_readme_fits_on_a_few_screens():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail into docs/"
