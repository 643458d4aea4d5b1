"""Ranked candidates as Prodigy-style review records (the `find-errors` output), and the
reader that refuses a ranking cut short: every record carries its rank and the number of
candidates written (`meta.rank`, `meta.candidates`), so a truncated file, which is still
valid JSONL, is told apart from a short ranking."""

from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy
from spacy.tokens import Doc

from ..corpus import read_jsonl_records
from ..exceptions import CorpusFormatError
from .candidates import Candidate, Entity
from .crossfit import CrossFitFinder
from .finder import ErrorFinder
from .review_loop import ReviewLoop


def rank(
    finder: Union[ErrorFinder, CrossFitFinder],
    method: str,
    k: int = 3,
    decisions: Optional[dict] = None,
    review_loop: Optional[ReviewLoop] = None,
) -> List[dict]:
    """Prodigy-style review records of all candidates, most suspicious first. With dev
    docs, each names the k held-out regions it supports and the k it opposes most. With
    `decisions` (region -> accepted, `review_loop.read_decisions`), the decided
    candidates are left out and the rest re-ranked by `review_loop`."""
    scores = finder.scores(method)
    influenced = finder.influenced(k) if finder.dev is not None and k > 0 else None
    order = numpy.argsort(-scores, kind="stable")
    if decisions:
        if review_loop is None:
            raise ValueError("re-ranking from decisions needs the review loop")
        indices, labels, _ = review_loop.positions(decisions)
        scores = review_loop.rerank(scores, indices, labels)
        decided = set(indices.tolist())
        order = numpy.array([i for i in numpy.argsort(-scores, kind="stable") if i not in decided], dtype=int)
        method = f"{method}+review ({review_loop.similarity})"
    return [
        review_record(
            finder.docs[finder.candidates[i].doc_index],
            finder.candidates[i],
            {"score": float(scores[i]), "method": method, "rank": position + 1, "candidates": len(order)},
            influenced[i] if influenced is not None else [],
        )
        for position, i in enumerate(order)
    ]


def review_record(doc: Doc, candidate: Candidate, ranking: dict, influenced: List[dict]) -> dict:
    """One candidate as a Prodigy task: the sentence, its tokens, and the candidate region
    as a span with its current label ("O" if not annotated); the model's suggestion and
    the evidence go in meta. Token ends are inclusive, as in Prodigy."""
    return {
        "text": doc.text,
        "tokens": [
            {"text": t.text, "start": t.idx, "end": t.idx + len(t), "id": t.i, "ws": bool(t.whitespace_)} for t in doc
        ],
        "spans": [_prodigy_span(doc, (candidate.start, candidate.end, candidate.label))],
        "meta": {
            "doc_id": doc.user_data.get("id"),
            "doc_index": candidate.doc_index,
            **ranking,
            "kind": candidate.kind,
            "label": candidate.label,
            "suggested_label": candidate.suggested,
            "gold_spans": [_prodigy_span(doc, e) for e in candidate.gold],
            "suggested_spans": [_prodigy_span(doc, e) for e in candidate.predicted],
            "influenced": influenced,
        },
    }


def _prodigy_span(doc: Doc, entity: Entity) -> dict:
    start, end, label = entity
    span = doc[start:end]
    return {"start": span.start_char, "end": span.end_char, "token_start": start, "token_end": end - 1, "label": label}


def read_ranking_records(path: Path, check: Optional[Callable[[dict, str], None]] = None) -> Iterator[Tuple[int, dict]]:
    """(line number, record) of a `find-errors` ranking, in order; CorpusFormatError naming
    the file (and line) when its records do not run rank 1..N, N being the candidate count
    each carries: lines missing (a killed write, a partial copy), repeated or reordered.
    `check(record, "path:line")` vets each record's fields first."""
    count, expected = 0, None
    for line, record in read_jsonl_records(path):
        if check is not None:
            check(record, f"{path}:{line}")
        meta = record.get("meta")
        total, rank = (meta.get("candidates"), meta.get("rank")) if isinstance(meta, dict) else (None, None)
        if not isinstance(total, int) or isinstance(total, bool) or expected not in (None, total):
            raise CorpusFormatError(
                f"{path}:{line}: no meta.candidates count agreeing with the lines before: "
                "not a ranking written by this version of find-errors (rerun it)"
            )
        expected, count = total, count + 1
        if rank != count:
            raise CorpusFormatError(
                f"{path}:{line}: rank {rank!r} where {count} was expected: lines are missing, repeated or reordered"
            )
        yield line, record
    if expected is not None and count != expected:
        raise CorpusFormatError(
            f"{path}: {count} of the {expected} candidates it was written with: the file is cut short "
            "(a killed write or a partial copy); rerun find-errors"
        )
