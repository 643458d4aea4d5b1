"""Per-entity probabilities against brute force: every labelling of a short sentence is
enumerated as a set of entities, its path scored, and p(entity) summed over the
labellings that contain it."""

import itertools
import math
from typing import Dict, List, Sequence, Tuple

import numpy
import pytest
import torch
from spacy.tokens import DocBin

from spacy_segment_influence.ner import crf
from spacy_segment_influence.ner.calibration import calibrate
from spacy_segment_influence.ner.entity_scores import (
    candidate_entities,
    entity_probabilities,
    score_entities,
)

from ..conftest import make_examples, tok2vec_nlp, train

LABELS = ["A", "B"]


def tag_inventory(scheme: str) -> List[str]:
    return ["O"] + [f"{p}-{label}" for label in LABELS for p in ("BILU" if scheme == "BILUO" else "BI")]


def labellings(n: int) -> List[List[Tuple[int, int, str]]]:
    """Every set of non-overlapping labelled spans over n tokens."""
    if n == 0:
        return [[]]
    out = [[(s + 1, e + 1, lab) for s, e, lab in rest] for rest in labellings(n - 1)]
    for k, label in itertools.product(range(1, n + 1), LABELS):
        out += [[(0, k, label)] + [(s + k, e + k, lab) for s, e, lab in rest] for rest in labellings(n - k)]
    return out


def encode(n: int, ents, scheme: str) -> List[str]:
    tags = ["O"] * n
    for s, e, label in ents:
        for t in range(s, e):
            if scheme == "BIO":
                tags[t] = ("B-" if t == s else "I-") + label
            elif e - s == 1:
                tags[t] = "U-" + label
            else:
                tags[t] = ("B-" if t == s else "L-" if t == e - 1 else "I-") + label
    return tags


def brute_force(chain: crf.ChainScores, b: int, tags: Sequence[str], scheme: str) -> Dict[tuple, float]:
    """p(entity) for every (start, end, label) of sentence b, and ("O", start, end) spans."""
    index = {t: i for i, t in enumerate(tags)}
    n = int(chain.lengths[b])
    e, trans = chain.emissions[b].double(), chain.transitions.double()
    weights = []
    sets = labellings(n)
    for ents in sets:
        ids = [index[t] for t in encode(n, ents, scheme)]
        score = chain.start[ids[0]] + chain.end[ids[-1]] + sum(e[t, i] for t, i in enumerate(ids))
        score = score + sum(trans[i, j] for i, j in zip(ids, ids[1:]))
        weights.append(float(score))
    z = numpy.logaddexp.reduce(weights)
    probs: Dict[tuple, float] = {}
    for ents, w in zip(sets, weights):
        p = math.exp(w - z)
        covered = set()
        for s, end, label in ents:
            probs[(s, end, label)] = probs.get((s, end, label), 0.0) + p
            covered.update(range(s, end))
        for s in range(n):
            for end in range(s + 1, n + 1):
                if not covered & set(range(s, end)):
                    probs[(s, end, "O")] = probs.get((s, end, "O"), 0.0) + p
    return probs


def random_chain(tags: Sequence[str], lengths: Sequence[int], seed: int) -> crf.ChainScores:
    gen = torch.Generator().manual_seed(seed)
    c = len(tags)
    return crf.ChainScores(
        torch.randn(len(lengths), max(lengths), c, generator=gen, dtype=torch.float64) * 2,
        torch.tensor(lengths),
        torch.randn(c, c, generator=gen, dtype=torch.float64),
        torch.randn(c, generator=gen, dtype=torch.float64),
        torch.randn(c, generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize("scheme", ["BILUO", "BIO"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entity_probabilities_match_enumeration(scheme, seed):
    tags = tag_inventory(scheme)
    chain = random_chain(tags, [4, 1, 3], seed)
    constraints = crf.tag_constraints(tags, scheme)
    queries = [
        [(s, e, label) for s in range(n) for e in range(s + 1, n + 1) for label in [*LABELS, "O"]]
        for n in chain.lengths.tolist()
    ]
    found = entity_probabilities(chain, constraints, tags, scheme, queries)
    for b, (ents, probs) in enumerate(zip(queries, found)):
        expected = brute_force(chain, b, tags, scheme)
        for ent, p in zip(ents, probs):
            assert p == pytest.approx(expected.get(ent, 0.0), abs=1e-9), (b, ent)


@pytest.mark.parametrize("scheme", ["BILUO", "BIO"])
@pytest.mark.parametrize("threshold", [0.02, 0.2])
def test_candidates_are_exactly_the_spans_above_threshold(scheme, threshold):
    tags = tag_inventory(scheme)
    chain = random_chain(tags, [5, 2], seed=7)
    constraints = crf.tag_constraints(tags, scheme)
    candidates = candidate_entities(chain, constraints, tags, scheme, threshold)
    predicted = [[(0, 1, "A")], []]
    scored = score_entities(chain, constraints, tags, scheme, predicted, threshold)
    for b in range(2):
        expected = {k: p for k, p in brute_force(chain, b, tags, scheme).items() if k[2] != "O"}
        above = {k for k, p in expected.items() if p >= threshold}
        assert above <= set(candidates[b])  # the pruning never loses a span
        got = {(s.start, s.end, s.label): s.score for s in scored[b]}
        assert set(got) == above | set(predicted[b])
        for key, p in got.items():
            assert p == pytest.approx(expected.get(key, 0.0), abs=1e-9)


def test_crf_ner_stores_entity_scores_as_spancat_does(tmp_path):
    nlp = tok2vec_nlp()
    train(nlp, make_examples(nlp), steps=30)
    docs = list(nlp.pipe(["Peter Smith lives in Paris .", "Apple bought IBM ."]))
    for doc in docs:
        group = doc.spans["ent_scores"]
        assert [(s.start, s.end, s.label_) for s in group] == [(e.start, e.end, e.label_) for e in doc.ents]
        assert len(group.attrs["scores"]) == len(group)
        assert all(0.0 < p <= 1.0 for p in group.attrs["scores"])
    ner = nlp.get_pipe("crf_ner")
    ner.candidate_threshold = 0.01
    doc = nlp("Peter Smith lives in Paris .")
    assert len(doc.spans["ent_scores"]) >= len(doc.ents)
    assert all(p >= 0.01 for p in doc.spans["ent_scores"].attrs["scores"])
    back = list(DocBin(docs=docs, store_user_data=True).get_docs(nlp.vocab))
    assert list(back[0].spans["ent_scores"].attrs["scores"]) == list(docs[0].spans["ent_scores"].attrs["scores"])


def test_explain_reports_the_entity_probability():
    nlp = tok2vec_nlp()
    examples = make_examples(nlp)
    train(nlp, examples, steps=30)
    component = nlp.add_pipe("segment_influence", config={"k": 2})
    component.initialize(lambda: examples, nlp=nlp, show_progress=False)
    doc = nlp("Peter Smith lives in Paris .")
    scores = dict(zip([(s.start, s.end) for s in doc.spans["ent_scores"]], doc.spans["ent_scores"].attrs["scores"]))
    for record in doc._.influences:
        assert record["probability"] == pytest.approx(scores[record["start"], record["end"]], rel=1e-5)
    nothing = component.explain(doc[2:4], label="O")  # "lives in" is no entity
    ner = nlp.get_pipe("crf_ner")
    chain = ner.chain_scores([ner.head(torch.tensor(doc.tensor))])  # doc.tensor: the shared tok2vec's output
    outside = entity_probabilities(chain, ner.constraints, ner.tags, ner.scheme, [[(2, 4, "O")]])
    assert 0.0 < nothing["probability"] <= 1.0
    assert nothing["probability"] == pytest.approx(outside[0][0], rel=1e-5)


NOISY_DATA = [
    ("Peter Smith lives in New York City .", [(0, 11, "LOC"), (21, 34, "LOC")]),
    ("Apple bought IBM last year .", [(0, 5, "ORG"), (13, 16, "PER")]),
    ("Anna Berg visited Paris .", [(0, 9, "PER"), (18, 23, "LOC")]),
    ("The Olympics start in Rome .", [(4, 12, "MISC"), (22, 26, "ORG")]),
    ("Peter visited Apple in Paris .", [(0, 5, "PER"), (14, 19, "ORG"), (23, 28, "LOC")]),
]


def test_calibrated_temperature_minimises_the_log_loss_of_predicted_entities():
    nlp = tok2vec_nlp()
    train(nlp, make_examples(nlp), steps=30)
    ner = nlp.get_pipe("crf_ner")
    held_out = [eg.reference for eg in make_examples(nlp, NOISY_DATA)]  # some of its labels disagree
    temperature = calibrate(nlp, held_out)
    assert ner.temperature == temperature

    predicted = [nlp(reference.text) for reference in held_out]

    def log_loss(t: float) -> float:
        total = 0.0
        for reference, doc in zip(held_out, predicted):
            chain = crf.tempered(ner.chain_scores([ner.head(torch.tensor(doc.tensor))]), t)
            ents = [(e.start, e.end, e.label_) for e in doc.ents]
            gold = {(e.start, e.end, e.label_) for e in reference.ents}
            for ent, p in zip(ents, entity_probabilities(chain, ner.constraints, ner.tags, ner.scheme, [ents])[0]):
                total -= math.log(p if ent in gold else max(1.0 - p, 1e-12))
        return total

    grid = min(log_loss(t) for t in numpy.geomspace(0.05, 20.0, 60))
    assert log_loss(temperature) <= grid * (1 + 1e-6)
    assert 0.05 <= temperature <= 20.0
    doc = nlp(NOISY_DATA[0][0])  # the stored scores are the tempered ones
    chain = crf.tempered(ner.chain_scores([ner.head(torch.tensor(doc.tensor))]), temperature)
    ents = [(e.start, e.end, e.label_) for e in doc.ents]
    expected = entity_probabilities(chain, ner.constraints, ner.tags, ner.scheme, [ents])[0]
    assert list(doc.spans["ent_scores"].attrs["scores"]) == pytest.approx(expected, rel=1e-5)
    assert tok2vec_nlp().from_bytes(nlp.to_bytes()).get_pipe("crf_ner").temperature == pytest.approx(temperature)
