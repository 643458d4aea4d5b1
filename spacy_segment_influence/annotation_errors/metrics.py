"""Score a ranking of candidates against corrected labels (`evaluate-errors`).

A ranked region is an error when a token in it has a different tag in the corrected file.
Besides the candidates' own average precision (span AP), the ranking is read at the
levels the field reports (nessie, ActiveAED and cleanlab report sentences; cleanlab
tokens too): sentences and tokens are ranked by the first candidate that covers them, and
those no candidate covers come after all ranked ones in a random order. Their share of
the average precision is its expectation over that order (`average_precision`), so a
ranking is not rewarded or punished for the corpus order of what it did not rank.
Documents (the paper's recall@K and AUC) are ranked the same way.

`compare_rankings` gives the difference of two rankings' metrics with a paired bootstrap
interval over documents (sentences of one document share names and errors, so they are
resampled together).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import numpy
from numpy.typing import ArrayLike
from spacy.vocab import Vocab

from ..corpus import corpus_format, read_iob_docs, read_jsonl_records
from ..exceptions import CorpusFormatError, DataError
from ..tag_schemes import doc_to_bio
from .crossfit import document_of

Region = Tuple[str, int, int]  # sentence id, token start, token end (exclusive)
# The metrics `compare_rankings` resamples: one value per ranking and resample.
BOOTSTRAP_METRICS = ("span_ap", "sentence_ap", "token_ap", "doc_auc")


def read_tags(path: Path) -> Dict[str, List[str]]:
    """Sentence id -> tags of a JSONL or CoNLL IOB corpus (`corpus.corpus_format`)."""
    return {sid: tags for sid, (_, tags) in read_sentences(path).items()}


def read_sentences(path: Path) -> Dict[str, Tuple[List[str], List[str]]]:
    """Sentence id -> (tokens, tags) of a JSONL or CoNLL IOB corpus (IOB: as BIO); a
    repeated id is an error, since a ranking names its sentences by id."""
    if corpus_format(Path(path)) == "iob":
        return {doc.user_data["id"]: ([t.text for t in doc], doc_to_bio(doc)) for doc in read_iob_docs(path, Vocab())}
    sentences: Dict[str, Tuple[List[str], List[str]]] = {}
    first_line: Dict[str, int] = {}
    for line, record in read_jsonl_records(path):
        sid, tokens, tags = record.get("id"), record.get("tokens"), record.get("ner_tags")
        if not isinstance(sid, str) or not isinstance(tokens, list) or not isinstance(tags, list):
            raise CorpusFormatError(f"{path}:{line}: expected a string 'id' and lists 'tokens' and 'ner_tags'")
        if sid in sentences:
            raise CorpusFormatError(f"{path}:{line}: id {sid!r} repeats line {first_line[sid]}; ids must be unique")
        sentences[sid], first_line[sid] = (tokens, tags), line
    return sentences


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


@dataclass
class Corrections:
    """A corpus' original labels and the tokens a correction changed, with the
    sentences' documents (ids `<document>_<sentence>`, see `document_of`)."""

    original: Dict[str, List[str]]
    changed: Dict[str, Set[int]]

    @classmethod
    def from_tags(cls, original: Dict[str, List[str]], corrected: Dict[str, List[str]]) -> "Corrections":
        return cls(original, changed_tokens(original, corrected))

    @classmethod
    def from_files(cls, original: Path, corrected: Path) -> "Corrections":
        """From two JSONL corpora of the same sentences (ids and tokens must agree)."""
        before, after = read_sentences(original), read_sentences(corrected)
        for sid, (tokens, _) in before.items():
            if sid in after and after[sid][0] != tokens:
                raise DataError(
                    f"Sentence {sid!r} has other tokens in {corrected} than in {original} "
                    f"({' '.join(map(str, after[sid][0][:8]))!r}... vs {' '.join(map(str, tokens[:8]))!r}...): "
                    "the corrected file must hold the same sentences"
                )
        corrections = cls.from_tags({k: v[1] for k, v in before.items()}, {k: v[1] for k, v in after.items()})
        if not any(corrections.changed.values()):
            raise DataError(
                f"{corrected} has the same labels as {original} everywhere: no correction to evaluate against"
            )
        return corrections

    @property
    def documents(self) -> List[str]:
        return list(dict.fromkeys(document_of(sid) for sid in self.original))

    def is_error(self, region: Region) -> bool:
        sentence_id, start, end = region
        changed = self.changed.get(sentence_id, ())
        return any(t in changed for t in range(start, end))


@dataclass
class _Ranked:
    """One level of a ranking (candidates, sentences, tokens or documents): whether each
    item is an error and its document, ranked items first, then the `n - n_ranked` items
    no candidate reached."""

    hits: numpy.ndarray
    docs: numpy.ndarray
    n_ranked: int

    def resampled(self, weight: numpy.ndarray) -> "_Ranked":
        """Each item repeated as often as its document was drawn."""
        repeats = weight[self.docs]
        n_ranked = int(repeats[: self.n_ranked].sum())
        return _Ranked(numpy.repeat(self.hits, repeats), numpy.repeat(self.docs, repeats), n_ranked)

    def average_precision(self) -> float:
        return average_precision(self.hits[: self.n_ranked], self.hits[self.n_ranked :].sum(), len(self.hits))

    def recall_auc(self) -> float:
        return recall_auc(self.hits[: self.n_ranked], self.hits[self.n_ranked :].sum(), len(self.hits))


def _levels(ranked: Sequence[Region], corrections: Corrections) -> Dict[str, _Ranked]:
    if not ranked:  # every metric would read the corpus order as a ranking (document recall 1.0)
        raise DataError("The ranking is empty: there is nothing to evaluate")
    seen: Dict[Region, int] = {}
    for line, region in enumerate(ranked, start=1):
        sid, _, end = region
        if sid not in corrections.original:
            raise DataError(f"Ranked sentence {sid!r} is not in the original file")
        if end > len(corrections.original[sid]):
            raise DataError(
                f"Ranking line {line}: token_end {end - 1} is past the end of sentence {sid!r} "
                f"({len(corrections.original[sid])} tokens): a ranking of another corpus?"
            )
        if seen.setdefault(region, line) != line:
            raise DataError(f"Ranking line {line} repeats the region of line {seen[region]}: rank each region once")
    doc_index = {d: i for i, d in enumerate(corrections.documents)}
    sentence_doc = {sid: doc_index[document_of(sid)] for sid in corrections.original}
    changed = corrections.changed
    candidates = _Ranked(
        numpy.array([corrections.is_error(region) for region in ranked], dtype=bool),
        numpy.array([sentence_doc[sid] for sid, _, _ in ranked], dtype=numpy.int64),
        len(ranked),
    )
    sentences = list(dict.fromkeys(sid for sid, _, _ in ranked))
    tokens = list(dict.fromkeys((sid, t) for sid, start, end in ranked for t in range(start, end)))
    covered = set(tokens)
    n_sentences, n_tokens = len(sentences), len(tokens)
    ranked_sentences = set(sentences)  # built once: in the comprehension it was O(S^2)
    sentences += [sid for sid in corrections.original if sid not in ranked_sentences]
    tokens += [
        (sid, t) for sid, tags in corrections.original.items() for t in range(len(tags)) if (sid, t) not in covered
    ]
    documents = list(dict.fromkeys(sentence_doc[sid] for sid in sentences[:n_sentences]))
    n_documents = len(documents)
    ranked_documents = set(documents)
    documents += [d for d in range(len(doc_index)) if d not in ranked_documents]
    error_docs = {sentence_doc[sid] for sid in changed}
    return {
        "candidates": candidates,
        "sentences": _Ranked(
            numpy.array([sid in changed for sid in sentences], dtype=bool),
            numpy.array([sentence_doc[sid] for sid in sentences], dtype=numpy.int64),
            n_sentences,
        ),
        "tokens": _Ranked(
            numpy.array([t in changed.get(sid, ()) for sid, t in tokens], dtype=bool),
            numpy.array([sentence_doc[sid] for sid, _ in tokens], dtype=numpy.int64),
            n_tokens,
        ),
        "documents": _Ranked(
            numpy.array([d in error_docs for d in documents], dtype=bool),
            numpy.array(documents, dtype=numpy.int64),
            n_documents,
        ),
    }


def evaluate_ranking(ranked: Sequence[Region], corrections: Corrections) -> Dict[str, float]:
    """Metrics of a ranking of regions, most suspicious first: span AP, P@100 and recall at
    1/5/10 % of the candidates; sentence AP, token AP (AUPRC) and document recall@100/200/400
    and AUC, with what no candidate reaches ranked last (module docstring)."""
    levels = _levels(ranked, corrections)
    is_error = levels["candidates"].hits
    documents = levels["documents"]
    metrics: Dict[str, float] = {
        "n_candidates": len(ranked),
        "n_error_candidates": int(is_error.sum()),
        "span_ap": levels["candidates"].average_precision(),
        "sentence_ap": levels["sentences"].average_precision(),
        "token_ap": levels["tokens"].average_precision(),
        "p@100": float(is_error[:100].sum()) / 100,
        **{f"recall@{p}%": recall_at(is_error, math.ceil(len(ranked) * p / 100)) for p in (1, 5, 10)},
        "n_sentences": len(levels["sentences"].hits),
        "n_error_sentences": int(levels["sentences"].hits.sum()),
        "n_error_sentences_with_candidates": int(levels["sentences"].hits[: levels["sentences"].n_ranked].sum()),
        "n_docs": len(documents.hits),
        "n_error_docs": int(documents.hits.sum()),
        "n_error_docs_with_candidates": int(documents.hits[: documents.n_ranked].sum()),
    }
    for k in (100, 200, 400):
        metrics[f"doc_recall@{k}"] = recall_at(documents.hits, k)
    metrics["doc_auc"] = documents.recall_auc()
    return metrics


def compare_rankings(
    ranked_a: Sequence[Region],
    ranked_b: Sequence[Region],
    corrections: Corrections,
    n_boot: int = 1000,
    seed: int = 0,
) -> Dict[str, Tuple[float, float, float]]:
    """Per metric of `BOOTSTRAP_METRICS`: the difference a - b and its 95 % interval from a
    paired cluster bootstrap over documents (each resample draws the documents with
    replacement and scores both rankings on the same draw)."""
    levels = [_levels(ranked, corrections) for ranked in (ranked_a, ranked_b)]
    n_docs = len(corrections.documents)
    observed = numpy.subtract(*(_bootstrap_values(lv, numpy.ones(n_docs, dtype=numpy.int64)) for lv in levels))
    rng = numpy.random.default_rng(seed)
    draws = numpy.empty((n_boot, len(BOOTSTRAP_METRICS)))
    for i in range(n_boot):
        weight = numpy.bincount(rng.integers(0, n_docs, n_docs), minlength=n_docs)
        draws[i] = numpy.subtract(*(_bootstrap_values(lv, weight) for lv in levels))
    low, high = numpy.percentile(draws, [2.5, 97.5], axis=0)
    return {name: (float(observed[i]), float(low[i]), float(high[i])) for i, name in enumerate(BOOTSTRAP_METRICS)}


def _bootstrap_values(levels: Dict[str, _Ranked], weight: numpy.ndarray) -> numpy.ndarray:
    drawn = {name: level.resampled(weight) for name, level in levels.items()}
    return numpy.array(
        [
            drawn["candidates"].average_precision(),
            drawn["sentences"].average_precision(),
            drawn["tokens"].average_precision(),
            drawn["documents"].recall_auc(),
        ]
    )


def average_precision(ranked_hits: ArrayLike, tail_hits: int = 0, n_items: int = 0) -> float:
    """Mean over all errors of the precision at their rank (0 without errors). The items
    after `ranked_hits` (`n_items` in all, `tail_hits` of them errors) come in a random
    order: each tail error's precision is its expectation over that order. An error at
    tail position J (uniform on 1..n) has (J - 1)(m - 1)/(n - 1) other tail errors before
    it on average, so its expected precision is the mean over J of
    (h + 1 + (J - 1)(m - 1)/(n - 1)) / (r + J), h errors among the r ranked items."""
    hits = numpy.asarray(ranked_hits, dtype=bool)
    rank, found = len(hits), int(hits.sum())
    n_tail, m = max(n_items - rank, 0), int(tail_hits)
    total = found + m
    if total == 0:
        return 0.0
    precision = numpy.cumsum(hits) / numpy.arange(1, rank + 1)
    ranked_part = float(precision[hits].sum())
    tail_part = 0.0
    if m:
        positions = numpy.arange(1, n_tail + 1)
        before = (positions - 1) * (m - 1) / (n_tail - 1) if n_tail > 1 else numpy.zeros(1)
        tail_part = m * float(((found + 1 + before) / (rank + positions)).mean())
    return (ranked_part + tail_part) / total


def recall_at(is_error: ArrayLike, k: int) -> float:
    """Share of all errors among the first k."""
    hits = numpy.asarray(is_error, dtype=bool)
    total = hits.sum()
    return float(hits[:k].sum() / total) if total else 0.0


def recall_auc(ranked_hits: ArrayLike, tail_hits: int = 0, n_items: int = 0) -> float:
    """Area under recall@k against k / n for k = 1..n: 1 puts every error first, about
    0.5 is a random order (the paper's document-level AUC). Items after `ranked_hits`
    (`n_items` in all, `tail_hits` errors) come in a random order, counted by the
    expected recall, which grows linearly over the tail."""
    hits = numpy.asarray(ranked_hits, dtype=bool)
    rank = len(hits)
    n_tail, m = max(n_items - rank, 0), int(tail_hits)
    total = int(hits.sum()) + m
    if total == 0:
        return 0.0
    found = numpy.cumsum(hits).astype(float)
    base = found[-1] if rank else 0.0
    tail = base + m * numpy.arange(1, n_tail + 1) / n_tail if n_tail else numpy.zeros(0)
    return float(numpy.concatenate([found, tail]).sum() / (total * (rank + n_tail)))


def ranked_regions(records: Iterable[dict]) -> List[Region]:
    """(sentence id, token start, token end exclusive) of review records, in file order."""
    out = []
    for line, record in enumerate(records, start=1):
        meta, spans = record.get("meta"), record.get("spans")
        sentence_id = meta.get("doc_id") if isinstance(meta, dict) else None
        span = spans[0] if isinstance(spans, list) and spans else None
        if not isinstance(sentence_id, str) or not isinstance(span, dict):
            raise CorpusFormatError(
                f"Ranking line {line} has no meta.doc_id or no span: was it written by find-errors?"
            )
        start, end = span.get("token_start"), span.get("token_end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise CorpusFormatError(f"Ranking line {line}: its span needs token numbers token_start <= token_end")
        out.append((sentence_id, start, end + 1))
    return out
