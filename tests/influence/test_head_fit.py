"""The head fit: closed-form objective and gradient against autograd, and the optimum
against torch's L-BFGS through autograd (the fit the project used before)."""

from pathlib import Path

import numpy
import pytest
import torch
from spacy.training import Example
from thinc.api import fix_random_seed

from bench.head_fit import lbfgs_refit
from spacy_segment_influence.corpus import read_jsonl_docs
from spacy_segment_influence.influence.head_fisher import sampled_fisher
from spacy_segment_influence.influence.head_fit import HeadPasses, fit_head, head_objective
from spacy_segment_influence.influence.hessian import head_hessian
from spacy_segment_influence.influence.segments import mean_nll
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import LabelledBatch, labelled_batch

from ..conftest import make_examples, tok2vec_nlp, train

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"
L2 = 1e-3


@pytest.fixture(scope="module")
def demo():
    """A crf_ner trained a little on 60 demo sentences, and their features; two sentences
    lose some labels (-1), so that the clamped chains run too. (The reference, L-BFGS
    through autograd, costs ~0.4 CPU-seconds per sentence.)"""
    nlp = tok2vec_nlp()
    docs = list(read_jsonl_docs(DEMO / "train_corrected.jsonl", nlp.vocab))[:60]
    examples = [Example(doc.copy(), doc) for doc in docs]
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, losses={})
    ner = nlp.get_pipe("crf_ner")
    batch = labelled_batch(nlp, "crf_ner", docs)
    tags = [list(t) for t in batch.tags]
    longer = [i for i, t in enumerate(tags) if len(t) >= 5]
    tags[longer[0]][1:3] = [-1, -1]
    tags[longer[1]] = [-1] * len(tags[longer[1]])
    return ner, LabelledBatch(batch.features, tags)


def reference_objective(ner, batch):
    data_nll, _ = mean_nll(ner, batch)
    return lambda theta: data_nll(theta) + 0.5 * L2 * (theta * theta).sum()


def autograd_gradient(objective, theta):
    theta = theta.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(objective(theta), theta)
    return float(objective(theta.detach())), gradient


def test_objective_and_gradient_match_autograd(demo):
    ner, batch = demo
    objective = reference_objective(ner, batch)
    generator = torch.Generator().manual_seed(0)
    trained = bridge.flat_head(ner)
    for theta in (trained, trained + 0.5 * torch.randn(len(trained), generator=generator, dtype=torch.float64)):
        value, gradient = head_objective(ner, batch, theta, L2, max_tokens=200)  # many chunks
        expected_value, expected = autograd_gradient(objective, theta)
        assert value == pytest.approx(expected_value, rel=1e-12)
        numpy.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=0, atol=1e-12)
        value32, gradient32 = head_objective(ner, batch, theta, L2, dtype=torch.float32)
        assert value32 == pytest.approx(expected_value, rel=1e-5)
        numpy.testing.assert_allclose(gradient32.numpy(), expected.numpy(), rtol=0, atol=1e-4)


def test_hessian_vector_products_match_autograd(demo):
    """H v from one dual-number pass through the closed-form gradient, against
    forward-over-reverse autograd of the reference objective (the partially labelled
    sentences' clamped chains included), in float64 and, to float32's precision, float32."""
    ner, batch = demo
    objective = reference_objective(ner, batch)
    generator = torch.Generator().manual_seed(1)
    theta = bridge.flat_head(ner) + 0.1 * torch.randn(
        len(bridge.flat_head(ner)), generator=generator, dtype=torch.float64
    )
    passes = HeadPasses(ner, batch, L2, max_tokens=200)  # many chunks
    for direction in (torch.randn(len(theta), generator=generator, dtype=torch.float64), torch.eye(len(theta))[5]):
        with torch.no_grad():
            expected = torch.func.jvp(torch.func.grad(objective), (theta,), (direction,))[1]
        value, gradient, product = passes(theta, torch.float64, direction)
        expected_value, expected_gradient = autograd_gradient(objective, theta)
        assert value == pytest.approx(expected_value, rel=1e-12)
        numpy.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(), rtol=0, atol=1e-12)
        scale = float(expected.abs().max())
        assert scale > 1e-3  # not a vanishing product
        numpy.testing.assert_allclose(product.numpy(), expected.numpy(), rtol=0, atol=1e-10 * scale)
        _, _, product32 = passes(theta, torch.float32, direction)
        numpy.testing.assert_allclose(product32.numpy(), expected.numpy(), rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def reference(demo):
    """L-BFGS from zeros, as the surrogate's fit was, its J and its gradient."""
    ner, batch = demo
    objective = reference_objective(ner, batch)
    theta = lbfgs_refit(objective, torch.zeros_like(bridge.flat_head(ner)))
    return (theta, *autograd_gradient(objective, theta))


@pytest.mark.parametrize("start", ["trained", "zeros"])
def test_fit_reaches_the_lbfgs_optimum(demo, reference, start):
    """From the trained head (validate) and from zeros (the surrogate): the optimum
    L-BFGS through autograd finds, to L-BFGS's precision, with a smaller gradient, in
    a few Hessians."""
    ner, batch = demo
    objective = reference_objective(ner, batch)
    theta0 = bridge.flat_head(ner) if start == "trained" else None
    fit = fit_head(ner, batch, L2, theta0)
    reference_theta, reference_value, reference_gradient = reference
    value, gradient = autograd_gradient(objective, fit.theta)
    assert fit.objective == pytest.approx(value, rel=1e-12)
    assert fit.gradient_max == pytest.approx(float(gradient.abs().max()), rel=1e-3, abs=1e-12)
    assert float(gradient.abs().max()) < 1e-8
    assert float(gradient.abs().max()) <= float(reference_gradient.abs().max())
    assert value <= reference_value + 1e-12 and value == pytest.approx(reference_value, abs=1e-8)
    # l2-strongly convex near the optimum: |theta - theta*| <= |grad(theta)| / l2
    bound = float(torch.linalg.norm(reference_gradient)) / L2
    assert float(torch.linalg.norm(fit.theta - reference_theta)) <= 1.5 * bound + 1e-8
    numpy.testing.assert_allclose(fit.theta.numpy(), reference_theta.numpy(), rtol=0, atol=1e-3)
    assert 0 < fit.passes < 200 and fit.hessians == 1


def test_the_trained_head_is_refit_not_kept():
    """A head trained for a few steps is not the optimum; the fit moves it there."""
    nlp = tok2vec_nlp()
    nlp = train(nlp, make_examples(nlp), steps=5)
    ner = nlp.get_pipe("crf_ner")
    batch = labelled_batch(nlp, "crf_ner", [eg.reference for eg in make_examples(nlp)])
    start = bridge.flat_head(ner)
    _, gradient = head_objective(ner, batch, start, L2)
    assert float(gradient.abs().max()) > 1e-3
    fit = fit_head(ner, batch, L2, start)
    assert fit.gradient_max < 1e-8 and fit.hessians >= 1


def test_sampled_fisher_is_the_hessian_in_expectation(demo):
    """On fully labelled sentences the Hessian of the mean NLL is Cov[phi]: the sampled
    Fisher, averaged over many draws, converges to the closed-form Hessian."""
    ner, batch = demo
    short = [i for i, t in enumerate(batch.tags) if 2 <= len(t) <= 6 and min(t) >= 0][:4]
    part = LabelledBatch([batch.features[i] for i in short], [batch.tags[i] for i in short])
    theta = bridge.flat_head(ner)
    exact = torch.as_tensor(head_hessian(ner, part, flat=theta))
    passes = HeadPasses(ner, part, L2)
    draws = [
        sampled_fisher(passes.chunks, passes.layout, passes.constraints, theta, passes.n_sentences, generator, 500)
        for generator in (torch.Generator().manual_seed(seed) for seed in range(4))
    ]
    estimate = torch.stack(draws).mean(dim=0)
    scale = float(exact.abs().max())
    assert scale > 1e-2
    assert float((estimate - exact).abs().max()) < 0.05 * scale
    assert float((draws[0] - draws[1]).abs().max()) > 1e-4 * scale  # random draws, not a fixed matrix
