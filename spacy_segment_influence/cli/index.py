"""`index` and `explain`: a pipeline that explains its entities."""

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Union, cast

import typer

from ..exceptions import ConfigError, PipelineError
from ._util import CURVATURE_NAMES, app, user_errors

if TYPE_CHECKING:
    from spacy.tokens import Doc

    from ..pipeline.component import SegmentInfluence


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
        "head",
        help="head (CRF head, trained weights) | embeddings (the encoder's embedding rows, tok2vec hash rows "
        "or a transformer's word embeddings, at initial weights)",
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
    from ..influence.encoder_influence import has_hash_embeddings
    from ..pipeline.indexing import index_pipeline

    settings = {"curvature": curvature, "damping": damping, "normalize": normalize, "granularity": granularity}
    settings.update(layers=layers, inits=inits, k=k, ner=ner, dtype=dtype, device=device)
    with user_errors():
        component = index_pipeline(
            model_dir, train_path, output_dir, dev_path=dev, ray_address=ray, ray_workers=ray_workers, **settings
        )
    written = sum(file.stat().st_size for file in (output_dir / component.name).rglob("*") if file.is_file())
    typer.echo(
        f"Indexed {len(component.check_index())} segments ({written / 1e6:.1f} MB written); saved to {output_dir}"
    )
    if component.cfg["layers"] == "head" and has_hash_embeddings(component.nlp, component.cfg["ner"]):
        typer.echo(
            "Tip: for a tok2vec encoder, --layers embeddings predicts retraining about 3x better "
            "(README, 'Does influence predict retraining?'), at a higher build and query cost"
        )


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

    from ..corpus import read_docbin
    from ..ner import bridge
    from ..pipeline.settings import check_k
    from ..review.explain_table import format_influences
    from ..storage.snapshot import load_snapshot

    with user_errors():
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
