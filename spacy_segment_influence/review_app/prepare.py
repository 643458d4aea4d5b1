"""What the review app serves, computed once per review and stored in its database: the
ranked candidates as `find-errors` review records, each with why it is suspicious (the
model's probability of its current labels, the training spans whose gradients support
and oppose them most), the pattern it belongs to, and the encoder features the
re-ranking compares.

The ranking is read from a `find-errors` file when given: that is the cross-fitted
ranking that measured best (BENCHMARKS.md), and reading it costs one pass of the model
over the corpus instead of training fold models again. Without one, candidates are
ranked in-sample with the model alone (`find-errors --folds 0`).
"""

from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc
from tqdm import tqdm

from ..annotation_errors import Candidate, ErrorFinder, rank
from ..annotation_errors.candidates import explaining_crf
from ..annotation_errors.records import read_ranking_records
from ..annotation_errors.review_loop import mean_features
from ..exceptions import DataError

WINDOW = 8  # context tokens shown either side of a span


class Prepared(NamedTuple):
    records: List[dict]  # most suspicious first, with meta.why
    patterns: List[str]
    features: numpy.ndarray  # [candidates, width], unit rows, in the records' order


def prepare(
    nlp: Language,
    train_docs: Sequence[Doc],
    *,
    ner: str,
    ranking: Optional[Path] = None,
    dev_docs: Optional[Sequence[Doc]] = None,
    method: str = "loss",
    k: int = 3,
) -> Prepared:
    """The review of `train_docs`: the candidates of `ranking` (a find-errors file), or
    ranked in-sample by `method` (held-out harm with `dev_docs`)."""
    if ranking is not None:
        records = [record for _, record in read_ranking_records(ranking)]
        candidates = [_candidate_of(record, train_docs, f"{ranking}:{n + 1}") for n, record in enumerate(records)]
        finder = ErrorFinder(nlp, train_docs, ner=ner, candidates=candidates)
        if len(finder.candidates) != len(candidates):
            raise DataError(f"{ranking}: some candidates cover unannotated tokens of the corpus: another corpus?")
    else:
        finder = ErrorFinder(nlp, train_docs, dev_docs, ner=ner)
        records = rank(finder, method, k=k)
    position = {(c.doc_index, c.start, c.end): i for i, c in enumerate(finder.candidates)}
    order = [position[_region(record)] for record in records]
    why = _why(finder, k)
    for record, i in zip(records, order):
        record["meta"]["why"] = why[i]
    features = mean_features(finder)[order]
    patterns = [pattern(finder.docs[c.doc_index], c) for c in (finder.candidates[i] for i in order)]
    return Prepared(records, patterns, features)


def pattern(doc: Doc, candidate: Candidate) -> str:
    """The group a candidate belongs to: its current label and the string of its main
    span (the gold entity, else the predicted one). A systematic error repeats one."""
    start, end, _ = primary_span(candidate)
    return f"{candidate.label}\t{doc[start:end].text}"


def primary_span(candidate: Candidate) -> Tuple[int, int, str]:
    return (candidate.gold or candidate.predicted or ((candidate.start, candidate.end, "O"),))[0]


def span_record(doc: Doc, start: int, end: int, label: str) -> dict:
    return {
        "doc_id": doc.user_data.get("id"),
        "left": doc[max(0, start - WINDOW) : start].text,
        "text": doc[start:end].text,
        "right": doc[end : end + WINDOW].text,
        "label": label,
    }


def _why(finder: ErrorFinder, k: int, batch: int = 512) -> List[dict]:
    """Per candidate: p(current labels) and the k training candidates whose gradients
    support and oppose its current labels most (cosine in the curvature metric, the
    search `explain` runs), itself left out."""
    probabilities = numpy.exp(-finder.losses())
    out: List[dict] = []
    n = len(finder.candidates)
    for start in tqdm(range(0, n, batch), desc="Influential training spans", disable=n <= batch, leave=False):
        chunk = numpy.arange(start, min(n, start + batch))
        results = finder.train_index.top_k(finder.grads.take(chunk), k=k + 1)
        for i, result in zip(chunk, results):
            out.append(
                {
                    "probability": float(probabilities[i]),
                    "supporters": [_neighbour(finder, j, s) for j, s in result.supporters if j != i][:k],
                    "opposers": [_neighbour(finder, j, s) for j, s in result.opposers if j != i][:k],
                }
            )
    return out


def _neighbour(finder: ErrorFinder, index: int, score: float) -> dict:
    candidate = finder.candidates[index]
    start, end, label = primary_span(candidate)
    return {**span_record(finder.docs[candidate.doc_index], start, end, candidate.label), "score": float(score)}


def _region(record: dict) -> Tuple[int, int, int]:
    span = record["spans"][0]
    return record["meta"]["doc_index"], span["token_start"], span["token_end"] + 1


def _candidate_of(record: dict, docs: Sequence[Doc], where: str) -> Candidate:
    """The candidate a find-errors record was written from; DataError when the corpus
    does not hold its sentence."""
    meta = record["meta"]
    doc_index, start, end = _region(record)
    if not (isinstance(doc_index, int) and 0 <= doc_index < len(docs)) or docs[doc_index].text != record.get("text"):
        raise DataError(f"{where}: its sentence is not sentence {doc_index} of the training corpus: another corpus?")

    def entities(key: str) -> Tuple[Tuple[int, int, str], ...]:
        return tuple((s["token_start"], s["token_end"] + 1, s["label"]) for s in meta.get(key, []))

    return Candidate(doc_index, start, end, meta["kind"], entities("gold_spans"), entities("suggested_spans"))


def labels_of(nlp: Language, ner: str) -> List[str]:
    """The entity labels a fix can choose from."""
    return sorted(explaining_crf(nlp, ner).labels)


def members(patterns: Sequence[str]) -> Dict[str, List[int]]:
    """Pattern -> candidate positions, in ranking order."""
    out: Dict[str, List[int]] = {}
    for i, key in enumerate(patterns):
        out.setdefault(key, []).append(i)
    return out
