"""`find-errors`, `split-folds`, `evaluate-errors` and `report`: rank annotation errors
(cross-fitted over folds), score a ranking and review it."""

import textwrap
from pathlib import Path
from typing import List, Optional

import typer

from ..annotation_errors.methods import METHODS
from ..exceptions import DataError
from ..storage.atomic import write_atomic
from ._util import CURVATURE_NAMES, app, check_distinct, user_errors

_FIND_ERRORS_HELP = """Rank training annotations by how likely they are wrong.

Most suspicious first; the candidates are the gold entities and the model's
disagreements with them. By default cross-fitted: --folds fold models are trained with
MODEL_DIR's config, every training doc is annotated and scored by the fold model that
did not train on it, `influence` combines that out-of-fold loss with MODEL_DIR's
held-out harm, and `combined` adds how differently the rest of the corpus labels the
same strings (`consistency`) (--folds 0: in-sample; --fold-model/--fold-train: fold
models you trained on `split-folds` output). With --reviewed, a confirmed error's
gradient lifts its siblings (the same systematic mistake elsewhere) and a rejected one
lowers its neighbours, weighted by what the decisions so far show. The methods, each ranking a candidate high when:

\b
""" + "\n".join(
    textwrap.fill(m.ranks_high_when, 100, initial_indent=f"{name:<15}", subsequent_indent=" " * 15)
    for name, m in METHODS.items()
)

# find-errors' options
MODEL_DIR = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline with a crf_ner component")
TRAIN_PATH = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy) to check")
DEV = typer.Option(
    None,
    exists=True,
    dir_okay=False,
    help="Held-out corpus (.spacy) with clean labels; required, except with --folds 0 and a --method "
    "other than combined and influence",
)
METHOD = typer.Option("combined", help=f"{' | '.join(METHODS)} (each explained below)")
OUT = typer.Option(..., dir_okay=False, help="Ranked review file (JSONL, Prodigy-style)")
K = typer.Option(3, help="Held-out predictions listed per candidate (supported and opposed; needs --dev)")
CURVATURE = typer.Option("kfac", help=f"{' | '.join(CURVATURE_NAMES)}; a pipeline written by `index` brings its own")
DAMPING = typer.Option(
    0.001, help="Damping added to --curvature (kfac or exact); a pipeline written by `index` brings its own"
)
SEED = typer.Option(0, help="Seed of the random baseline")
NER = typer.Option(None, help="The crf_ner component to check (default: the pipeline's crf_ner)")
FOLDS = typer.Option(
    2,
    help="Cross-fitting: train this many fold models (each on all documents but one fold) and score every "
    "document with the one that did not see it; 0 = score in-sample with MODEL_DIR alone",
)
SEEDS = typer.Option(1, help="Cross-fitting: fold models per fold (training seeds 0..N-1), scores averaged")
FOLD_DIR = typer.Option(
    None, file_okay=False, help="Where fold models are trained and reused from [default: MODEL_DIR/../folds]"
)
FOLD_CONFIG = typer.Option(
    None, exists=True, dir_okay=False, help="Training config of the fold models [default: MODEL_DIR's own]"
)
FOLD_STEPS = typer.Option(None, help="max_steps of the fold models [default: the config's]")
GPU_ID = typer.Option(-1, help="GPU for training the fold models (-1 = CPU)")
FOLD_MODEL = typer.Option(
    [],
    exists=True,
    file_okay=False,
    metavar="DIR",
    help="Cross-fitting with models you trained: a model trained on --fold-train (repeat per fold)",
)
FOLD_TRAIN = typer.Option(
    [],
    exists=True,
    dir_okay=False,
    metavar="FILE",
    help="Cross-fitting: the corpus the matching --fold-model was trained on",
)
REVIEWED = typer.Option(
    None,
    exists=True,
    dir_okay=False,
    help="Review decisions (JSONL with answer accept = the label is wrong, reject = it is right): "
    "the decided candidates are left out, the rest re-ranked by their similarity to them",
)
SIMILARITY = typer.Option("gradient", help="With --reviewed: gradient | features")


@app.command("find-errors", help=_FIND_ERRORS_HELP)
def find_errors(
    model_dir: Path = MODEL_DIR,
    train_path: Path = TRAIN_PATH,
    dev: Optional[Path] = DEV,
    method: str = METHOD,
    out: Path = OUT,
    k: int = K,
    curvature: str = CURVATURE,
    damping: float = DAMPING,
    seed: int = SEED,
    ner: Optional[str] = NER,
    folds: int = FOLDS,
    seeds: int = SEEDS,
    fold_dir: Optional[Path] = FOLD_DIR,
    fold_config: Optional[Path] = FOLD_CONFIG,
    fold_steps: Optional[int] = FOLD_STEPS,
    gpu_id: int = GPU_ID,
    fold_model: List[Path] = FOLD_MODEL,
    fold_train: List[Path] = FOLD_TRAIN,
    reviewed: Optional[Path] = REVIEWED,
    similarity: str = SIMILARITY,
) -> None:
    """Rank training annotations by how likely they are wrong (help: `_FIND_ERRORS_HELP`)."""
    import srsly

    from ..annotation_errors import CrossFitFinder
    from ..annotation_errors.build import FinderArguments
    from ..annotation_errors.build import find_errors as rank_candidates

    with user_errors():
        check_distinct(out, train_path, dev, reviewed, fold_config, *fold_train)
        arguments = FinderArguments(  # the options in their order, but OUT
            *(model_dir, train_path, dev, method, k, curvature, damping, seed, ner, folds, seeds, fold_dir),
            *(fold_config, fold_steps, gpu_id, fold_model, fold_train, reviewed, similarity),
        )
        records, finder, n_decisions = rank_candidates(arguments, log=typer.echo)
        write_atomic(out, "".join(srsly.json_dumps(record) + "\n" for record in records))
    how = f", cross-fitted over {finder.n_models} fold models" if isinstance(finder, CrossFitFinder) else ""
    how += f", re-ranked from {n_decisions} decisions" if n_decisions else ""
    typer.echo(f"Ranked {len(records)} candidates by {method}{how}; wrote {out}")


@app.command("split-folds")
def split_folds_command(
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy)"),
    out_dir: Path = typer.Argument(..., file_okay=False, help="Writes train_0.spacy ... train_<n-1>.spacy here"),
    folds: int = typer.Option(2, help="Number of folds"),
    seed: int = typer.Option(0, help="Seed of the document shuffle"),
) -> None:
    """Split a training corpus into folds for cross-fitting.

    The folds hold whole documents, for cross-fitted find-errors: train_<k>.spacy holds
    every doc except fold k's, so the model trained on it can score fold k."""
    import spacy

    from ..annotation_errors import write_folds
    from ..corpus import read_docbin

    with user_errors():
        for k in range(folds):
            check_distinct(out_dir / f"train_{k}.spacy", train_path)
        docs = read_docbin(train_path, spacy.blank("en").vocab)
        paths = write_folds(docs, out_dir, folds, seed)
    for path in paths:
        typer.echo(f"Wrote {path}")


@app.command("evaluate-errors")
def evaluate_errors(
    ranking: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL written by find-errors"),
    original: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="The training corpus the model was trained on (JSONL or CoNLL IOB)"
    ),
    corrected: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="The same sentences with corrected labels (same format)"
    ),
    against: List[Path] = typer.Option(
        [],
        exists=True,
        dir_okay=False,
        metavar="FILE",
        help="Another ranking to compare with (paired bootstrap); repeatable",
    ),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for --against"),
    out: Optional[Path] = typer.Option(None, dir_okay=False, help="Write the metrics here (JSON)"),
) -> None:
    """Score a ranking against corrected labels.

    Span AP, P@100 and recall at 1/5/10 % of the candidates; sentence AP and token AP
    (AUPRC), sentences and tokens ranked by the first candidate covering them, the rest last;
    document recall@100/200/400 and AUC. With --against, the differences with another ranking
    and their 95 % intervals from a paired bootstrap over documents."""
    import srsly

    from ..annotation_errors import Corrections, compare_rankings, evaluate_ranking, ranked_regions
    from ..annotation_errors.records import read_ranking_records

    def regions(path: Path) -> list:
        ranked = ranked_regions(record for _, record in read_ranking_records(path))
        if not ranked:
            raise DataError(f"{path}: the ranking is empty, there is nothing to evaluate")
        return ranked

    with user_errors():
        check_distinct(out, ranking, original, corrected, *against)
        ranked = regions(ranking)
        corrections = Corrections.from_files(original, corrected)
        metrics: dict = evaluate_ranking(ranked, corrections)
        comparisons = {str(other): compare_rankings(ranked, regions(other), corrections, n_boot) for other in against}
    for name, value in metrics.items():
        typer.echo(f"{name:<34} {value:.4f}" if isinstance(value, float) else f"{name:<34} {value}")
    for other, differences in comparisons.items():
        typer.echo(f"minus {other} (95 % bootstrap interval over documents):")
        for name, (diff, low, high) in differences.items():
            typer.echo(f"  {name:<32} {diff:+.4f}  [{low:+.4f}, {high:+.4f}]")
    if out is not None:
        if comparisons:
            metrics["against"] = {o: {k: list(v) for k, v in d.items()} for o, d in comparisons.items()}
        with user_errors():
            write_atomic(out, srsly.json_dumps(metrics, indent=2))


@app.command()
def report(
    ranking: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL written by find-errors"),
    out: Path = typer.Option(..., dir_okay=False, help="HTML file to write"),
    limit: int = typer.Option(100, help="Show the first N candidates (0 = all)"),
) -> None:
    """Write the review page of the top candidates (HTML).

    One self-contained HTML file: accept (the annotation is wrong), reject (it is right)
    or skip each; export for `find-errors --reviewed`."""
    from ..review.review_page import read_ranking, render_review_page

    with user_errors():
        check_distinct(out, ranking)
        records, sentences, total = read_ranking(ranking, limit)
        page = render_review_page(
            records, sentences, title=f"Review of {ranking.name}", export_name=f"{ranking.stem}.reviewed.jsonl"
        )
    with user_errors():
        write_atomic(out, page)
    typer.echo(f"Wrote {len(records)} of the {total} candidates to {out}")
