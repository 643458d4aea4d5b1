"""The `segment-influence` command line (also `python -m spacy_segment_influence`): each
command parses its arguments and calls the library (the CLI wing is the top layer)."""

# importing the command modules registers their commands, in the order --help lists them
from . import convert, index, validate, find_errors, review  # noqa: F401, I001
from ._util import CURVATURE_NAMES, app, main

__all__ = ["CURVATURE_NAMES", "app", "main"]
