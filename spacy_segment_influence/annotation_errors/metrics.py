"""Score a ranking of candidates against corrected labels (`evaluate-errors`): which
ranked regions hold a token whose tag the correction changed."""

import math
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import numpy

from ..corpus import read_jsonl_records
from ..exceptions import CorpusFormatError, DataError
from .crossfit import document_of


def read_tags(path: Path) -> Dict[str, List[str]]:
    """Sentence id -> BIO tags of a JSONL corpus."""
    tags = {}
    for line, record in read_jsonl_records(path):
        if not isinstance(record.get("id"), str) or not isinstance(record.get("ner_tags"), list):
            raise CorpusFormatError(f"{path}:{line}: expected a string 'id' and a list 'ner_tags'")
        tags[record["id"]] = record["ner_tags"]
    return tags


def changed_tokens(original: Dict[str, List[str]], corrected: Dict[str, List[str]]) -> Dict[str, Set[int]]:
    """Sentence id -> positions whose tag differs between the two labellings."""
    if original.keys() != corrected.keys():
        missing = sorted(original.keys() ^ corrected.keys())
        raise DataError(f"The original and corrected files have different sentence ids (e.g. {missing[0]!r})")
    changed = {}
    for sentence_id, tags in original.items():
        if len(tags) != len(corrected[sentence_id]):
            raise DataError(f"Sentence {sentence_id!r} has a different number of tokens in the corrected file")
        diff = {i for i, (a, b) in enumerate(zip(tags, corrected[sentence_id])) if a != b}
        if diff:
            changed[sentence_id] = diff
    return changed


def evaluate_ranking(
    ranked: Sequence[Tuple[str, int, int]], original: Dict[str, List[str]], corrected: Dict[str, List[str]]
) -> Dict[str, float]:
    """Metrics of a ranking of (sentence id, token start, token end exclusive) regions,
    most suspicious first. A region is an error when any of its tokens' tags differ
    between `original` and `corrected`."""
    changed = changed_tokens(original, corrected)
    unknown = next((sid for sid, _, _ in ranked if sid not in original), None)
    if unknown is not None:
        raise DataError(f"Ranked sentence {unknown!r} is not in the original file")
    is_error = [any(t in changed.get(sid, ()) for t in range(start, end)) for sid, start, end in ranked]
    documents = list(dict.fromkeys(document_of(sid) for sid in original))
    error_docs = {document_of(sid) for sid in changed}
    ranked_docs = list(dict.fromkeys(document_of(sid) for sid, _, _ in ranked))
    doc_order = ranked_docs + [d for d in documents if d not in set(ranked_docs)]
    metrics = {
        "n_candidates": len(ranked),
        "n_error_candidates": int(sum(is_error)),
        "ap": average_precision(is_error),
        "p@100": sum(is_error[:100]) / 100,
        **{f"recall@{p}%": recall_at(is_error, math.ceil(len(ranked) * p / 100)) for p in (1, 5, 10)},
        "n_docs": len(documents),
        "n_error_docs": len(error_docs),
        "n_error_docs_with_candidates": len(error_docs & {document_of(sid) for sid, _, _ in ranked}),
    }
    doc_hits = [d in error_docs for d in doc_order]
    for k in (100, 200, 400):
        metrics[f"doc_recall@{k}"] = recall_at(doc_hits, k)
    metrics["doc_auc"] = recall_auc(doc_hits)
    return metrics


def average_precision(is_error: Sequence[bool]) -> float:
    """Mean over the errors of the precision at their rank (0 without errors)."""
    hits = numpy.asarray(is_error, dtype=bool)
    if not hits.any():
        return 0.0
    precision = numpy.cumsum(hits) / numpy.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def recall_at(is_error: Sequence[bool], k: int) -> float:
    """Share of all errors among the first k."""
    total = sum(is_error)
    return sum(is_error[:k]) / total if total else 0.0


def recall_auc(is_error: Sequence[bool]) -> float:
    """Area under recall@k against k / n for k = 1..n: 1 puts every error first, about
    0.5 is a random order (the paper's document-level AUC)."""
    hits = numpy.asarray(is_error, dtype=bool)
    if not hits.any():
        return 0.0
    return float((numpy.cumsum(hits) / hits.sum()).mean())


def ranked_regions(records: Iterable[dict]) -> List[Tuple[str, int, int]]:
    """(sentence id, token start, token end exclusive) of review records, in file order."""
    out = []
    for line, record in enumerate(records, start=1):
        sentence_id = record.get("meta", {}).get("doc_id")
        if sentence_id is None or not record.get("spans"):
            raise CorpusFormatError(
                f"Ranking line {line} has no meta.doc_id or no span: was it written by find-errors?"
            )
        span = record["spans"][0]
        out.append((sentence_id, span["token_start"], span["token_end"] + 1))
    return out
