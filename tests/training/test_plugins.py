"""The method registry (training/method_registry.py) with real installed packages: the example
plugin and broken ones, installed with pip into a folder of their own and found through
importlib.metadata. A broken plugin is set aside with its reason; the built-in methods and the
other plugins stay."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.plugins import EXAMPLE_PLUGIN, pip_install, python_path, write_package
from training import method_registry
from training.spec import METHODS, TrainSpec

BUILTIN = ["mle", "lower_bound", "zero_padding", "hgr", "ae1", "ae2"]

BROKEN = {
    "missing_dependency": ("broken_missing/__init__.py", "import a_package_nobody_installed\n"),
    "no_default": ("broken_no_default/__init__.py", """\
        from pydantic import BaseModel
        from training.plugins import MethodDescription

        class Options(BaseModel):
            strength: float  # no default: a form could not show it, a sweep could not leave it out

        description = MethodDescription(name="no_default", title="t", description="d",
                                         implementation="broken_no_default:X", options=Options)
        """),
    "dict_option": ("broken_dict_option/__init__.py", """\
        from pydantic import BaseModel
        from training.plugins import MethodDescription

        class Options(BaseModel):
            table: dict = {}

        description = MethodDescription(name="dict_option", title="t", description="d",
                                        implementation="broken_dict_option:X", options=Options)
        """),
    "not_a_description": ("broken_not_a_description/__init__.py", "description = {'name': 'not_a_description'}\n"),
}
# Installed apart: whether its check can fire depends on torch not being loaded yet (a fresh process).
HEAVY = {"broken_heavy/__init__.py": """\
    import torch  # the API process must never load it
    from training.plugins import MethodDescription

    description = MethodDescription(name="heavy", title="t", description="d", implementation="broken_heavy:X")
    """}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    broken = write_package(root, "broken-plugins", dict(BROKEN.values()), {
        name: f"{path.split('/')[0]}:description" for name, (path, _) in BROKEN.items()})
    taken = write_package(root, "takes-mle", {"takes_mle/__init__.py": """\
        from training.plugins import MethodDescription
        description = MethodDescription(name="mle", title="Not the paper's", description="d",
                                        implementation="takes_mle:X")
        """}, {"mle": "takes_mle:description"})
    return pip_install(root / "site", EXAMPLE_PLUGIN, broken, taken)


@pytest.fixture(scope="module")
def heavy_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("heavy")
    return pip_install(root / "site", EXAMPLE_PLUGIN, write_package(root, "heavy-plugin", HEAVY,
                                                                    {"heavy": "broken_heavy:description"}))


@pytest.fixture
def installed(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    method_registry.reload()
    yield method_registry.registry()
    monkeypatch.undo()
    method_registry.reload()


def test_the_example_plugin_is_registered_beside_the_builtin_methods(installed):
    assert list(METHODS) == [*BUILTIN, "moddrop"]
    moddrop = METHODS["moddrop"]
    assert (moddrop.distribution, moddrop.version) == ("missmod-moddrop", "0.1.0")
    assert moddrop.fusions == ("add", "concat")
    assert set(moddrop.options_schema()["properties"]) == {"drop_rate", "rescale"}
    assert METHODS["mle"].distribution == "missmod" and METHODS["mle"].implementation == \
        "training.methods:MaximumLikelihood"


def test_a_runs_options_are_validated_against_its_methods_model(installed):
    base = dict(dataset="digits", missing_modality="bottom", missing_rate=0.8)
    spec = TrainSpec(**base, method="moddrop", method_options={"drop_rate": 0.3})
    assert spec.method_options == {"drop_rate": 0.3, "rescale": False}  # defaults filled in, stored
    with pytest.raises(ValueError, match="option 'drop_rate' of method 'moddrop'"):
        TrainSpec(**base, method="moddrop", method_options={"drop_rate": 1.5})
    with pytest.raises(ValueError, match="method 'moddrop' has no option 'dropout'"):
        TrainSpec(**base, method="moddrop", method_options={"dropout": 0.3})
    with pytest.raises(ValueError, match="fusion 'outer' is not available for method 'moddrop'"):
        TrainSpec(**base, method="moddrop", fusion="outer")
    with pytest.raises(ValueError, match="method 'mle' has no option"):
        TrainSpec(**base, method="mle", method_options={"drop_rate": 0.3})


def test_broken_plugins_are_set_aside_with_their_reason(installed):
    broken = installed.broken
    assert "No module named 'a_package_nobody_installed'" in broken["missing_dependency"].reason
    assert "every option needs a default" in broken["no_default"].reason
    assert "option 'table' has type object" in broken["dict_option"].reason
    assert "not a training.plugins.MethodDescription" in broken["not_a_description"].reason
    assert "the name is taken by missmod's method" in broken["mle (takes-mle)"].reason
    assert all(b.distribution in ("broken-plugins", "takes-mle") for b in broken.values())
    # The others are unaffected, and a run of a broken one is refused with the reason.
    assert METHODS["mle"].title == "Maximum likelihood (ours)" and "moddrop" in METHODS
    with pytest.raises(ValueError, match="is installed but cannot be used: could not be loaded.*a_package_nobody"):
        TrainSpec(dataset="digits", missing_modality="bottom", missing_rate=0.8, method="missing_dependency")


def test_a_description_that_imports_torch_is_refused_where_torch_was_not_loaded(heavy_site):
    """What the API sees: its process has no torch, and loading a plugin's description must not
    bring it in (here in a fresh process, as the API starts)."""
    code = ("import sys, json; from training import method_registry as r; reg = r.registry(); "
            "print(json.dumps({'heavy': reg.broken['heavy'].reason, 'methods': list(reg.methods)}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": python_path(heavy_site), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "its description imports torch" in seen["heavy"]
    assert seen["methods"] == [*BUILTIN, "moddrop"]


def test_a_builtin_runs_checkpoint_fingerprint_is_as_before_method_options():
    """A run interrupted before the upgrade resumes after it: `method_options` at its default ({})
    is left out of the fingerprint, as every option added later is."""
    from training.checkpoint import spec_fingerprint

    dump = TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.9).model_dump()
    assert dump["method_options"] == {}
    assert spec_fingerprint(dump) == spec_fingerprint({k: v for k, v in dump.items() if k != "method_options"})
