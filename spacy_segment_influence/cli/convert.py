"""`convert`: JSONL or CoNLL IOB into a .spacy corpus."""

from pathlib import Path

import typer

from ..exceptions import ConfigError
from ._util import app, check_distinct, user_errors


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
    from ..corpus import SCHEMES, convert_corpus

    with user_errors():
        check_distinct(output_path, input_path)
        if scheme not in (*SCHEMES, "auto"):
            raise ConfigError(f"Unknown --scheme {scheme!r}: use auto, {', '.join(SCHEMES)}")
        n_docs = convert_corpus(input_path, output_path, lang=lang, file_format=file_format, scheme=scheme)
    typer.echo(f"Wrote {n_docs} docs to {output_path}")
