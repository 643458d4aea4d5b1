"""evaluate-errors' metrics against brute force: the expected tail of the average
precision and recall AUC over every order of what no candidate ranked, and the paired
bootstrap's behaviour."""

import itertools
import math

import numpy
import pytest

from spacy_segment_influence.annotation_errors import Corrections, compare_rankings, evaluate_ranking
from spacy_segment_influence.annotation_errors.metrics import average_precision, recall_auc


def _plain_ap(hits):
    hits = numpy.asarray(hits, dtype=bool)
    if not hits.any():
        return 0.0
    precision = numpy.cumsum(hits) / numpy.arange(1, len(hits) + 1)
    return precision[hits].mean()


def _plain_auc(hits):
    hits = numpy.asarray(hits, dtype=bool)
    return (numpy.cumsum(hits) / hits.sum()).mean() if hits.any() else 0.0


def _over_tail_orders(metric, ranked, tail):
    """Mean of `metric` over every distinct order of the tail."""
    orders = set(itertools.permutations(tail))
    return numpy.mean([metric(list(ranked) + list(order)) for order in orders])


@pytest.mark.parametrize("seed", range(12))
def test_expected_tail_equals_the_mean_over_all_tail_orders(seed):
    rng = numpy.random.default_rng(seed)
    ranked = list(rng.random(int(rng.integers(0, 5))) < 0.4)
    tail = list(rng.random(int(rng.integers(0, 6))) < 0.4)
    n_items = len(ranked) + len(tail)
    want_ap = _over_tail_orders(_plain_ap, ranked, tail)
    want_auc = _over_tail_orders(_plain_auc, ranked, tail)
    assert average_precision(ranked, sum(tail), n_items) == pytest.approx(want_ap)
    assert recall_auc(ranked, sum(tail), n_items) == pytest.approx(want_auc)


def test_without_a_tail_the_metrics_are_the_plain_ones():
    assert average_precision([True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([False, False]) == 0.0
    assert recall_auc([True, False]) == 1.0
    assert recall_auc([False, True]) == 0.5


CORPUS = {
    "c_1_0": ["B-PER", "O", "O"],
    "c_1_1": ["O", "O"],
    "c_2_0": ["B-LOC", "O"],
    "c_3_0": ["O", "B-ORG"],
    "c_4_0": ["O", "B-MISC", "I-MISC"],
}
FIXED = {**CORPUS, "c_2_0": ["B-ORG", "O"], "c_3_0": ["O", "O"], "c_4_0": ["O", "B-MISC", "O"]}


def test_hand_made_ranking_at_every_level():
    corrections = Corrections.from_tags(CORPUS, FIXED)
    ranked = [("c_1_0", 0, 1), ("c_3_0", 1, 2), ("c_2_0", 1, 2), ("c_2_0", 0, 1)]
    metrics = evaluate_ranking(ranked, corrections)
    assert metrics["n_error_candidates"] == 2
    assert metrics["span_ap"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics["p@100"] == pytest.approx(0.02)
    # sentences: c_1_0 (clean), c_3_0 (error), c_2_0 (error), then c_1_1 and c_4_0 (one error) in either order
    assert metrics["sentence_ap"] == pytest.approx(_over_tail_orders(_plain_ap, [False, True, True], [False, True]))
    # tokens: c_1_0:0, c_3_0:1 (error), c_2_0:1, c_2_0:0 (error), then the 8 others with c_4_0:2 an error
    tail = [False] * 7 + [True]
    want = numpy.mean([_plain_ap([False, True, False, True] + [i == j for j in range(8)]) for i in range(8)])
    assert metrics["token_ap"] == pytest.approx(want)
    assert _over_tail_orders(_plain_ap, [False, True, False, True], tail) == pytest.approx(want)
    assert (metrics["n_docs"], metrics["n_error_docs"], metrics["n_error_docs_with_candidates"]) == (4, 3, 2)
    # documents: 1 (clean), 3 (error), 2 (error), then 4 (error)
    assert metrics["doc_auc"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 1) / 4)
    assert metrics["doc_recall@100"] == 1.0


def test_evaluation_rejects_mismatched_files():
    with pytest.raises(ValueError, match="different sentence ids"):
        Corrections.from_tags({"a_0": ["O"]}, {"b_0": ["O"]})
    with pytest.raises(ValueError, match="not in the original"):
        evaluate_ranking([("c_0", 0, 1)], Corrections.from_tags({"a_0": ["O"]}, {"a_0": ["O"]}))


def _random_corpus(rng, n_docs=40):
    original, corrected = {}, {}
    for d in range(n_docs):
        for s in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 6))
            tags = ["O"] * n
            fixed = list(tags)
            if rng.random() < 0.3:
                fixed[int(rng.integers(0, n))] = "B-ORG"
            original[f"d_{d}_{s}"], corrected[f"d_{d}_{s}"] = tags, fixed
    return Corrections.from_tags(original, corrected)


def test_bootstrap_of_a_ranking_against_itself_is_zero():
    corrections = _random_corpus(numpy.random.default_rng(0))
    ranked = [(sid, 0, len(tags)) for sid, tags in corrections.original.items()]
    for diff, low, high in compare_rankings(ranked, ranked, corrections, n_boot=50).values():
        assert diff == low == high == 0.0


def test_bootstrap_separates_a_perfect_ranking_from_a_reversed_one():
    corrections = _random_corpus(numpy.random.default_rng(1))
    regions = [(sid, t, t + 1) for sid, tags in corrections.original.items() for t in range(len(tags))]
    good = sorted(regions, key=lambda r: not corrections.is_error(r))
    result = compare_rankings(good, good[::-1], corrections, n_boot=200)
    for name, (diff, low, high) in result.items():
        assert 0 < low <= diff <= high, name
    observed = evaluate_ranking(good, corrections)
    assert observed["span_ap"] == observed["token_ap"] == 1.0
    assert math.isclose(observed["sentence_ap"], 1.0)
