"""The public API: what `__all__` promises exists and is documented, and every
user-facing error shares one base class."""

import inspect
import pydoc

import spacy_segment_influence
from spacy_segment_influence import exceptions


def test_public_names_exist_and_are_documented():
    for name in spacy_segment_influence.__all__:
        obj = getattr(spacy_segment_influence, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name
    text = pydoc.render_doc(spacy_segment_influence, renderer=pydoc.plaintext)
    for name in ("SegmentInfluence", "CRFEntityRecognizer", "ErrorFinder", "SegmentInfluenceError", "validate"):
        assert name in text


def test_every_error_and_warning_has_one_base():
    classes = [
        obj for _, obj in inspect.getmembers(exceptions, inspect.isclass) if obj.__module__ == exceptions.__name__
    ]
    errors = [c for c in classes if issubclass(c, Exception) and not issubclass(c, Warning)]
    warnings = [c for c in classes if issubclass(c, Warning)]
    assert len(errors) + len(warnings) == len(classes) and errors and warnings
    assert all(issubclass(c, exceptions.SegmentInfluenceError) for c in errors)
    assert all(issubclass(c, exceptions.SegmentInfluenceWarning) for c in warnings)
    assert {c.__name__ for c in classes} <= set(spacy_segment_influence.__all__)
