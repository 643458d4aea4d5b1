"""Load a pipeline written by `segment-influence index` as one snapshot, even while
another `index` run replaces it.

`index` swaps its output directory in at once, but `spacy.load` reads the directory's files
one after another, so a load that overlaps a swap could read some files of the old
pipeline and some of the new one. Each write carries a new snapshot id in its marker
(`atomic.MARKER`); reading the same id before and after the load proves that no swap
happened in between (ids are never reused, and a swapped-out directory is deleted, never
swapped back). Otherwise the load is retried: retrying was chosen over reading through a
version pointer (a symlink to versioned directories) because it keeps OUT a plain spaCy
pipeline directory that `spacy.load`, `spacy package` and copies handle as before, and
needs no rule for when an old version may be deleted under a slow reader.
"""

import time
from pathlib import Path
from typing import Any, Union

import spacy
from spacy.language import Language

from ..exceptions import OutputInUseError
from .atomic import snapshot_id

ATTEMPTS = 5


def load_snapshot(path: Union[str, Path], attempts: int = ATTEMPTS, **kwargs: Any) -> Language:
    """`spacy.load(path, **kwargs)`, retried until no `index` run replaced `path` during
    the load; OutputInUseError after `attempts` loads that each overlapped a replacement.
    An error of a load that no replacement overlapped is raised as it is. A pipeline
    without a marker (not written by `index`) is loaded once."""
    for attempt in range(attempts):
        before = snapshot_id(path)
        try:
            nlp = spacy.load(path, **kwargs)
        except Exception:
            if before is not None and snapshot_id(path) != before:
                time.sleep(0.01 * (attempt + 1))
                continue  # it read files of two writes: try again
            raise
        if before is None or snapshot_id(path) == before:
            return nlp
    raise OutputInUseError(
        f"{path} was replaced by another `segment-influence index` run during each of {attempts} loads; "
        "load it again once that run has finished"
    )
