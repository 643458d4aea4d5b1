"""Errors and warnings for users of the package: one hierarchy, so that a caller (and the
CLI) can tell a mistake in the input from a bug.

Every error a user can cause derives from `SegmentInfluenceError`; the CLI reports those
as one line and shows a traceback for anything else. Subclasses that used to be plain
`ValueError`s still are, so existing `except ValueError` code keeps working. Internal
invariants (shapes that cannot disagree unless the package is wrong) stay plain
`ValueError`s or asserts and are not part of this hierarchy.
"""


class SegmentInfluenceError(Exception):
    """Base class of every error caused by the user's input, settings or data."""


class ConfigError(SegmentInfluenceError, ValueError):
    """A setting or argument has a value the package does not accept (an unknown
    curvature, k < 1, two options that exclude each other...)."""


class PipelineError(SegmentInfluenceError, ValueError):
    """The pipeline is not one the package supports: the named component is missing or
    is not a `crf_ner`, a label is unknown to it, or it was never initialized."""


class CorpusFormatError(SegmentInfluenceError, ValueError):
    """A corpus or ranking file is malformed: the message starts with the file (and the
    line, for JSONL)."""


class CorpusNotFoundError(SegmentInfluenceError, FileNotFoundError):
    """A corpus file the user named does not exist."""


class DataError(SegmentInfluenceError, ValueError):
    """The data cannot support the computation asked for: an empty corpus, no entities
    to index, overlapping entity spans, a fold that covers nothing..."""


class IndexMissingError(SegmentInfluenceError, ValueError):
    """A `segment_influence` component was asked for influences before it indexed a
    training corpus."""


class IndexFormatError(SegmentInfluenceError, ValueError):
    """A stored index was written by another version of the package, or lacks what an
    option needs (e.g. `refine` needs an exact-curvature index with window labels)."""


class IndexOutOfDateError(SegmentInfluenceError, RuntimeError):
    """The pipeline's weights differ from those its training corpus was indexed with
    (trained further, edited, or loaded from another pipeline's files), so the stored
    gradients no longer describe the model."""


class IndexCorruptError(SegmentInfluenceError, ValueError):
    """A stored index file is missing, truncated or does not match the checksum written
    with it: the message names the file."""


class OutputInUseError(SegmentInfluenceError, RuntimeError):
    """Another process is writing the same output directory."""


class OutputWriteError(SegmentInfluenceError, OSError):
    """An output could not be written (full disk, no permission); the previous output, if
    any, is left as it was."""


class MissingExtraError(SegmentInfluenceError, ImportError):
    """An option needs a package from one of the optional extras (e.g. `--ray` needs
    `pip install spacy-segment-influence[ray]`)."""


class SegmentInfluenceWarning(UserWarning):
    """Base class of the package's warnings."""


class MisalignedEntityWarning(SegmentInfluenceWarning):
    """A gold entity does not align with the predicted tokenization, so its tags are
    treated as unknown (what spaCy reports as W030 for its own components)."""


class UnknownLabelWarning(SegmentInfluenceWarning):
    """Gold entities whose label the model does not know are left out of an index or a
    ranking (their tokens count as outside any entity)."""


class BIORepairWarning(SegmentInfluenceWarning):
    """Some I- tags of a BIO corpus did not continue an entity and were read as entity
    starts."""
