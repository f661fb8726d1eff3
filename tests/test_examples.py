"""The example scripts (the sources of the figures in README and docs) import and have an entry point.

Running them takes data and minutes; importing them catches what a refactoring of the package or of a
sibling script leaves behind (a renamed function, a moved module).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


@pytest.fixture
def examples_on_path(monkeypatch):
    """The examples folder on ``sys.path`` (the scripts import their siblings); the scripts taken
    out of ``sys.modules`` afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for script in SCRIPTS:
        sys.modules.pop(script.stem, None)


def test_there_are_examples():
    assert len(SCRIPTS) >= 20


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_an_example_imports_and_a_script_has_main(script, examples_on_path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module  # as an import would (dataclasses look their module up)
    spec.loader.exec_module(module)
    if 'if __name__ == "__main__":' in script.read_text():
        assert callable(getattr(module, "main", None)), f"{script.name}: no main()"
        assert module.__doc__, f"{script.name}: no docstring (its usage)"


def test_a_study_s_bundled_model_is_register_s_own_choice(examples_on_path):
    import heldout_table

    assert heldout_table.model_paths("bundled") == (None, None)
    assert heldout_table.model_paths("bundled,seg.pt") == (None, Path("seg.pt"))
    assert heldout_table.model_paths("runs/a.pt") == (Path("runs/a.pt"), None)
