"""Label consistency of surface forms: how the rest of the corpus labels the same string.
A model-free signal that no single sentence's loss carries: an annotator who tags "Sunvale"
ORG in one place and LOC in three others has made a mistake in one of them, however well a
model fits each. It is the variation n-gram idea of Dickinson & Meurers (2003, "Detecting
Errors in Part-of-Speech Annotation"), which Klie et al. (2023, "Annotation Error
Detection", Computational Linguistics 49(1)) found among the strongest detectors for
spans (their "majority label per surface form")."""

from collections import Counter, defaultdict
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy
from spacy.tokens import Doc

from .candidates import Candidate

OUTSIDE = "O"  # the string occurs with no entity on any of its tokens
INSIDE = "<"  # the string is part of a longer entity
PARTIAL = "~"  # the string holds or crosses an entity without being exactly one

Key = Tuple[str, ...]


def candidate_spans(candidate: Candidate) -> List[Tuple[int, int]]:
    """The token spans whose labelling the candidate puts in question: its gold and its
    predicted entities."""
    return list(dict.fromkeys((s, e) for s, e, _ in candidate.gold + candidate.predicted))


def occurrence_label(doc: Doc, start: int, end: int) -> str:
    """How tokens [start, end) of `doc` are annotated: the label of a gold entity spanning
    exactly them, OUTSIDE when no entity touches them, INSIDE when one longer entity
    holds them, PARTIAL otherwise."""
    touching = [ent for ent in doc.ents if ent.start < end and start < ent.end]
    if not touching:
        return OUTSIDE
    if len(touching) == 1:
        ent = touching[0]
        if (ent.start, ent.end) == (start, end):
            return ent.label_
        if ent.start <= start and end <= ent.end:
            return INSIDE
    return PARTIAL


def _occurrences(docs: Sequence[Doc], keys: Dict[int, set]) -> Iterator[Tuple[Key, int, int, int]]:
    """(key, doc index, start, end) of every occurrence of the keys (grouped by length)."""
    for i, doc in enumerate(docs):
        texts = [token.text for token in doc]
        for length, wanted in keys.items():
            for start in range(len(texts) - length + 1):
                key = tuple(texts[start : start + length])
                if key in wanted:
                    yield key, i, start, start + length


def disagreement(docs: Sequence[Doc], candidates: Sequence[Candidate], prior: float = 1.0) -> numpy.ndarray:
    """Per candidate, the largest disagreement of its spans with the rest of the corpus:
    for a span whose string occurs elsewhere, the number of other occurrences annotated
    differently (another label, no entity, or other entity boundaries) over the number of
    other occurrences + `prior`. `prior` shrinks rare strings towards agreement: a string
    seen once elsewhere, labelled otherwise, scores 0.5; ten times, 0.91; never
    elsewhere, 0. Occurrences inside a longer entity (INSIDE) count for neither side, and
    a span that is one scores 0: a name that is part of a longer name ("U.S." in "U.S.
    Treasury") says nothing about how it is labelled alone."""
    wanted: Dict[int, set] = defaultdict(set)
    for c in candidates:
        for start, end in candidate_spans(c):
            wanted[end - start].add(tuple(t.text for t in docs[c.doc_index][start:end]))
    counts: Dict[Key, Counter] = defaultdict(Counter)
    for key, i, start, end in _occurrences(docs, wanted):
        counts[key][occurrence_label(docs[i], start, end)] += 1
    scores = numpy.zeros(len(candidates))
    for n, c in enumerate(candidates):
        doc = docs[c.doc_index]
        for start, end in candidate_spans(c):
            own = occurrence_label(doc, start, end)
            if own == INSIDE:
                continue
            seen = counts[tuple(t.text for t in doc[start:end])]
            others = sum(seen.values()) - seen[INSIDE] - 1
            differ = others - (seen[own] - 1)
            scores[n] = max(scores[n], differ / (others + prior))
    return scores
