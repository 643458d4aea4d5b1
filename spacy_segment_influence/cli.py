"""The `segment-influence` command line (also `python -m spacy_segment_influence`).

Commands import spaCy, torch and the modules they need when they run, so that `--help`
answers at once (tests/test_cli_help.py holds the help texts to the modules' names)."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Union, cast

import typer
from typer.core import TyperCommand

from .atomic_file import write_atomic
from .exceptions import ConfigError, DataError, PipelineError, SegmentInfluenceError
from .fidelity_metrics import METHODS, PLOT_INSTALL

if TYPE_CHECKING:
    from spacy.tokens import Doc

    from .component import SegmentInfluence


# curvature.CURVATURES, named here without importing torch
CURVATURE_NAMES = ("identity", "kfac", "exact")


class _Command(TyperCommand):
    """A command whose arguments read as in click's usage lines (MODEL_DIR, [TEXT]) rather
    than typer's {model_dir}."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar is None and param.name:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: Any) -> List[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(str(param.metavar) if param.required else f"[{param.metavar}]")
        return pieces


class _App(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Callable:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


# rich_markup_mode=None: click's plain help, whose command list shows each command's first
# sentence on one line and whose flags carry no <bool>
app = _App(
    rich_markup_mode=None,
    name="segment-influence",
    help=(
        "Segment influence for spaCy NER: explain predictions by the training spans that "
        "caused them, and rank training annotations by how likely they are wrong."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Segment influence for spaCy NER pipelines (Jain et al., Findings of EMNLP 2022)."""


@app.command()
def convert(
    input_path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="JSONL with id, tokens, ner_tags, or a CoNLL IOB file"
    ),
    output_path: Path = typer.Argument(..., dir_okay=False, help="Output .spacy file (DocBin)"),
    lang: str = typer.Option("en", help="Language of the blank tokenizer vocab"),
    file_format: str = typer.Option(
        "auto",
        "--format",
        help="jsonl | iob (CoNLL columns: token first, IOB tag last) | auto (.jsonl; .iob .txt .conll)",
    ),
    scheme: str = typer.Option(
        "auto", help="JSONL tag scheme: bio | biluo | io (bare labels: a run of one label is one entity) | auto"
    ),
) -> None:
    """Convert JSONL (BIO, BILUO or IO tags) or CoNLL IOB into a .spacy corpus.

    CoNLL IOB files are read by spaCy's ner converter, one doc per sentence."""
    from .corpus import SCHEMES, convert_corpus

    with _user_errors():
        _check_distinct(output_path, input_path)
        if scheme not in (*SCHEMES, "auto"):
            raise ConfigError(f"Unknown --scheme {scheme!r}: use auto, {', '.join(SCHEMES)}")
        n_docs = convert_corpus(input_path, output_path, lang=lang, file_format=file_format, scheme=scheme)
    typer.echo(f"Wrote {n_docs} docs to {output_path}")


# Who `index` names as the writer of OUTPUT_DIR in its marker (`atomic_dir.MARKER`)
INDEX_OWNER = "segment-influence index"


@app.command()
def index(
    model_dir: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="Trained pipeline with crf_ner, or spaCy's ner (via a CRF surrogate)"
    ),
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy) to index"),
    output_dir: Path = typer.Argument(..., file_okay=False, help="Where to write the pipeline plus its index"),
    curvature: str = typer.Option("kfac", help=f"{' | '.join(CURVATURE_NAMES)} (exact: small heads only)"),
    damping: float = typer.Option(0.001, help="Damping added to the curvature"),
    normalize: bool = typer.Option(True, help="Cosine-normalise scores (a training entity ranks itself first)"),
    granularity: str = typer.Option("entities", help="entities (gold entity spans) | tokens (every token)"),
    layers: str = typer.Option(
        "head", help="head (CRF head, trained weights) | embeddings (tok2vec embedding rows, initial weights)"
    ),
    inits: int = typer.Option(4, help="With --layers embeddings: initialisations the scores sum over (storage x N)"),
    k: int = typer.Option(5, help="Supporters and opposers stored per predicted entity"),
    ner: Optional[str] = typer.Option(None, help="NER component to explain (default: the crf_ner, else the ner)"),
    dev: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="Dev corpus (.spacy): report a surrogate's agreement on it"
    ),
    dtype: str = typer.Option("float32", help="Storage precision of the index: float32 | float16"),
    device: str = typer.Option("cpu", help="Torch device for search, e.g. cpu or cuda:0"),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Encode on a Ray cluster at this address ('local' starts one here); needs the ray extra"
    ),
    ray_workers: Optional[int] = typer.Option(None, help="With --ray: Ray workers (default one per cluster CPU)"),
) -> None:
    """Index a training corpus into a copy of the pipeline.

    Writes MODEL_DIR plus an indexed segment_influence component to OUTPUT_DIR, like
    `spacy assemble`, all at once or not at all: a pipeline that explains its entities."""
    import spacy

    from .atomic_dir import replaced_dir
    from .component import check_settings

    config = {
        "curvature": curvature,
        "damping": damping,
        "normalize": normalize,
        "granularity": granularity,
        "layers": layers,
        "inits": inits,
        "k": k,
        "ner": ner,
        "dtype": dtype,
        "device": device,
    }
    # the whole of OUTPUT_DIR is replaced at once, only when everything succeeded, and only
    # when it is new, empty or was written by `index` (never a directory holding the inputs)
    inputs = [model_dir, train_path, *([dev] if dev is not None else [])]
    with _user_errors(), replaced_dir(output_dir, INDEX_OWNER, inputs) as building:
        check_settings(
            curvature=curvature, granularity=granularity, k=k, dtype=dtype, refine=False, layers=layers, inits=inits
        )
        # an index MODEL_DIR already has is replaced, so it is not read: it may be damaged or outdated
        nlp = spacy.load(model_dir, exclude=["segment_influence"])
        component = cast("SegmentInfluence", nlp.add_pipe("segment_influence", config=config))
        component.initialize(
            lambda: [], nlp=nlp, train_path=train_path, dev_path=dev, ray_address=ray, ray_workers=ray_workers
        )
        index = component.check_index()
        nlp.to_disk(building)
    written = sum(file.stat().st_size for file in (output_dir / component.name).rglob("*") if file.is_file())
    typer.echo(f"Indexed {len(index)} segments ({written / 1e6:.1f} MB written); saved to {output_dir}")


@app.command()
def explain(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Pipeline written by `index`"),
    text: Optional[str] = typer.Argument(None, help="Text to analyse (or use --docs)"),
    docs: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="A .spacy corpus to analyse instead"),
    limit: int = typer.Option(0, help="With --docs: only the first N docs (0 = all)"),
    k: int = typer.Option(3, help="Supporters and opposers shown per entity"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per doc instead of a table"),
    refine: bool = typer.Option(
        False, help="Also estimate each hit's removal effect on the entity's loss, leverage-corrected (exact index)"
    ),
) -> None:
    """Show the training spans behind each predicted entity.

    For every predicted entity, the training spans that support and oppose it most."""
    import srsly

    from . import bridge
    from .component import check_k
    from .corpus import read_docbin
    from .explain_table import format_influences
    from .snapshot import load_snapshot

    with _user_errors():
        if (text is None) == (docs is None):
            raise ConfigError("Give either TEXT or --docs X.spacy")
        check_k(k, "explain --k")
        if limit < 0:
            raise ConfigError(f"--limit must be >= 0 (0 = all), got {limit}")
        nlp = load_snapshot(model_dir)
        if "segment_influence" not in nlp.pipe_names:
            raise PipelineError(f"{model_dir} has no segment_influence component: run `segment-influence index` first")
        cast("SegmentInfluence", nlp.get_pipe("segment_influence")).cfg.update(k=k, refine=refine)
        if docs is not None:
            corpus = read_docbin(docs, nlp.vocab)
            inputs: List[Union[str, "Doc"]] = [
                bridge.unannotated(doc) for doc, _ in zip(corpus, range(limit or 10**12))
            ]
        else:
            inputs = [cast(str, text)]
        for doc in nlp.pipe(inputs):
            if as_json:
                typer.echo(
                    srsly.json_dumps({"text": doc.text, "id": doc.user_data.get("id"), "entities": doc._.influences})
                )
            else:
                typer.echo(format_influences(doc))


_VALIDATE_HELP = """Check predicted influence against retraining.

Refits the CRF head on the first --n-train training sentences, retrains it without each of
2 x --n-segments training segments (`top`: those with the largest predicted effect;
`random`: others) and correlates the actual change of the test segments' losses (the
entities predicted on the first --n-dev dev sentences) with each method's prediction.
Per method and group it prints Pearson, Spearman and `sign` (the share of pairs whose
signs agree). Each retraining takes about half a minute on 2 CPU cores. The methods:

\b
""" + "\n".join(f"{name:<9} {line}" for name, line in METHODS.items())


@app.command(help=_VALIDATE_HELP)
def validate(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline with crf_ner"),
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy)"),
    dev_path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Held-out corpus (.spacy) for test segments"
    ),
    n_train: int = typer.Option(200, help="Training sentences the head is refit on"),
    n_dev: int = typer.Option(50, help="Dev sentences whose predicted entities are the test segments"),
    pairs: int = typer.Option(400, help="(test, train) pairs per group"),
    n_segments: int = typer.Option(20, help="Training segments retrained per group (top and random)"),
    l2: float = typer.Option(0.001, help="L2 damping of the refit objective"),
    seed: int = typer.Option(0),
    ner: str = typer.Option("crf_ner", help="crf_ner component, or a ner explained by an indexed CRF surrogate"),
    out: Path = typer.Option(..., dir_okay=False, help="metrics.json to write"),
    plot: Optional[Path] = typer.Option(
        None, dir_okay=False, help=f"Also a scatter plot (PNG; needs matplotlib: {PLOT_INSTALL})"
    ),
) -> None:
    """Check predicted influence against retraining (help: `_VALIDATE_HELP`)."""
    import importlib.util

    import spacy
    import srsly

    from .corpus import read_docbin
    from .fidelity_metrics import save_plot
    from .surrogate import agreement, indexed_surrogate
    from .validate import estimated_seconds
    from .validate import validate as run_validation

    with _user_errors():
        _check_distinct(out, train_path, dev_path)
        _check_distinct(plot, train_path, dev_path, out)
        if plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise ConfigError(f"--plot needs matplotlib: {PLOT_INSTALL}")
    typer.echo(
        f"validate refits the head on {n_train} training sentences and retrains it {2 * n_segments} times: "
        f"about {estimated_seconds(n_train, n_segments) / 60:.0f} min on 2 CPU cores (a rough estimate; "
        "the progress bar shows the time left)",
        err=True,
    )
    nlp = spacy.load(model_dir)
    with _user_errors():
        train_docs = read_docbin(train_path, nlp.vocab)
        dev_docs = read_docbin(dev_path, nlp.vocab)
        surrogate = indexed_surrogate(nlp, ner)
        result = run_validation(
            nlp,
            train_docs,
            dev_docs,
            ner_name=ner,
            n_train=n_train,
            n_dev=n_dev,
            pairs=pairs,
            n_segments=n_segments,
            l2=l2,
            seed=seed,
            ner=surrogate,
        )
        if surrogate is not None:
            result["settings"]["surrogate_agreement"] = agreement(nlp, ner, surrogate, dev_docs)
            typer.echo(f"CRF surrogate of {ner!r}: {result['settings']['surrogate_agreement']}")
    with _user_errors():
        write_atomic(
            out, srsly.json_dumps({key: result[key] for key in ("methods", "settings", "diagnostics")}, indent=2)
        )
    for method, groups in result["methods"].items():
        cells = "  ".join(
            f"{group}: pearson {m['pearson']:.3f} spearman {m['spearman']:.3f} "
            f"sign {m['sign_agreement']:.2f} (n={m['n']})"
            for group, m in groups.items()
        )
        typer.echo(f"{method:<9} {cells}")
    if plot is not None:
        problem = save_plot(result, str(plot))
        typer.echo(f"No plot: {problem}" if problem else f"Plot written to {plot}")


@app.command()
def lds(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline with crf_ner"),
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Its training corpus (.spacy)"),
    dev_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Held-out corpus (.spacy)"),
    out_dir: Path = typer.Option(..., file_okay=False, help="Folder for the subset models (reused on a rerun)"),
    out: Path = typer.Option(..., dir_okay=False, help="metrics.json to write"),
    methods: str = typer.Option(
        "string-count,head,embeddings", help="Comma-separated attributions (string-count, head, embeddings)"
    ),
    subsets: int = typer.Option(16, help="Random training subsets, one pipeline trained on each"),
    fraction: float = typer.Option(0.5, help="Share of the training sentences in a subset"),
    steps: Optional[int] = typer.Option(None, help="Training steps per subset model (default: the config's)"),
    seed: int = typer.Option(0, help="Seed of the subsets and of training"),
    n_test: int = typer.Option(200, help="Dev sentences whose predicted entities are the test predictions"),
    seed_repeats: int = typer.Option(2, help="Subsets trained again with another seed, for the noise ceiling"),
    jobs: int = typer.Option(1, help="Subset models trained at once, in separate processes"),
    inits: int = typer.Option(4, help="Initialisations the embeddings attribution sums over (no training each)"),
    ner: str = typer.Option("crf_ner", help="The crf_ner component"),
) -> None:
    """Check attributions against retraining on random subsets (LDS).

    Trains the pipeline from scratch with its own config on --subsets random subsets of
    TRAIN and correlates, per entity the pipeline predicts on DEV, its CRF segment loss
    under each subset model with each attribution's predicted sum over the subset
    (Spearman; mean with a 95% bootstrap interval). Each subset model costs one training
    run (about 40 s for 500 tok2vec steps on 2 CPU cores)."""
    import spacy
    import srsly

    from .annotation_errors.fold_training import training_config
    from .lds import run_lds

    nlp = spacy.load(model_dir)
    with _user_errors():
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        typer.echo(f"lds trains {subsets + seed_repeats} pipelines (reused from {out_dir} where done)", err=True)
        result = run_lds(
            nlp,
            training_config(nlp.config),
            train_path,
            dev_path,
            out_dir,
            ner_name=ner,
            methods=chosen,
            n_subsets=subsets,
            fraction=fraction,
            max_steps=steps,
            seed=seed,
            n_test=n_test,
            seed_repeats=seed_repeats,
            jobs=jobs,
            n_inits=inits,
            log=lambda line: typer.echo(line, err=True),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, srsly.json_dumps(result, indent=2))
    settings = result["settings"]
    noise = (
        f"seed noise {settings['seed_variance_share']:.2f} of the variance (ceiling ~{settings['noise_ceiling']:.2f})"
        if settings["noise_ceiling"] is not None
        else "no seed repeats"
    )
    typer.echo(f"{settings['n_test_predictions']} test predictions, {settings['n_subsets']} subsets; {noise}")
    for name, entry in result["methods"].items():
        line = f"{name:<13} LDS {_summary(entry['lds'])}"
        if "minus_baseline" in entry:
            line += f"; where string-count is defined {_summary(entry['lds_where_baseline_defined'])}"
            line += f"; minus string-count {_summary(entry['minus_baseline'])}"
        typer.echo(line)


def _summary(summary: dict) -> str:
    if summary["mean"] is None:
        return "undefined (n=0)"
    return f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}] (n={summary['n_defined']})"


def _check_distinct(out: Optional[Path], *inputs: Optional[Path]) -> None:
    """ConfigError when the output is one of the inputs: it would be overwritten by what is
    computed from it."""
    for given in inputs:
        if out is not None and given is not None and out.exists() and given.exists() and out.samefile(given):
            raise ConfigError(f"{out} is both an input and the output: write the output to another path")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Report mistakes in the user's input (`SegmentInfluenceError`) as one red line and
    exit 1. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except SegmentInfluenceError as err:
        typer.secho(f"Error: {err}", err=True, fg="red")
        raise typer.Exit(1) from None


@app.command("find-errors")
def find_errors(
    model_dir: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="Trained pipeline with a crf_ner component"
    ),
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy) to check"),
    dev: Optional[Path] = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Held-out corpus (.spacy) with clean labels; required, except with --folds 0 and a --method "
        "other than combined and influence",
    ),
    method: str = typer.Option(
        "combined",
        help="combined (harm + loss + consistency) | influence (harm + loss) | consistency | self-influence | "
        "loss | margin | confidence | random",
    ),
    out: Path = typer.Option(..., dir_okay=False, help="Ranked review file (JSONL, Prodigy-style)"),
    k: int = typer.Option(3, help="Held-out predictions listed per candidate (supported and opposed; needs --dev)"),
    curvature: str = typer.Option(
        "kfac", help=f"{' | '.join(CURVATURE_NAMES)}; a pipeline written by `index` brings its own"
    ),
    damping: float = typer.Option(
        0.001, help="Damping added to --curvature (kfac or exact); a pipeline written by `index` brings its own"
    ),
    seed: int = typer.Option(0, help="Seed of the random baseline"),
    ner: Optional[str] = typer.Option(None, help="The crf_ner component to check (default: the pipeline's crf_ner)"),
    folds: int = typer.Option(
        2,
        help="Cross-fitting: train this many fold models (each on all documents but one fold) and score every "
        "document with the one that did not see it; 0 = score in-sample with MODEL_DIR alone",
    ),
    seeds: int = typer.Option(1, help="Cross-fitting: fold models per fold (training seeds 0..N-1), scores averaged"),
    fold_dir: Optional[Path] = typer.Option(
        None, file_okay=False, help="Where fold models are trained and reused from [default: MODEL_DIR/../folds]"
    ),
    fold_config: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="Training config of the fold models [default: MODEL_DIR's own]"
    ),
    fold_steps: Optional[int] = typer.Option(None, help="max_steps of the fold models [default: the config's]"),
    gpu_id: int = typer.Option(-1, help="GPU for training the fold models (-1 = CPU)"),
    fold_model: List[Path] = typer.Option(
        [],
        exists=True,
        file_okay=False,
        metavar="DIR",
        help="Cross-fitting with models you trained: a model trained on --fold-train (repeat per fold)",
    ),
    fold_train: List[Path] = typer.Option(
        [],
        exists=True,
        dir_okay=False,
        metavar="FILE",
        help="Cross-fitting: the corpus the matching --fold-model was trained on",
    ),
    reviewed: Optional[Path] = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Review decisions (JSONL with answer accept = the label is wrong, reject = it is right): "
        "the decided candidates are left out, the rest re-ranked by their similarity to them",
    ),
    similarity: str = typer.Option("gradient", help="With --reviewed: gradient | features"),
) -> None:
    """Rank training annotations by how likely they are wrong.

    Most suspicious first; the candidates are the gold entities and the model's
    disagreements with them. By default cross-fitted: --folds fold models are trained with
    MODEL_DIR's config, every training doc is annotated and scored by the fold model that
    did not train on it, `influence` combines that out-of-fold loss with MODEL_DIR's
    held-out harm, and `combined` adds how differently the rest of the corpus labels the
    same strings (`consistency`) (--folds 0: in-sample; --fold-model/--fold-train: fold
    models you trained on `split-folds` output). With --reviewed, a confirmed error's
    gradient lifts its siblings (the same systematic mistake elsewhere) and a rejected one
    lowers its neighbours, weighted by what the decisions so far show."""
    import spacy
    import srsly

    from .annotation_errors import (
        CrossFitFinder,
        ErrorFinder,
        ReviewLoop,
        cross_fitted_finder,
        held_out_indices,
        rank,
        read_decisions,
    )
    from .bridge import default_ner
    from .corpus import read_docbin

    with _user_errors():
        _check_distinct(out, train_path, dev, reviewed, fold_config, *fold_train)
        if len(fold_model) != len(fold_train):
            raise ConfigError(f"{len(fold_model)} --fold-model but {len(fold_train)} --fold-train: give one per fold")
        nlp = spacy.load(model_dir)
        ner = ner or default_ner(nlp)
        train_docs = read_docbin(train_path, nlp.vocab)
        dev_docs = read_docbin(dev, nlp.vocab) if dev is not None else None
        if method in ("combined", "influence") and dev_docs is None:
            raise ConfigError(f"--method {method} needs held-out data: pass --dev DEV.spacy")
        finder: Union[ErrorFinder, CrossFitFinder]
        if folds == 1 or folds < 0:
            raise ConfigError(f"--folds must be 0 (in-sample) or at least 2, got {folds}")
        if fold_model:
            models = [spacy.load(path) for path in fold_model]
            seen = [read_docbin(path, nlp.vocab) for path in fold_train]
            given = list(zip(models, held_out_indices(train_docs, seen)))
            finder = CrossFitFinder(
                given, train_docs, dev_docs, model=nlp, ner=ner, curvature=curvature, damping=damping, seed=seed
            )
        elif folds:
            if dev is None or dev_docs is None:
                raise ConfigError("Cross-fitting trains fold models, which need --dev DEV.spacy (or pass --folds 0)")
            finder = cross_fitted_finder(
                nlp,
                train_docs,
                dev_docs,
                dev,
                fold_dir if fold_dir is not None else model_dir.parent / "folds",
                n_folds=folds,
                n_seeds=seeds,
                fold_config=fold_config,
                max_steps=fold_steps,
                gpu_id=gpu_id,
                ner=ner,
                curvature=curvature,
                damping=damping,
                seed=seed,
                log=typer.echo,
            )
        else:
            finder = ErrorFinder(nlp, train_docs, dev_docs, ner=ner, curvature=curvature, damping=damping, seed=seed)
        decisions, loop = None, None
        if reviewed is not None:
            texts = {doc.user_data.get("id", str(i)): doc.text for i, doc in enumerate(train_docs)}
            decisions = read_decisions(reviewed, texts)
            loop = ReviewLoop(finder.full if isinstance(finder, CrossFitFinder) else finder, similarity)
            _, labels, unknown = loop.positions(decisions)
            typer.echo(
                f"{len(decisions)} decisions ({int(labels.sum())} accepted, {int((~labels).sum())} rejected)"
                + (f"; {unknown} of them on regions that are no candidate now, not used" if unknown else "")
            )
        records = rank(finder, method, k=k, decisions=decisions, review_loop=loop)
    with _user_errors():
        write_atomic(out, "".join(srsly.json_dumps(record) + "\n" for record in records))
    how = f", cross-fitted over {finder.n_models} fold models" if isinstance(finder, CrossFitFinder) else ""
    how += f", re-ranked from {len(decisions)} decisions" if decisions else ""
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

    from .annotation_errors import write_folds
    from .corpus import read_docbin

    with _user_errors():
        for k in range(folds):
            _check_distinct(out_dir / f"train_{k}.spacy", train_path)
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

    from .annotation_errors import Corrections, compare_rankings, evaluate_ranking, ranked_regions
    from .annotation_errors.records import read_ranking_records

    def regions(path: Path) -> list:
        ranked = ranked_regions(record for _, record in read_ranking_records(path))
        if not ranked:
            raise DataError(f"{path}: the ranking is empty, there is nothing to evaluate")
        return ranked

    with _user_errors():
        _check_distinct(out, ranking, original, corrected, *against)
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
        with _user_errors():
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
    from .review_page import read_ranking, render_review_page

    with _user_errors():
        _check_distinct(out, ranking)
        records, sentences, total = read_ranking(ranking, limit)
        page = render_review_page(
            records, sentences, title=f"Review of {ranking.name}", export_name=f"{ranking.stem}.reviewed.jsonl"
        )
    with _user_errors():
        write_atomic(out, page)
    typer.echo(f"Wrote {len(records)} of the {total} candidates to {out}")


def main() -> None:
    # the encoder's tokenizer would warn in every process forked after it ran threaded
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
