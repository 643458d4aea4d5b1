"""Train the fold models of cross-fitted error finding with the user's own training
config, through spaCy's training API (`spacy.cli.train.train`), so that a fold model is
the user's model trained on less data, not a different one.

`train_fold_models` writes, per fold k and seed s, `fold-<k>-seed-<s>/` under the fold
directory: the fold's training corpus (every document but fold k's, `split_folds`), the
config, and spaCy's `model-best` / `model-last`. A fold model whose config, corpus, dev
corpus, steps and seed are unchanged is reused (a `key.json` records their hash), so a
rerun of `find-errors` or of the project workflow trains nothing twice.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import spacy
from spacy.language import Language
from spacy.tokens import Doc
from thinc.api import Config

from ..exceptions import ConfigError
from ..ner.tagger import CRFEntityRecognizer
from ..training import TrainingJob, run_training_jobs, training_config
from .crossfit import CrossFitFinder, fold_corpus, split_folds


@dataclass
class FoldModel:
    """A trained fold model: the path of its pipeline and the indices of the training docs
    it did not see (the docs it scores)."""

    fold: int
    seed: int
    path: Path
    held_out: List[int]


def train_fold_models(
    config: Config,
    train_docs: Sequence[Doc],
    dev_path: Path,
    fold_dir: Path,
    *,
    n_folds: int = 2,
    n_seeds: int = 1,
    max_steps: Optional[int] = None,
    split_seed: int = 0,
    gpu_id: int = -1,
    log: Callable[[str], None] = print,
) -> List[FoldModel]:
    """Train (or reuse) one model per fold and seed: fold k's models train on every
    document outside fold k (`split_folds(train_docs, n_folds, split_seed)`) with
    `config` (a training config, see `training_config`), the dev corpus `dev_path` for
    spaCy's model selection, `training.seed` = s for s in range(n_seeds), and
    `training.max_steps` = `max_steps` when given. Returns the models, fold by fold."""
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n_seeds}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--fold-steps must be at least 1, got {max_steps}")
    folds = split_folds(train_docs, n_folds, split_seed)
    jobs, models = [], []
    for k, held_out in enumerate(folds):
        corpus = fold_corpus(train_docs, held_out).to_bytes()
        for seed in range(n_seeds):
            job = TrainingJob(
                Path(fold_dir) / f"fold-{k}-seed-{seed}",
                corpus,
                seed,
                max_steps,
                name=f"fold {k} seed {seed}",
                training=f"training on {len(train_docs) - len(held_out)} sentences "
                f"(fold {k}'s {len(held_out)} held out)",
            )
            jobs.append(job)
            models.append(FoldModel(k, seed, job.model_path, list(held_out)))
    run_training_jobs(config, jobs, Path(dev_path), gpu_id=gpu_id, log=log)
    return models


def cross_fitted_finder(
    nlp: Language,
    train_docs: Sequence[Doc],
    dev_docs: Sequence[Doc],
    dev_path: Path,
    fold_dir: Path,
    *,
    n_folds: int = 2,
    n_seeds: int = 1,
    fold_config: Optional[Path] = None,
    max_steps: Optional[int] = None,
    gpu_id: int = -1,
    ner: str = "crf_ner",
    curvature: str = "kfac",
    damping: float = 0.001,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> CrossFitFinder:
    """The default error-finding recipe (measured in BENCHMARKS.md, "Annotation
    errors"): train `n_folds` x `n_seeds` fold models with `fold_config` (default: the
    config `nlp` was trained with), then score every training doc with the fold models
    that did not see it, `influence` combining their loss with `nlp`'s held-out harm."""
    if ner in nlp.pipe_names and not isinstance(nlp.get_pipe(ner), CRFEntityRecognizer):
        raise ConfigError(
            f"{ner!r} is not a crf_ner: its fold models would have no CRF to score with. Rank in-sample through "
            "the CRF surrogate of an indexed pipeline instead (find-errors --folds 0, or ErrorFinder)"
        )
    # not interpolated: `${paths.train}` must still point at the override
    config = (
        Config().from_disk(fold_config, interpolate=False) if fold_config is not None else training_config(nlp.config)
    )
    trained = train_fold_models(
        config,
        train_docs,
        dev_path,
        fold_dir,
        n_folds=n_folds,
        n_seeds=n_seeds,
        max_steps=max_steps,
        gpu_id=gpu_id,
        log=log,
    )
    folds = [
        ([spacy.load(m.path) for m in trained if m.fold == k], next(m.held_out for m in trained if m.fold == k))
        for k in range(n_folds)
    ]
    return CrossFitFinder(
        folds, train_docs, dev_docs, model=nlp, ner=ner, curvature=curvature, damping=damping, seed=seed
    )
