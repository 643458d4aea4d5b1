"""The `find-errors` recipe as a library call: one typed arguments object
(`FinderArguments`, kronfluence's `ScoreArguments` style) from which `build_finder` loads the
pipeline and corpora and assembles the finder (in-sample, cross-fitted over fold models it
trains, or over fold models the user trained), and `find_errors` ranks the candidates."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import spacy

from ..corpus import read_docbin
from ..exceptions import ConfigError
from ..ner.bridge import default_ner
from .crossfit import CrossFitFinder, held_out_indices
from .finder import ErrorFinder
from .fold_training import cross_fitted_finder
from .methods import METHODS
from .records import rank
from .review_loop import ReviewLoop, read_decisions

AnyFinder = Union[ErrorFinder, CrossFitFinder]


@dataclass
class FinderArguments:
    """What to check and how (the options of `segment-influence find-errors`)."""

    model_dir: Path
    train_path: Path
    dev_path: Optional[Path] = None
    method: str = "combined"
    k: int = 3  # held-out predictions listed per candidate
    curvature: str = "kfac"
    damping: float = 0.001
    seed: int = 0
    ner: Optional[str] = None  # default: the pipeline's crf_ner (else its ner)
    folds: int = 2  # 0 = in-sample
    seeds: int = 1
    fold_dir: Optional[Path] = None  # default: model_dir/../folds
    fold_config: Optional[Path] = None
    fold_steps: Optional[int] = None
    gpu_id: int = -1
    fold_models: Sequence[Path] = ()  # models the user trained, one per fold ...
    fold_trains: Sequence[Path] = ()  # ... and the corpus each was trained on
    reviewed: Optional[Path] = None
    similarity: str = "gradient"


def build_finder(args: FinderArguments, log: Callable[[str], None] = print) -> AnyFinder:
    """The finder `args` ask for, its pipeline and corpora loaded (clear errors for
    settings that do not go together)."""
    if len(args.fold_models) != len(args.fold_trains):
        n_models, n_trains = len(args.fold_models), len(args.fold_trains)
        raise ConfigError(f"{n_models} --fold-model but {n_trains} --fold-train: give one per fold")
    nlp = spacy.load(args.model_dir)
    ner = args.ner or default_ner(nlp)
    train_docs = read_docbin(args.train_path, nlp.vocab)
    dev_docs = read_docbin(args.dev_path, nlp.vocab) if args.dev_path is not None else None
    if args.method in METHODS and METHODS[args.method].needs_dev and dev_docs is None:
        raise ConfigError(f"--method {args.method} needs held-out data: pass --dev DEV.spacy")
    if args.folds == 1 or args.folds < 0:
        raise ConfigError(f"--folds must be 0 (in-sample) or at least 2, got {args.folds}")
    curvature, damping, seed = args.curvature, args.damping, args.seed
    if args.fold_models:
        models = [spacy.load(path) for path in args.fold_models]
        seen = [read_docbin(path, nlp.vocab) for path in args.fold_trains]
        given = list(zip(models, held_out_indices(train_docs, seen)))
        return CrossFitFinder(
            given, train_docs, dev_docs, model=nlp, ner=ner, curvature=curvature, damping=damping, seed=seed
        )
    if not args.folds:
        return ErrorFinder(nlp, train_docs, dev_docs, ner=ner, curvature=curvature, damping=damping, seed=seed)
    if args.dev_path is None or dev_docs is None:
        raise ConfigError("Cross-fitting trains fold models, which need --dev DEV.spacy (or pass --folds 0)")
    return cross_fitted_finder(
        *(nlp, train_docs, dev_docs, args.dev_path),
        args.fold_dir if args.fold_dir is not None else Path(args.model_dir).parent / "folds",
        n_folds=args.folds,
        n_seeds=args.seeds,
        fold_config=args.fold_config,
        max_steps=args.fold_steps,
        gpu_id=args.gpu_id,
        ner=ner,
        curvature=curvature,
        damping=damping,
        seed=seed,
        log=log,
    )


def find_errors(args: FinderArguments, log: Callable[[str], None] = print) -> Tuple[List[dict], AnyFinder, int]:
    """The review records of every candidate, most suspicious first (`rank`), the finder
    that scored them and the number of review decisions they were re-ranked from."""
    finder = build_finder(args, log)
    decisions, loop = None, None
    if args.reviewed is not None:
        texts = {doc.user_data.get("id", str(i)): doc.text for i, doc in enumerate(finder.docs)}
        decisions = read_decisions(args.reviewed, texts)
        loop = ReviewLoop(finder.full if isinstance(finder, CrossFitFinder) else finder, args.similarity)
        _, labels, unknown = loop.positions(decisions)
        log(
            f"{len(decisions)} decisions ({int(labels.sum())} accepted, {int((~labels).sum())} rejected)"
            + (f"; {unknown} of them on regions that are no candidate now, not used" if unknown else "")
        )
    records = rank(finder, args.method, k=args.k, decisions=decisions, review_loop=loop)
    return records, finder, len(decisions or {})
