"""The linear datamodeling score: its statistics against brute force, its baseline on a
worked example, and the component's public score matrix against its top-k search."""

import itertools

import numpy
import pytest
import spacy
from spacy.tokens import Doc

from spacy_segment_influence.exceptions import ConfigError, DataError
from spacy_segment_influence.fidelity import lds
from spacy_segment_influence.influence.segments import Segment

from ..conftest import make_examples


def _brute_spearman(a, b):
    """Pearson of average ranks, ranks by counting (ties: mean of the tied positions)."""

    def rank(x):
        return numpy.array([sum(y < v for y in x) + (sum(y == v for y in x) - 1) / 2 for v in x])

    ra, rb = rank(list(a)), rank(list(b))
    return numpy.corrcoef(ra, rb)[0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_brute_force_with_ties(seed):
    rng = numpy.random.default_rng(seed)
    a, b = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)
    assert lds.spearman(a, b) == pytest.approx(_brute_spearman(a, b))
    assert numpy.isnan(lds.spearman(numpy.ones(5), b[:5]))


def test_lds_of_the_true_linear_model_is_one_and_of_its_negation_minus_one():
    rng = numpy.random.default_rng(0)
    n_train, n_test = 40, 6
    masks = lds.subset_masks(n_train, 20, 0.5, seed=0)
    support = rng.normal(size=(n_test, n_train))
    actual = 3.0 - support @ masks.T  # including a supporter lowers the loss
    numpy.testing.assert_allclose(lds.lds_per_prediction(actual, masks, support), 1.0)
    numpy.testing.assert_allclose(lds.lds_per_prediction(actual, masks, -support), -1.0)
    noise = lds.lds_per_prediction(actual, masks, rng.normal(size=(n_test, n_train)))
    assert numpy.abs(noise).mean() < 0.5


def test_subset_masks():
    masks = lds.subset_masks(10, 4, 0.3, seed=1)
    assert masks.shape == (4, 10) and (masks.sum(axis=1) == 3).all()
    numpy.testing.assert_array_equal(masks, lds.subset_masks(10, 4, 0.3, seed=1))
    with pytest.raises(ConfigError):
        lds.subset_masks(10, 4, 1.0, seed=1)
    with pytest.raises(ConfigError):
        lds.subset_masks(10, 2, 0.5, seed=1)
    with pytest.raises(DataError):
        lds.subset_masks(1, 4, 0.5, seed=1)


def test_summary_and_paired_difference():
    values = numpy.array([0.2, numpy.nan, 0.4, 0.6])
    found = lds.summarize(values)
    assert found.mean == pytest.approx(0.4) and found.n_defined == 3 and found.low <= 0.4 <= found.high
    assert lds.paired_difference(values, numpy.array([0.1, 0.0, numpy.nan, 0.5])).mean == pytest.approx(0.1)
    assert lds.summarize(numpy.array([numpy.nan])).n_defined == 0


def test_string_count_baseline():
    nlp = spacy.blank("en")
    train = [eg.reference for eg in make_examples(nlp)]
    test = Doc(nlp.vocab, words=["Rome", "and", "Paris", "."])
    test.ents = [test.char_span(0, 4, "LOC"), test.char_span(9, 14, "PER")]
    scores = lds.string_count_scores(train, [test], [Segment(0, 0, 1), Segment(0, 2, 3)])
    numpy.testing.assert_array_equal(scores[0], [0, 0, 0, 1, 0])  # "Rome" LOC in sentence 3
    numpy.testing.assert_array_equal(scores[1], 0)  # "Paris" is LOC there, not PER


def test_seed_noise_ceiling():
    actual = numpy.array([[0.0, 1.0, 2.0, 3.0]])
    share, ceiling = lds.seed_noise_ceiling(actual, {0: numpy.array([0.0]), 1: numpy.array([1.0])})
    assert share == 0.0 and ceiling == 1.0
    share, _ = lds.seed_noise_ceiling(actual, {0: numpy.array([2.0])})
    assert share == pytest.approx(min(1.0, (2.0**2 / 2) / actual.var(ddof=1)))


def test_per_sentence():
    scores = numpy.array([[1.0, 2.0, 3.0]])
    numpy.testing.assert_array_equal(lds.per_sentence(scores, [0, 2, 0], 3), [[4.0, 0.0, 2.0]])


def test_component_scores_match_top_k(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    examples = make_examples(nlp)
    influence = nlp.add_pipe("segment_influence", name="lds_scores", config={"k": 3})
    try:
        influence.initialize(lambda: examples, nlp=nlp, show_progress=False)
        doc = nlp("Anna Berg visited Rome .")
        spans = [doc[0:2], doc[3:4]]
        matrix = influence.scores(spans, ["PER", "LOC"])
        assert matrix.shape == (2, len(influence.index))
        for row, (span, label) in enumerate(zip(spans, ["PER", "LOC"])):
            found = influence.explain(span, k=3, label=label)
            for hit in found["supporters"] + found["opposers"]:
                ids = [
                    j
                    for j, m in enumerate(influence.index.metadata)
                    if (m["doc_index"], m["start"], m["end"]) == (hit["doc_index"], hit["start"], hit["end"])
                ]
                assert matrix[row, ids[0]] == pytest.approx(hit["score"], rel=1e-5, abs=1e-6)
            best = max(found["supporters"], key=lambda h: h["score"])["score"]
            assert matrix[row].max() == pytest.approx(best, rel=1e-5)
        with pytest.raises(ConfigError):
            influence.scores(spans, ["PER"])
    finally:
        nlp.remove_pipe("lds_scores")


def test_unknown_attribution_is_refused():
    with pytest.raises(ConfigError):
        lds.attribution_scores("magic", None)  # type: ignore[arg-type]


def test_ranks_of_distinct_values():
    # distinct values rank by their position in sorted order
    for perm in itertools.permutations(range(4)):
        values = numpy.array(perm, dtype=float)
        numpy.testing.assert_array_equal(lds.ranks(values), values)


@pytest.mark.slow
def test_lds_command_end_to_end(tmp_path, trained_tok2vec_nlp):
    import srsly
    from spacy.tokens import DocBin
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp = trained_tok2vec_nlp
    docs = [eg.reference for eg in make_examples(nlp)] * 3
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    DocBin(docs=docs[:5]).to_disk(tmp_path / "dev.spacy")
    nlp.to_disk(tmp_path / "model")
    args = ["lds", str(tmp_path / "model"), str(tmp_path / "train.spacy"), str(tmp_path / "dev.spacy")]
    args += ["--out-dir", str(tmp_path / "subsets"), "--out", str(tmp_path / "lds.json")]
    args += ["--subsets", "3", "--steps", "3", "--seed-repeats", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exception is None, result.output
    found = srsly.read_json(tmp_path / "lds.json")
    assert set(found["methods"]) == {"string-count", "head", "embeddings"}
    assert found["settings"]["n_subsets"] == 3 and found["settings"]["seed_repeats"] == 1
    assert len(found["methods"]["head"]["per_prediction"]) == found["settings"]["n_test_predictions"]
    rerun = CliRunner().invoke(app, args)
    assert rerun.exception is None and rerun.output.count("reusing") == 4
    bad = CliRunner().invoke(
        app, args[:4] + ["--out-dir", str(tmp_path / "s"), "--out", str(tmp_path / "x.json"), "--methods", "magic"]
    )
    assert isinstance(bad.exception, SystemExit) and bad.exit_code == 1 and "magic" in bad.output
