"""Every command's --help reads cleanly: click's usage line, one line per command in the
list, no type placeholders for flags and no Python class names."""

import importlib
import inspect
import pkgutil
import re

import pytest
import typer
from typer.testing import CliRunner

import spacy_segment_influence
from spacy_segment_influence.cli import app
from spacy_segment_influence.fidelity_metrics import METHODS

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
