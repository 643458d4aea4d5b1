"""The `segment-influence` command line (also `python -m spacy_segment_influence`)."""
from pathlib import Path

import typer

app = typer.Typer(
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
    input_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL with id, tokens, ner_tags (BIO)"),
    output_path: Path = typer.Argument(..., dir_okay=False, help="Output .spacy file (DocBin)"),
    lang: str = typer.Option("en", help="Language of the blank tokenizer vocab"),
) -> None:
    """Convert `{"id","tokens","ner_tags"}` BIO JSONL into a .spacy corpus."""
    from .corpus import CorpusFormatError, convert_jsonl

    try:
        n_docs = convert_jsonl(input_path, output_path, lang=lang)
    except CorpusFormatError as err:
        typer.secho(str(err), err=True, fg="red")
        raise typer.Exit(1)
    typer.echo(f"Wrote {n_docs} docs to {output_path}")


def main() -> None:
    app()
