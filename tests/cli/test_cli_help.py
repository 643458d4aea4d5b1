"""Every command's --help reads cleanly: click's usage line, one line per command in the
list, no type placeholders for flags and no Python class names."""

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import spacy_segment_influence
from spacy_segment_influence.annotation_errors.methods import METHODS as FINDER_METHODS
from spacy_segment_influence.cli import CURVATURE_NAMES, app
from spacy_segment_influence.fidelity.fidelity_metrics import METHODS
from spacy_segment_influence.influence.curvature import CURVATURES

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _package_classes():
    modules = [spacy_segment_influence] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(spacy_segment_influence.__path__, "spacy_segment_influence.")
    ]
    return {
        name
        for module in modules
        for name, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__.startswith("spacy_segment_influence")
    }


INTERNAL_NAMES = _package_classes() | {"Path", "PosixPath"}


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=100)
    assert result.exception is None and result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_is_clean(command):
    text = _help(command)
    assert "{" not in text and "}" not in text, text
    assert "<bool>" not in text, text
    named = set(re.findall(r"\b\w+\b", text)) & INTERNAL_NAMES
    assert not named, f"{command} --help names {named}"
    usage = text.split("\n\n")[0]
    assert re.search(r"\b[A-Z_]+\b", usage.split(command, 1)[1]), usage  # MODEL_DIR-style arguments


def test_command_list_has_one_untruncated_line_each():
    text = _help()
    assert "<bool>" not in text
    listed = text.split("Commands:\n", 1)[1].strip().splitlines()
    assert [line.split()[0] for line in listed] == list(typer.main.get_command(app).commands)
    assert not [line for line in listed if line.endswith("...")], listed


def test_validate_help_explains_every_method():
    text = _help("validate")
    for name in METHODS:
        assert re.search(rf"^  {name} +\S", text, re.MULTILINE), name


def test_find_errors_help_explains_every_registered_method():
    text = _help("find-errors")
    for name, method in FINDER_METHODS.items():
        assert re.search(
            rf"^  {re.escape(name)} +{re.escape(method.ranks_high_when.split()[0])}", text, re.MULTILINE
        ), name


def test_help_imports_neither_spacy_nor_torch():
    """`--help` answers without importing spaCy and torch (17.4 s wall and 3.1 CPU-seconds
    before, 0.9 s and 0.2 after, on 2 cores at load 9.5): the package and the CLI import
    them when a command runs."""
    code = (
        "import sys\n"
        "from spacy_segment_influence.cli import app\n"
        "import spacy_segment_influence\n"
        "print(sorted(m for m in ('spacy', 'torch', 'thinc') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_lazy_exports_are_the_public_api():
    assert set(spacy_segment_influence.__all__) == set(spacy_segment_influence._EXPORTS) | {"__version__"}
    for name in spacy_segment_influence._EXPORTS:
        assert getattr(spacy_segment_influence, name).__name__ == name
    assert CURVATURE_NAMES == tuple(CURVATURES)


def _option(command: str, name: str) -> Any:
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return next(param for param in params if param.name == name)


def test_find_errors_options_say_what_they_do():
    """--dev is required by the default, --damping is not K-FAC's alone, and --ner finds the
    pipeline's crf_ner by itself as in `index`."""
    assert "required" in _option("find-errors", "dev").help
    assert "kfac or exact" in _option("find-errors", "damping").help
    assert _option("find-errors", "ner").default is None and _option("index", "ner").default is None
