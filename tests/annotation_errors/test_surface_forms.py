import random

import numpy
import pytest
import spacy
from spacy.tokens import Doc, Span

from spacy_segment_influence.annotation_errors import find_candidates
from spacy_segment_influence.annotation_errors.methods import neg_log_tail
from spacy_segment_influence.annotation_errors.surface_forms import (
    INSIDE,
    OUTSIDE,
    PARTIAL,
    disagreement,
    occurrence_label,
)

VOCAB = spacy.blank("en").vocab
WORDS = ["Sunvale", "Foods", "Berg", "visited", "in", "Anna", "."]
LABELS = ["ORG", "LOC", "PER"]


def doc_with(words, ents):
    doc = Doc(VOCAB, words=words)
    doc.ents = [Span(doc, s, e, label=label) for s, e, label in ents]
    return doc


def test_occurrence_labels():
    doc = doc_with(["Anna", "Berg", "visited", "Sunvale", "Foods"], [(0, 2, "PER"), (3, 5, "ORG")])
    assert occurrence_label(doc, 0, 2) == "PER"
    assert occurrence_label(doc, 2, 3) == OUTSIDE
    assert occurrence_label(doc, 3, 4) == INSIDE  # part of a longer entity
    assert occurrence_label(doc, 1, 3) == PARTIAL  # across an entity's end
    assert occurrence_label(doc, 2, 5) == PARTIAL  # holding an entity


def test_worked_example():
    """'Sunvale' is LOC in three sentences and ORG in one; 'Berg' is PER once, unlabelled once."""
    docs = [
        doc_with(["Sunvale", "visited"], [(0, 1, "LOC")]),
        doc_with(["in", "Sunvale"], [(1, 2, "LOC")]),
        doc_with(["Sunvale", "."], [(0, 1, "ORG")]),
        doc_with(["Berg", "."], [(0, 1, "PER")]),
        doc_with(["Anna", "Berg"], []),
        doc_with(["Sunvale", "Foods"], [(0, 2, "ORG")]),  # INSIDE for "Sunvale": counts for neither side
        doc_with(["Sunvale", "Foods"], [(0, 1, "LOC")]),  # PARTIAL for "Sunvale Foods"
    ]
    candidates = [
        find_candidates(0, [(0, 1, "LOC")], [(0, 1, "LOC")])[0],
        find_candidates(2, [(0, 1, "ORG")], [(0, 1, "ORG")])[0],
        find_candidates(3, [(0, 1, "PER")], [])[0],
        find_candidates(4, [], [(1, 2, "PER")])[0],  # missing: the model tags the unlabelled Berg
        find_candidates(5, [(0, 2, "ORG")], [(0, 1, "LOC")])[0],  # boundary: LOC Sunvale is INSIDE here
        find_candidates(6, [(0, 1, "LOC")], [(0, 2, "ORG")])[0],  # boundary: ORG Sunvale Foods is PARTIAL here
    ]
    scores = disagreement(docs, candidates, prior=1.0)
    # LOC Sunvale: of the 3 others (LOC, ORG, LOC) 1 differs; ORG Sunvale: 3 of 3; Berg: 1 of 1 either way;
    # ORG Sunvale Foods: its 1 other occurrence (PARTIAL) differs, and the INSIDE Sunvale is no evidence;
    # LOC Sunvale in the last sentence as the first, and Sunvale Foods there: 1 other (ORG), differing
    numpy.testing.assert_allclose(scores, [1 / 4, 3 / 4, 1 / 2, 1 / 2, 1 / 2, 1 / 2])


def brute_force(docs, candidates, prior):
    """Compare every candidate span with every token span of every doc."""
    out = []
    for c in candidates:
        best = 0.0
        for start, end in {(s, e) for s, e, _ in c.gold + c.predicted}:
            text = [t.text for t in docs[c.doc_index][start:end]]
            own = occurrence_label(docs[c.doc_index], start, end)
            if own == INSIDE:
                continue
            others = differ = 0
            for i, doc in enumerate(docs):
                for s in range(len(doc) - len(text) + 1):
                    if (i, s) == (c.doc_index, start) or [t.text for t in doc[s : s + len(text)]] != text:
                        continue
                    label = occurrence_label(doc, s, s + len(text))
                    if label != INSIDE:
                        others += 1
                        differ += label != own
            best = max(best, differ / (others + prior))
        out.append(best)
    return numpy.array(out)


def random_doc(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
    ents, i = [], 0
    while i < len(words):
        if rng.random() < 0.4:
            end = min(len(words), i + rng.randint(1, 3))
            ents.append((i, end, rng.choice(LABELS)))
            i = end
        else:
            i += 1
    return doc_with(words, ents)


@pytest.mark.parametrize("seed", range(5))
def test_disagreement_matches_brute_force(seed):
    rng = random.Random(seed)
    docs = [random_doc(rng) for _ in range(30)]
    candidates = []
    for i, doc in enumerate(docs):
        predicted = [(e.start, e.end, rng.choice(LABELS)) for e in random_doc(rng).ents if e.end <= len(doc)]
        candidates += find_candidates(i, [(e.start, e.end, e.label_) for e in doc.ents], predicted)
    prior = rng.choice([0.5, 1.0, 2.0])
    numpy.testing.assert_allclose(disagreement(docs, candidates, prior), brute_force(docs, candidates, prior))


def test_neg_log_tail_ties_share_the_larger_tail():
    scores = numpy.array([0.0, 2.0, 0.0, 1.0, 0.0])
    numpy.testing.assert_allclose(neg_log_tail(scores), -numpy.log([1.0, 0.2, 1.0, 0.4, 1.0]))
