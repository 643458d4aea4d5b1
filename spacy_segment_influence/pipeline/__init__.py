"""The `segment_influence` pipeline component."""

# registers the factory when the pipeline wing is imported (spaCy also finds it by its entry point)
from . import factory  # noqa: E402, F401
