"""Open a review database, preparing it on first use; write its corrected corpus."""

from pathlib import Path
from typing import Callable, Dict, Optional

from ..corpus import read_docbin
from ..exceptions import ConfigError
from ..storage.checksums import file_digest
from .corrected import apply_decisions, decisions_jsonl, write_corpus
from .prepare import labels_of, prepare
from .session import RERANK_EVERY, ReviewSession
from .store import ReviewStore


def open_review(
    db: Path,
    model_dir: Path,
    train_path: Path,
    *,
    ranking: Optional[Path] = None,
    dev_path: Optional[Path] = None,
    method: Optional[str] = None,
    ner: Optional[str] = None,
    k: int = 3,
    learn: bool = True,
    rerank_every: int = RERANK_EVERY,
    log: Callable[[str], None] = print,
) -> ReviewSession:
    """The review in `db`. A new database is filled from `ranking` (a find-errors file)
    or an in-sample ranking by `method` (default: influence with --dev, else loss); an
    existing one resumes where it stopped, without loading the model, and must review
    the same corpus."""
    store = ReviewStore(db)
    digest = file_digest(train_path)
    if store.prepared:
        if store.info("corpus_sha256") != digest:
            raise ConfigError(
                f"{db} reviews another corpus than {train_path} (or another version of it): "
                "pass its own corpus, or a new --db"
            )
        log(f"Resuming the review in {db}")
        return ReviewSession(store, learn, rerank_every)
    import spacy

    from ..ner.bridge import default_ner

    nlp = spacy.load(model_dir)
    ner = ner or default_ner(nlp)
    train_docs = read_docbin(train_path, nlp.vocab)
    dev_docs = read_docbin(dev_path, nlp.vocab) if dev_path is not None else None
    method = method or ("influence" if dev_docs else "loss")
    log(f"Preparing the review of {train_path} ({'from ' + str(ranking) if ranking else 'ranked by ' + method})")
    prepared = prepare(nlp, train_docs, ner=ner, ranking=ranking, dev_docs=dev_docs, method=method, k=k)
    store.fill(
        prepared.records,
        prepared.patterns,
        {"features": prepared.features},
        labels=labels_of(nlp, ner),
        corpus_sha256=digest,
        corpus=str(train_path),
        ranking=str(ranking) if ranking else method,
    )
    return ReviewSession(store, learn, rerank_every)


def write_decisions(
    train_path: Path, db: Path, out: Path, remove: bool = False, jsonl: Optional[Path] = None
) -> Dict[str, int]:
    """Write the corrected corpus (and the decisions as JSONL); returns what changed."""
    import spacy

    if not Path(db).is_file():
        raise ConfigError(f"{db}: no such review database")
    store = ReviewStore(db)
    try:
        if not store.prepared:
            raise ConfigError(f"{db} holds no review: pass the --db of segment-influence review")
        docs = read_docbin(train_path, spacy.blank("en").vocab)
        fixed, counts = apply_decisions(docs, store, remove)
        write_corpus(fixed, out)
        if jsonl is not None:
            from ..storage.atomic import write_atomic

            write_atomic(jsonl, decisions_jsonl(store))
    finally:
        store.close()
    return counts
