"""Rank training annotations by how likely they are wrong, and score a ranking against
corrected labels (DESIGN.md section 6).

- `candidates`: the regions where an annotation error could sit.
- `methods`: the `Finder` protocol and the registry of methods (`METHODS`), each defined once.
- `finder`: `ErrorFinder`, the signals every method reads, from the model trained on all data.
- `crossfit`: folds of whole documents and `CrossFitFinder`, out-of-fold scores.
- `fold_training`: the fold models, trained with the user's config (`cross_fitted_finder`,
  the default recipe of `find-errors`).
- `surface_forms`: `disagreement`, how the rest of the corpus labels the same strings.
- `records`: `rank`, the Prodigy-style review file.
- `review_loop`: `ReviewLoop`, re-ranking from a reviewer's decisions.
- `metrics`: `evaluate_ranking` against corrected labels.
- `build`: `FinderArguments`, `build_finder` and `find_errors`: the `find-errors` recipe.

Names are imported from their modules on first use, so that `methods` (which `--help`
reads) comes without spaCy and torch.
"""

from typing import Dict

from ..lazy_exports import lazy_exports

# Each public name and its module, imported on first use
_EXPORTS: Dict[str, str] = {
    **dict.fromkeys(["FinderArguments", "build_finder", "find_errors"], "build"),
    **dict.fromkeys(["Candidate", "find_candidates"], "candidates"),
    **dict.fromkeys(["CrossFitFinder", "SeedEnsemble", "held_out_indices", "split_folds", "write_folds"], "crossfit"),
    "ErrorFinder": "finder",
    **dict.fromkeys(["FoldModel", "cross_fitted_finder", "train_fold_models"], "fold_training"),
    **dict.fromkeys(["METHODS", "Finder", "Method"], "methods"),
    **dict.fromkeys(["Corrections", "compare_rankings", "evaluate_ranking", "ranked_regions"], "metrics"),
    **dict.fromkeys(["rank", "review_record"], "records"),
    **dict.fromkeys(["ReviewLoop", "read_decisions"], "review_loop"),
    "disagreement": "surface_forms",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
