"""The `segment-influence` app and what its commands share: click-style usage lines, the
one-line report of a user's mistake, the check that an output is none of the inputs.

Commands import spaCy, torch and the modules they need when they run, so that `--help`
answers at once (tests/cli/test_cli_help.py holds the help texts to the modules' names)."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer
from typer.core import TyperCommand

from ..exceptions import ConfigError, SegmentInfluenceError

# curvature.CURVATURES, named here without importing torch
CURVATURE_NAMES = ("identity", "kfac", "exact")


class _Command(TyperCommand):
    """A command whose arguments read as in click's usage lines (MODEL_DIR, [TEXT]) rather
    than typer's {model_dir}."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar is None and param.name:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: Any) -> List[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(str(param.metavar) if param.required else f"[{param.metavar}]")
        return pieces


class _App(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Callable:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


# rich_markup_mode=None: click's plain help, whose command list shows each command's first
# sentence on one line and whose flags carry no <bool>
app = _App(
    rich_markup_mode=None,
    name="segment-influence",
    help=(
        "Segment influence for spaCy NER: explain predictions by the training spans that "
        "caused them, and rank training annotations by how likely they are wrong."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Segment influence for spaCy NER pipelines (Jain et al., Findings of EMNLP 2022)."""


def check_distinct(out: Optional[Path], *inputs: Optional[Path]) -> None:
    """ConfigError when the output is one of the inputs: it would be overwritten by what is
    computed from it."""
    for given in inputs:
        if out is not None and given is not None and out.exists() and given.exists() and out.samefile(given):
            raise ConfigError(f"{out} is both an input and the output: write the output to another path")


@contextmanager
def user_errors() -> Iterator[None]:
    """Report mistakes in the user's input (`SegmentInfluenceError`) as one red line and
    exit 1. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except SegmentInfluenceError as err:
        typer.secho(f"Error: {err}", err=True, fg="red")
        raise typer.Exit(1) from None


def main() -> None:
    # the encoder's tokenizer would warn in every process forked after it ran threaded
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
