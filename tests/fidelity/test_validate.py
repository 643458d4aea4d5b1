from pathlib import Path

import numpy
import pytest
import torch
from spacy.training import Example
from thinc.api import fix_random_seed

from bench.fidelity_prototypes import kronecker_diagonal, kronecker_eigen_solve
from spacy_segment_influence import validate
from spacy_segment_influence.corpus import read_jsonl_docs
from spacy_segment_influence.fidelity.fidelity_metrics import METHODS, correlations
from spacy_segment_influence.influence.hessian import curvature_along, head_hessian, segment_hessian
from spacy_segment_influence.influence.segments import Segment, mean_nll
from spacy_segment_influence.ner import bridge, crf
from spacy_segment_influence.ner.bridge import labelled_batch

from ..conftest import make_examples, tok2vec_nlp, train

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"


def test_correlations_against_hand_computed_values():
    x = numpy.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert correlations(x, 2 * x + 1)["pearson"] == pytest.approx(1.0)
    assert correlations(x, -(x**3))["spearman"] == pytest.approx(-1.0)
    # one discordant pair out of 10: tau = (9 - 1) / 10
    assert correlations(x, numpy.array([1.0, 3.0, 2.0, 4.0, 5.0]))["kendall"] == pytest.approx(0.8)
    assert correlations(x, numpy.array([1.0, -2.0, 3.0, 4.0, -5.0]))["sign_agreement"] == pytest.approx(0.6)


def test_segment_hessian_matches_autograd():
    """Hessian of one segment's conditional loss, closed form vs torch.func.hessian, for an
    entity in the middle, one at the sentence start, and an all-O span."""
    nlp = tok2vec_nlp()
    nlp = train(nlp, make_examples(nlp), steps=10)
    ner = nlp.get_pipe("crf_ner")
    batch = labelled_batch(nlp, "crf_ner", [eg.reference for eg in make_examples(nlp)])
    theta = bridge.flat_head(ner)
    theta = theta + 0.3 * torch.randn(len(theta), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for segment in (Segment(0, 4, 7), Segment(1, 0, 1), Segment(4, 1, 3)):
        features = [torch.as_tensor(batch.features[segment.doc_index], dtype=torch.float64)]
        tags = torch.tensor([batch.tags[segment.doc_index]])
        start, end = torch.tensor([segment.start]), torch.tensor([segment.end])

        def loss(flat, features=features, tags=tags, start=start, end=end):
            return crf.segment_nll(bridge.chain_at(ner, features, flat), tags, start, end, ner.constraints).sum()

        reference = torch.func.hessian(loss)(theta).numpy()
        numpy.testing.assert_allclose(
            segment_hessian(ner, batch, segment, theta), reference, rtol=0, atol=1e-10 * numpy.abs(reference).max()
        )


def test_curvature_along_matches_closed_form_hessian():
    """d^T H d by forward-over-reverse autograd equals the closed-form mean-NLL Hessian's,
    at the trained head and at a random point, for random directions."""
    nlp = tok2vec_nlp()
    nlp = train(nlp, make_examples(nlp), steps=10)
    ner = nlp.get_pipe("crf_ner")
    batch = labelled_batch(nlp, "crf_ner", [eg.reference for eg in make_examples(nlp)])
    objective, _ = mean_nll(ner, batch)
    generator = torch.Generator().manual_seed(2)
    trained = bridge.flat_head(ner)
    for theta in (trained, trained + 0.5 * torch.randn(len(trained), generator=generator, dtype=torch.float64)):
        hessian = head_hessian(ner, batch, flat=theta)
        for _ in range(3):
            direction = torch.randn(len(theta), generator=generator, dtype=torch.float64)
            expected = float(direction.numpy() @ hessian @ direction.numpy())
            assert curvature_along(objective, theta, direction) == pytest.approx(expected, rel=1e-8)


def test_kronecker_helpers_against_dense_kron():
    """EK-FAC's pieces: the diagonal of H in the Kronecker eigenbasis and the solve with
    a (corrected) eigenvalue grid, against numpy.kron built densely."""
    rng = numpy.random.default_rng(0)
    n_tags, width = 3, 4
    basis_b = numpy.linalg.qr(rng.normal(size=(n_tags, n_tags)))[0]
    basis_a = numpy.linalg.qr(rng.normal(size=(width, width)))[0]
    root = rng.normal(size=(n_tags * width, n_tags * width))
    hessian = root @ root.T
    basis = numpy.kron(basis_b, basis_a)
    expected = numpy.diag(basis.T @ hessian @ basis).reshape(n_tags, width)
    block = hessian.reshape(n_tags, width, n_tags, width)
    numpy.testing.assert_allclose(kronecker_diagonal(block, basis_b, basis_a), expected)
    eigenvalues = rng.uniform(0.5, 2.0, size=(n_tags, width))
    dense = basis @ numpy.diag(eigenvalues.reshape(-1)) @ basis.T
    vectors = rng.normal(size=(5, n_tags * width))
    numpy.testing.assert_allclose(
        kronecker_eigen_solve(vectors, basis_b, basis_a, eigenvalues),
        numpy.linalg.solve(dense, vectors.T).T,
        atol=1e-12,
    )


@pytest.mark.slow
def test_exact_influence_tracks_retraining():
    """Small end-to-end fidelity run: exact-curvature predictions must track retraining."""
    nlp = tok2vec_nlp()
    train_docs = list(read_jsonl_docs(DEMO / "train_corrected.jsonl", nlp.vocab))[:300]
    dev_docs = list(read_jsonl_docs(DEMO / "dev.jsonl", nlp.vocab))[:40]
    examples = [Example(doc.copy(), doc) for doc in train_docs]
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(15):
        for first in range(0, len(examples), 50):
            nlp.update(examples[first : first + 50], sgd=optimizer, losses={})
    result = validate(nlp, train_docs[:150], dev_docs, n_segments=6, pairs=200, seed=0, show_progress=False)
    exact = result["methods"]["exact"]
    assert exact["top"]["spearman"] >= 0.95, exact
    assert exact["random"]["spearman"] >= 0.95, exact
    assert exact["top"]["sign_agreement"] >= 0.9, exact
    # the leverage-corrected estimate tracks the top pairs' magnitudes too (first order: ~0.78)
    refined = result["methods"]["refined"]
    assert refined["top"]["pearson"] >= 0.95 and refined["top"]["spearman"] >= 0.97, refined
    assert set(result["methods"]) == set(METHODS)  # each explained by `validate --help`
    assert result["settings"]["max_retrain_gradient"] < 1e-6
    # the loss at the retrained parameters is what is correlated, not a rewording of the prediction
    assert result["diagnostics"]["top"]["pearson_predicted_actual"] == pytest.approx(exact["top"]["pearson"])
    # a curvature ratio, positive and finite for every retrained segment
    for group in ("top", "random"):
        drops = result["diagnostics"][group]
        assert 0 < drops["rest_curvature_drop_median"] <= drops["rest_curvature_drop_max"] < numpy.inf, drops


def test_cli_validate_names_the_plot_extra_and_warns_of_its_cost(tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "matplotlib" else find_spec(name, *args)
    )
    corpora = [tmp_path / "train.spacy", tmp_path / "dev.spacy"]
    for path in corpora:
        path.write_bytes(b"")
    args = ["validate", str(tmp_path), *map(str, corpora), "--out", str(tmp_path / "metrics.json")]
    result = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "fig.png")])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert result.stderr == "Error: --plot needs matplotlib: pip install spacy-segment-influence[plot]\n"
    # the estimate comes before any work (here loading tmp_path, which is no pipeline, fails)
    result = CliRunner().invoke(app, [*args, "--n-train", "100", "--n-segments", "20"])
    assert "retrains it 40 times: about 20 min" in result.stderr and result.exception is not None
