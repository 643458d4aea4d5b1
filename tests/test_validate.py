from pathlib import Path

import numpy
import pytest
from spacy.training import Example
from thinc.api import fix_random_seed

from spacy_segment_influence.corpus import read_jsonl_docs
from spacy_segment_influence.validate import correlations, validate

from .conftest import tok2vec_nlp

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


def test_correlations_against_hand_computed_values():
    x = numpy.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert correlations(x, 2 * x + 1)["pearson"] == pytest.approx(1.0)
    assert correlations(x, -(x**3))["spearman"] == pytest.approx(-1.0)
    # one discordant pair out of 10: tau = (9 - 1) / 10
    assert correlations(x, numpy.array([1.0, 3.0, 2.0, 4.0, 5.0]))["kendall"] == pytest.approx(0.8)
    assert correlations(x, numpy.array([1.0, -2.0, 3.0, 4.0, -5.0]))["sign_agreement"] == pytest.approx(0.6)


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
    assert set(result["methods"]) == {"exact", "kfac", "identity", "token"}
    assert result["settings"]["max_retrain_gradient"] < 1e-6
