"""Rank training annotations by how likely they are wrong, and score a ranking against
corrected labels (DESIGN.md section 6).

- `candidates`: the regions where an annotation error could sit.
- `finder`: `ErrorFinder`, the scores of every method with the model trained on all data.
- `crossfit`: folds of whole documents and `CrossFitFinder`, out-of-fold scores.
- `fold_training`: the fold models, trained with the user's config (`cross_fitted_finder`,
  the default recipe of `find-errors`).
- `surface_forms`: `disagreement`, how the rest of the corpus labels the same strings.
- `records`: `rank`, the Prodigy-style review file.
- `review_loop`: `ReviewLoop`, re-ranking from a reviewer's decisions.
- `metrics`: `evaluate_ranking` against corrected labels.
"""

from .candidates import Candidate, find_candidates
from .crossfit import CrossFitFinder, SeedEnsemble, document_of, held_out_indices, split_folds, write_folds
from .finder import METHODS, ErrorFinder, fisher, neg_log_tail
from .fold_training import FoldModel, cross_fitted_finder, train_fold_models, training_config
from .metrics import (
    BOOTSTRAP_METRICS,
    Corrections,
    average_precision,
    changed_tokens,
    compare_rankings,
    evaluate_ranking,
    ranked_regions,
    read_tags,
    recall_at,
    recall_auc,
)
from .records import rank, review_record
from .review_loop import SIMILARITIES, ReviewLoop, read_decisions
from .surface_forms import disagreement

__all__ = [
    "BOOTSTRAP_METRICS",
    "METHODS",
    "Corrections",
    "compare_rankings",
    "Candidate",
    "CrossFitFinder",
    "FoldModel",
    "SeedEnsemble",
    "cross_fitted_finder",
    "train_fold_models",
    "training_config",
    "ErrorFinder",
    "average_precision",
    "changed_tokens",
    "document_of",
    "evaluate_ranking",
    "find_candidates",
    "held_out_indices",
    "fisher",
    "neg_log_tail",
    "disagreement",
    "rank",
    "ranked_regions",
    "read_tags",
    "recall_at",
    "recall_auc",
    "review_record",
    "ReviewLoop",
    "SIMILARITIES",
    "read_decisions",
    "split_folds",
    "write_folds",
]
