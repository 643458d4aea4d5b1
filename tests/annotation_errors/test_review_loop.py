import numpy
import pytest
import srsly
from typer.testing import CliRunner

from spacy_segment_influence.annotation_errors import ErrorFinder, ReviewLoop, rank, read_decisions
from spacy_segment_influence.annotation_errors.review_loop import PRIOR_WEIGHTS, _fit_logistic
from spacy_segment_influence.cli import app
from spacy_segment_influence.exceptions import ConfigError, CorpusFormatError

from ..conftest import NOISY_DOC, NOISY_SPAN, gold_docs, noisy_docs, write_corpus


@pytest.fixture(scope="module")
def finder(nlp):  # noqa: F811
    return ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))


def penalised_gradient(x, y, w, prior, l2):
    penalty = numpy.full(len(prior), l2)
    penalty[0] = 1e-2
    p = 1 / (1 + numpy.exp(-(x @ w)))
    return x.T @ (p - y) + penalty * (w - prior)


@pytest.mark.parametrize("kind", ["mixed", "separable", "all_accepted", "all_rejected"])
def test_logistic_fit_is_the_penalised_optimum(kind):
    rng = numpy.random.default_rng(3)
    x = numpy.column_stack([numpy.ones(40), rng.normal(size=(40, 3))])
    y = {
        "mixed": (rng.random(40) < 1 / (1 + numpy.exp(-x[:, 1]))).astype(float),
        "separable": (x[:, 2] > 0).astype(float),
        "all_accepted": numpy.ones(40),
        "all_rejected": numpy.zeros(40),
    }[kind]
    weights = _fit_logistic(x, y, PRIOR_WEIGHTS, 0.1)
    assert numpy.isfinite(weights).all()
    numpy.testing.assert_allclose(penalised_gradient(x, y, weights, PRIOR_WEIGHTS, 0.1), 0, atol=1e-6)


def test_without_decisions_the_prior_keeps_the_static_order(finder):
    loop = ReviewLoop(finder)
    static = finder.scores("loss")
    none = numpy.zeros(0, dtype=numpy.int64)
    scores = loop.rerank(static, none, numpy.zeros(0, dtype=bool))
    assert list(numpy.argsort(-scores, kind="stable")) == list(numpy.argsort(-static, kind="stable"))


@pytest.mark.parametrize("similarity", ["gradient", "features"])
def test_design_columns_are_the_nearest_decided_neighbours(finder, similarity):
    loop = ReviewLoop(finder, similarity)
    n = len(finder.candidates)
    indices = numpy.array([0, 2, n - 1])
    labels = numpy.array([True, False, True])
    design = loop.design(finder.scores("loss"), indices, labels)
    # brute force: every pairwise cosine, computed densely
    if similarity == "gradient":
        dense = finder.train_index.scores(finder.grads)  # [C, C]
    else:
        feats = finder.train.batch.features
        means = numpy.stack([numpy.asarray(feats[c.doc_index][c.start : c.end]).mean(0) for c in finder.candidates])
        means /= numpy.linalg.norm(means, axis=1, keepdims=True)
        dense = means @ means.T
    for column, chosen in ((2, indices[labels]), (3, indices[~labels])):
        expected = [max(dense[i, j] for j in chosen if j != i) if set(chosen) - {i} else 0.0 for i in range(n)]
        numpy.testing.assert_allclose(design[:, column], expected, atol=1e-5)


class DenseLoop(ReviewLoop):
    """The loop's re-ranking over a given similarity matrix."""

    def __init__(self, similarity):
        self.dense, self.l2 = similarity, 10.0  # a strong prior: two decisions, the mechanism alone

    def similarities(self, indices):
        return self.dense[:, indices]


def test_an_accepted_error_lifts_its_sibling_and_a_rejected_one_sinks_its_neighbour():
    n = 20
    similarity = numpy.eye(n)
    similarity[0, n - 1] = similarity[n - 1, 0] = 0.95  # the accepted candidate's sibling, ranked last
    similarity[1, 2] = similarity[2, 1] = 0.95  # the rejected candidate's neighbour, ranked third
    static = -numpy.arange(n, dtype=float)
    scores = DenseLoop(similarity).rerank(static, numpy.array([0, 1]), numpy.array([True, False]))
    order = [i for i in numpy.argsort(-scores, kind="stable") if i not in (0, 1)]
    assert order[0] == n - 1 and order[-1] == 2
    assert order[1:-1] == list(range(3, n - 1))  # the others keep their static order


@pytest.mark.parametrize("similarity", ["gradient", "features"])
def test_the_same_error_in_two_sentences_are_nearest_neighbours(nlp, similarity):  # noqa: F811
    docs = noisy_docs(nlp)
    twin = docs[NOISY_DOC].copy()
    twin.user_data["id"] = "demo_train_twin_0"
    finder = ErrorFinder(nlp, docs + [twin], gold_docs(nlp))
    loop = ReviewLoop(finder, similarity)
    first, second = (
        loop.regions.index((docs[NOISY_DOC].user_data["id"], *NOISY_SPAN)),
        loop.regions.index(("demo_train_twin_0", *NOISY_SPAN)),
    )
    column = loop.similarities(numpy.array([first]))[:, 0]
    assert column[second] == pytest.approx(1.0, abs=1e-4)
    assert numpy.delete(column, [first, second]).max() < 0.99


def test_unknown_similarity_is_a_config_error(finder):
    with pytest.raises(ConfigError, match="Unknown similarity"):
        ReviewLoop(finder, "cosine")


def test_decisions_file_and_cli_rerank(nlp, tmp_path):  # noqa: F811
    model = tmp_path / "model"
    nlp.to_disk(model)
    train_path = write_corpus(noisy_docs(nlp), tmp_path / "train.spacy")
    ranking = tmp_path / "ranking.jsonl"
    runner = CliRunner()
    base = ["find-errors", str(model), str(train_path), "--method", "loss", "--folds", "0"]
    result = runner.invoke(app, base + ["--out", str(ranking)])
    assert result.exception is None, result.output
    records = list(srsly.read_jsonl(ranking))
    answers = ["accept", "reject", "ignore"]
    reviewed = [dict(record, answer=answer) for record, answer in zip(records, answers)]
    decisions_path = tmp_path / "reviewed.jsonl"
    srsly.write_jsonl(decisions_path, reviewed)
    decisions = read_decisions(decisions_path)
    region = lambda r: (r["meta"]["doc_id"], r["spans"][0]["token_start"], r["spans"][0]["token_end"] + 1)  # noqa: E731
    assert decisions == {region(records[0]): True, region(records[1]): False}

    reranked = tmp_path / "reranked.jsonl"
    result = runner.invoke(app, base + ["--reviewed", str(decisions_path), "--out", str(reranked)])
    assert result.exception is None, result.output
    assert "2 decisions (1 accepted, 1 rejected)" in result.output
    remaining = list(srsly.read_jsonl(reranked))
    assert len(remaining) == len(records) - 2
    assert {region(r) for r in remaining} == {region(r) for r in records[2:]}
    assert remaining[0]["meta"]["method"] == "loss+review (gradient)"

    srsly.write_jsonl(decisions_path, [dict(records[0], answer=3)])
    with pytest.raises(CorpusFormatError, match="'answer' must be"):
        read_decisions(decisions_path)
    result = runner.invoke(app, base + ["--reviewed", str(decisions_path), "--out", str(reranked)])
    assert isinstance(result.exception, SystemExit) and "'answer' must be" in result.output


def test_rank_leaves_decided_candidates_out(finder):
    loop = ReviewLoop(finder)
    decided = {loop.regions[0]: True, loop.regions[1]: False, ("no_such_sentence", 0, 1): True}
    indices, labels, unknown = loop.positions(decided)
    assert (list(indices), list(labels), unknown) == ([0, 1], [True, False], 1)
    records = rank(finder, "loss", k=0, decisions=decided, review_loop=loop)
    assert len(records) == len(finder.candidates) - 2
