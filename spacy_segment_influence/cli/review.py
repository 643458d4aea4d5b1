"""`review` and `apply-decisions`: the review app, and the corpus it corrects."""

from pathlib import Path
from typing import Optional

import typer

from ._util import app, check_distinct, user_errors


@app.command()
def review(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline with a crf_ner"),
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training corpus (.spacy) to review"),
    db: Path = typer.Option(..., dir_okay=False, help="SQLite database of the review (created, or resumed)"),
    ranking: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="A find-errors ranking to review (default: rank in-sample now)"
    ),
    dev: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="Without --ranking: held-out corpus for the influence ranking"
    ),
    method: Optional[str] = typer.Option(None, help="Without --ranking: influence (with --dev) | loss | ..."),
    ner: Optional[str] = typer.Option(None, help="The crf_ner component (default: the pipeline's)"),
    learn: bool = typer.Option(True, help="Re-rank the queue from the decisions as you answer"),
    rerank_every: int = typer.Option(10, help="Re-rank after every N-th decision (10 measured best on CoNLL)"),
    host: str = typer.Option("127.0.0.1", help="Address to serve on"),
    port: int = typer.Option(8080, help="Port to serve on"),
) -> None:
    """Review suspicious training annotations in the browser, one card at a time.

    Keys: a accept (the label is wrong), x reject (it is right), f fix (label or
    boundaries), space skip, g apply the next answer to every span like this, u undo.
    Every answer is saved to --db before the next card shows; rerun to resume."""
    with user_errors():
        from ..review_app import open_review
        from ..review_app.server import require_extra, serve

        require_extra()
        check_distinct(db, train_path, ranking, dev)
        session = open_review(
            db,
            model_dir,
            train_path,
            ranking=ranking,
            dev_path=dev,
            method=method,
            ner=ner,
            learn=learn,
            rerank_every=rerank_every,
            log=typer.echo,
        )
    serve(session, host, port, echo=typer.echo)


@app.command("apply-decisions")
def apply_decisions_command(
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="The reviewed training corpus (.spacy)"),
    db: Path = typer.Argument(..., exists=True, dir_okay=False, help="The review database (review --db)"),
    out: Path = typer.Argument(..., dir_okay=False, help="Corrected corpus (.spacy) to write"),
    remove: bool = typer.Option(False, help="Leave out the sentences with an accepted error instead of fixing them"),
    jsonl: Optional[Path] = typer.Option(
        None, dir_okay=False, help="Also write the decisions as Prodigy-style JSONL (for find-errors --reviewed)"
    ),
) -> None:
    """Write the training corpus with the review's accepted fixes."""
    from ..review_app import write_decisions

    with user_errors():
        check_distinct(out, train_path, db)
        check_distinct(jsonl, train_path, db, out)
        counts = write_decisions(train_path, db, out, remove=remove, jsonl=jsonl)
    how = "left out" if remove else "fixed"
    typer.echo(
        f"Wrote {counts['sentences']} sentences to {out}: {counts['fixed regions']} accepted regions in "
        f"{counts['changed sentences']} sentences {how}" + (f"; decisions in {jsonl}" if jsonl else "")
    )
