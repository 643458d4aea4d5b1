"""Segment influence for spaCy NER pipelines (Jain et al., "Influence Functions for
Sequence Tagging Models", Findings of EMNLP 2022).

Components (registered with spaCy by entry points, so `nlp.add_pipe` finds them without
importing this package):

- `crf_ner` (`CRFEntityRecognizer`): NER by a linear-chain CRF over a tok2vec or
  transformer, trained with `spacy train`.
- `segment_influence` (`SegmentInfluence`): indexes the training corpus (`SegmentIndex`)
  and explains each predicted entity by the training spans that support and oppose it.

Indexing a pipeline: `index_pipeline` (what `segment-influence index` runs); large indexes
split into shards (`write_sharded`, `ShardedIndex`, on Ray with `ray_cluster`).
Annotation errors: `ErrorFinder` and `CrossFitFinder` score candidate regions of a
training corpus (`cross_fitted_finder`: the default recipe; `build_finder` and `find_errors`
from one `FinderArguments`: what `segment-influence find-errors` runs), `rank` writes them as
review records, `evaluate_ranking` scores a ranking against corrected labels;
`read_docbin` reads a .spacy corpus with clear errors. `validate` measures how well predicted influence tracks
retraining. Entity probabilities: `calibrate` fits crf_ner's temperature on held-out
docs. Pipelines with spaCy's built-in `ner` are explained through a CRF surrogate
(`fit_surrogate`, `agreement`; `segment_influence` fits one by itself). `load_snapshot`
loads a pipeline written by `segment-influence index` while another run may replace it.
Errors a user can cause derive from `SegmentInfluenceError`.
"""

from typing import TYPE_CHECKING, Dict

from .lazy_exports import lazy_exports

if TYPE_CHECKING:
    from .annotation_errors.build import FinderArguments, build_finder, find_errors
    from .annotation_errors.candidates import Candidate
    from .annotation_errors.crossfit import CrossFitFinder, held_out_indices, split_folds, write_folds
    from .annotation_errors.finder import ErrorFinder
    from .annotation_errors.fold_training import cross_fitted_finder
    from .annotation_errors.metrics import evaluate_ranking
    from .annotation_errors.records import rank
    from .corpus import read_docbin
    from .exceptions import (
        BIORepairWarning,
        ConfigError,
        CorpusFormatError,
        CorpusNotFoundError,
        DataError,
        IndexCorruptError,
        IndexFormatError,
        IndexMissingError,
        IndexOutOfDateError,
        MisalignedEntityWarning,
        MissingExtraError,
        OutputInUseError,
        OutputWriteError,
        PipelineError,
        SegmentInfluenceError,
        SegmentInfluenceWarning,
        UnknownLabelWarning,
    )
    from .fidelity.validate import validate
    from .influence.index import SegmentIndex
    from .influence.surrogate import agreement, fit_surrogate
    from .ner.calibration import calibrate
    from .ner.tagger import CRFEntityRecognizer
    from .pipeline.component import SegmentInfluence
    from .pipeline.indexing import index_pipeline
    from .scale.distributed import ray_cluster
    from .scale.sharded_index import ShardedIndex, write_sharded
    from .storage.snapshot import load_snapshot

# Each public name and its module, imported on first use: importing the package (and so
# `segment-influence --help`) does not import spaCy and torch. spaCy finds the components,
# architectures and callbacks through the entry points in setup.cfg.
_EXPORTS: Dict[str, str] = {
    **dict.fromkeys(
        ["Candidate", "CrossFitFinder", "ErrorFinder", "evaluate_ranking", "held_out_indices", "rank"]
        + ["split_folds", "write_folds", "cross_fitted_finder"],
        "annotation_errors",
    ),
    **dict.fromkeys(["FinderArguments", "build_finder", "find_errors"], "annotation_errors.build"),
    "read_docbin": "corpus",
    "index_pipeline": "pipeline.indexing",
    "ray_cluster": "scale.distributed",
    **dict.fromkeys(["ShardedIndex", "write_sharded"], "scale.sharded_index"),
    "calibrate": "ner.calibration",
    "SegmentInfluence": "pipeline.component",
    **dict.fromkeys(
        ["BIORepairWarning", "ConfigError", "CorpusFormatError", "CorpusNotFoundError", "DataError"]
        + ["IndexCorruptError", "IndexFormatError", "IndexMissingError", "IndexOutOfDateError"]
        + ["MisalignedEntityWarning", "MissingExtraError", "OutputInUseError", "OutputWriteError", "PipelineError"]
        + ["SegmentInfluenceError", "SegmentInfluenceWarning", "UnknownLabelWarning"],
        "exceptions",
    ),
    "SegmentIndex": "influence.index",
    "load_snapshot": "storage.snapshot",
    "agreement": "influence.surrogate",
    "fit_surrogate": "influence.surrogate",
    "CRFEntityRecognizer": "ner.tagger",
    "validate": "fidelity.validate",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__version__ = "0.1.0"

__all__ = [
    "BIORepairWarning",
    "CRFEntityRecognizer",
    "Candidate",
    "ConfigError",
    "CorpusFormatError",
    "CorpusNotFoundError",
    "CrossFitFinder",
    "DataError",
    "ErrorFinder",
    "FinderArguments",
    "IndexCorruptError",
    "IndexFormatError",
    "IndexMissingError",
    "IndexOutOfDateError",
    "MisalignedEntityWarning",
    "MissingExtraError",
    "OutputInUseError",
    "OutputWriteError",
    "PipelineError",
    "SegmentIndex",
    "SegmentInfluence",
    "SegmentInfluenceError",
    "SegmentInfluenceWarning",
    "ShardedIndex",
    "UnknownLabelWarning",
    "__version__",
    "agreement",
    "build_finder",
    "calibrate",
    "cross_fitted_finder",
    "evaluate_ranking",
    "find_errors",
    "fit_surrogate",
    "held_out_indices",
    "index_pipeline",
    "load_snapshot",
    "rank",
    "ray_cluster",
    "read_docbin",
    "split_folds",
    "validate",
    "write_folds",
    "write_sharded",
]
