"""`validate` and `lds`: predicted influence against retraining."""

from pathlib import Path
from typing import Optional

import typer

from ..exceptions import ConfigError
from ..fidelity.fidelity_metrics import METHODS, PLOT_INSTALL
from ..storage.atomic import write_atomic
from ._util import app, check_distinct, user_errors

_VALIDATE_HELP = """Check predicted influence against retraining.

Refits the CRF head on the first --n-train training sentences, retrains it without each of
2 x --n-segments training segments (`top`: those with the largest predicted effect;
`random`: others) and correlates the actual change of the test segments' losses (the
entities predicted on the first --n-dev dev sentences) with each method's prediction.
Per method and group it prints Pearson, Spearman and `sign` (the share of pairs whose
signs agree). Each retraining takes about half a minute on 2 CPU cores. The methods:

\b
""" + "\n".join(f"{name:<9} {line}" for name, line in METHODS.items())


# validate's options
VALIDATE_MODEL_DIR = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline with crf_ner")
VALIDATE_TRAIN_PATH = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy)")
VALIDATE_DEV_PATH = typer.Argument(..., exists=True, dir_okay=False, help="Held-out corpus (.spacy) for test segments")
VALIDATE_N_TRAIN = typer.Option(200, help="Training sentences the head is refit on")
VALIDATE_N_DEV = typer.Option(50, help="Dev sentences whose predicted entities are the test segments")
VALIDATE_PAIRS = typer.Option(400, help="(test, train) pairs per group")
VALIDATE_N_SEGMENTS = typer.Option(20, help="Training segments retrained per group (top and random)")
VALIDATE_L2 = typer.Option(0.001, help="L2 damping of the refit objective")
VALIDATE_SEED = typer.Option(0)
VALIDATE_NER = typer.Option("crf_ner", help="crf_ner component, or a ner explained by an indexed CRF surrogate")
VALIDATE_OUT = typer.Option(..., dir_okay=False, help="metrics.json to write")
VALIDATE_PLOT = typer.Option(None, dir_okay=False, help=f"Also a scatter plot (PNG; needs matplotlib: {PLOT_INSTALL})")


@app.command(help=_VALIDATE_HELP)
def validate(
    model_dir: Path = VALIDATE_MODEL_DIR,
    train_path: Path = VALIDATE_TRAIN_PATH,
    dev_path: Path = VALIDATE_DEV_PATH,
    n_train: int = VALIDATE_N_TRAIN,
    n_dev: int = VALIDATE_N_DEV,
    pairs: int = VALIDATE_PAIRS,
    n_segments: int = VALIDATE_N_SEGMENTS,
    l2: float = VALIDATE_L2,
    seed: int = VALIDATE_SEED,
    ner: str = VALIDATE_NER,
    out: Path = VALIDATE_OUT,
    plot: Optional[Path] = VALIDATE_PLOT,
) -> None:
    """Check predicted influence against retraining (help: `_VALIDATE_HELP`)."""
    import importlib.util

    import spacy
    import srsly

    from ..corpus import read_docbin
    from ..fidelity.fidelity_metrics import save_plot
    from ..fidelity.validate import validate as run_validation
    from ..influence.surrogate import agreement, indexed_surrogate

    with user_errors():
        check_distinct(out, train_path, dev_path)
        check_distinct(plot, train_path, dev_path, out)
        if plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise ConfigError(f"--plot needs matplotlib: {PLOT_INSTALL}")
    _announce_cost(n_train, n_segments)
    nlp = spacy.load(model_dir)
    with user_errors():
        train_docs = read_docbin(train_path, nlp.vocab)
        dev_docs = read_docbin(dev_path, nlp.vocab)
        surrogate = indexed_surrogate(nlp, ner)
        result = run_validation(
            *(nlp, train_docs, dev_docs),
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
    with user_errors():
        write_atomic(
            out, srsly.json_dumps({key: result[key] for key in ("methods", "settings", "diagnostics")}, indent=2)
        )
    _print_correlations(result["methods"])
    if plot is not None:
        problem = save_plot(result, str(plot))
        typer.echo(f"No plot: {problem}" if problem else f"Plot written to {plot}")


def _announce_cost(n_train: int, n_segments: int) -> None:
    from ..fidelity.validate import estimated_seconds

    typer.echo(
        f"validate refits the head on {n_train} training sentences and retrains it {2 * n_segments} times: "
        f"about {estimated_seconds(n_train, n_segments) / 60:.0f} min on 2 CPU cores (a rough estimate; "
        "the progress bar shows the time left)",
        err=True,
    )


def _print_correlations(methods: dict) -> None:
    for method, groups in methods.items():
        cells = "  ".join(
            f"{group}: pearson {m['pearson']:.3f} spearman {m['spearman']:.3f} "
            f"sign {m['sign_agreement']:.2f} (n={m['n']})"
            for group, m in groups.items()
        )
        typer.echo(f"{method:<9} {cells}")


# lds's options
LDS_MODEL_DIR = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline with crf_ner")
LDS_TRAIN_PATH = typer.Argument(..., exists=True, dir_okay=False, help="Its training corpus (.spacy)")
LDS_DEV_PATH = typer.Argument(..., exists=True, dir_okay=False, help="Held-out corpus (.spacy)")
LDS_OUT_DIR = typer.Option(..., file_okay=False, help="Folder for the subset models (reused on a rerun)")
LDS_OUT = typer.Option(..., dir_okay=False, help="metrics.json to write")
LDS_METHODS = typer.Option(
    "string-count,head,embeddings", help="Comma-separated attributions (string-count, head, embeddings)"
)
LDS_SUBSETS = typer.Option(16, help="Random training subsets, one pipeline trained on each")
LDS_FRACTION = typer.Option(0.5, help="Share of the training sentences in a subset")
LDS_STEPS = typer.Option(None, help="Training steps per subset model (default: the config's)")
LDS_SEED = typer.Option(0, help="Seed of the subsets and of training")
LDS_N_TEST = typer.Option(200, help="Dev sentences whose predicted entities are the test predictions")
LDS_SEED_REPEATS = typer.Option(2, help="Subsets trained again with another seed, for the noise ceiling")
LDS_JOBS = typer.Option(1, help="Subset models trained at once, in separate processes")
LDS_INITS = typer.Option(4, help="Initialisations the embeddings attribution sums over (no training each)")
LDS_NER = typer.Option("crf_ner", help="The crf_ner component")


@app.command()
def lds(
    model_dir: Path = LDS_MODEL_DIR,
    train_path: Path = LDS_TRAIN_PATH,
    dev_path: Path = LDS_DEV_PATH,
    out_dir: Path = LDS_OUT_DIR,
    out: Path = LDS_OUT,
    methods: str = LDS_METHODS,
    subsets: int = LDS_SUBSETS,
    fraction: float = LDS_FRACTION,
    steps: Optional[int] = LDS_STEPS,
    seed: int = LDS_SEED,
    n_test: int = LDS_N_TEST,
    seed_repeats: int = LDS_SEED_REPEATS,
    jobs: int = LDS_JOBS,
    inits: int = LDS_INITS,
    ner: str = LDS_NER,
) -> None:
    """Check attributions against retraining on random subsets (LDS).

    Trains the pipeline from scratch with its own config on --subsets random subsets of
    TRAIN and correlates, per entity the pipeline predicts on DEV, its CRF segment loss
    under each subset model with each attribution's predicted sum over the subset
    (Spearman; mean with a 95% bootstrap interval). Each subset model costs one training
    run (about 40 s for 500 tok2vec steps on 2 CPU cores)."""
    import spacy
    import srsly

    from ..fidelity.lds import run_lds
    from ..training import training_config

    nlp = spacy.load(model_dir)
    with user_errors():
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        typer.echo(f"lds trains {subsets + seed_repeats} pipelines (reused from {out_dir} where done)", err=True)
        result = run_lds(
            *(nlp, training_config(nlp.config), train_path, dev_path, out_dir),
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
    with user_errors():
        write_atomic(out, srsly.json_dumps(result, indent=2))
    _print_lds(result)


def _print_lds(result: dict) -> None:
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
