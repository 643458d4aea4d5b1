"""Ranked candidates as Prodigy-style review records (the `find-errors` output)."""

from typing import List, Optional, Union

import numpy
from spacy.tokens import Doc

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
            {"score": float(scores[i]), "method": method, "rank": position + 1},
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
