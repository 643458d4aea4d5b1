"""The CRF surrogate explains a pipeline with spaCy's built-in `ner`, trained here."""

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Span
from thinc.api import Config

from spacy_segment_influence.exceptions import PipelineError
from spacy_segment_influence.fidelity.validate import validate
from spacy_segment_influence.influence.segments import mean_nll
from spacy_segment_influence.influence.surrogate import agreement, indexed_surrogate
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import labelled_batch

from .conftest import TOK2VEC_BLOCK, make_examples, train

BUILTIN_CONFIG = (
    """
[nlp]
lang = "en"
pipeline = ["tok2vec", "ner"]

[components]

"""
    + TOK2VEC_BLOCK
    + """
[components.ner]
factory = "ner"

[components.ner.model]
@architectures = "spacy.TransitionBasedParser.v2"
state_type = "ner"
extra_state_tokens = false
hidden_width = 16
maxout_pieces = 2
use_upper = true

[components.ner.model.tok2vec]
@architectures = "spacy.Tok2VecListener.v1"
width = 16
upstream = "tok2vec"
"""
)

TEXTS = ["Peter Smith lives in New York City .", "Anna Berg visited Rome .", "Nothing to see here ."]


def builtin_nlp(inner_tok2vec: bool = False):
    config = Config().from_str(BUILTIN_CONFIG)
    if inner_tok2vec:  # the ner's own tok2vec, no shared one
        config["nlp"]["pipeline"] = ["ner"]
        del config["components"]["tok2vec"]
        config["components"]["ner"]["model"]["tok2vec"] = {
            "@architectures": "spacy.HashEmbedCNN.v2",
            "pretrained_vectors": None,
            "width": 16,
            "depth": 1,
            "embed_size": 300,
            "window_size": 1,
            "maxout_pieces": 2,
            "subword_features": True,
        }
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    return train(nlp, make_examples(nlp), steps=150)


@pytest.fixture(scope="module")
def explained():
    nlp = builtin_nlp()
    before = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(TEXTS)]
    weights = bridge.fingerprint(nlp, "ner")
    component = nlp.add_pipe("segment_influence", config={"ner": "ner", "k": 3, "curvature": "exact"})
    component.initialize(lambda: make_examples(nlp), nlp=nlp, show_progress=False)
    return nlp, before, weights


def test_the_pipeline_is_left_alone(explained):
    nlp, before, weights = explained
    assert bridge.fingerprint(nlp, "ner") == weights
    assert [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(TEXTS)] == before


def test_the_surrogate_is_the_optimum_of_its_objective_on_the_listener_features(explained):
    nlp, _, _ = explained
    component = nlp.get_pipe("segment_influence")
    surrogate = component.surrogate
    assert surrogate is not None and set(surrogate.labels) == set(nlp.get_pipe("ner").labels)
    docs = [eg.reference for eg in make_examples(nlp)]
    batch = labelled_batch(nlp, "ner", docs, ner=surrogate)
    for doc, features in zip(nlp.pipe(eg.text for eg in docs), batch.features):  # what the ner's listener reads
        numpy.testing.assert_allclose(features, doc.tensor, rtol=1e-6)
    data_nll, _ = mean_nll(surrogate, batch)
    theta = bridge.flat_head(surrogate).requires_grad_()
    objective = data_nll(theta) + 0.5 * component.cfg["damping"] * (theta * theta).sum()
    (gradient,) = torch.autograd.grad(objective, theta)
    assert float(gradient.abs().max()) < 1e-4  # stored in float32


def test_pipeline_entities_are_explained_and_flagged(explained):
    nlp, _, _ = explained
    doc = nlp(TEXTS[0])
    assert len(doc._.influences) == len(doc.ents) > 0
    for record, ent in zip(doc._.influences, doc.ents):
        assert (record["start"], record["end"], record["label"]) == (ent.start, ent.end, ent.label_)
        assert isinstance(record["surrogate_agrees"], bool) and 0.0 <= record["probability"] <= 1.0
        assert record["supporters"]
    assert list(doc.spans["ent_scores"].attrs["scores"]) == pytest.approx([r["probability"] for r in doc._.influences])
    # an entity the surrogate would never predict: still explained, and flagged
    influence = nlp.get_pipe("segment_influence")
    with nlp.select_pipes(disable=["segment_influence"]):
        doc = nlp("lives in here .")
    doc.ents = [Span(doc, 0, 3, label="PER")]
    record = influence(doc)._.influences[0]
    assert record["surrogate_agrees"] is False
    assert record["probability"] < 0.5 and record["supporters"] and record["opposers"]


def test_agreement_scores_the_pipeline_as_spacy_does(explained):
    nlp, _, _ = explained
    examples = make_examples(nlp)
    found = agreement(nlp, "ner", nlp.get_pipe("segment_influence").surrogate, [eg.reference for eg in examples])
    with nlp.select_pipes(enable=["tok2vec", "ner"]):
        assert found["pipeline_f"] == pytest.approx(nlp.evaluate(examples)["ents_f"])
    assert 0.0 <= found["surrogate_f"] <= 1.0 and 0.0 <= found["pipeline_correct_recalled"] <= 1.0


def _summary(records):
    return [
        (
            r["start"],
            r["end"],
            r["label"],
            r["surrogate_agrees"],
            [(h["doc_index"], h["start"]) for h in r["supporters"]],
        )
        for r in records
    ]


def test_round_trips(explained, tmp_path):
    nlp, _, _ = explained
    expected = nlp(TEXTS[1])._.influences
    nlp.to_disk(tmp_path / "model")
    from_bytes = spacy.util.load_model_from_config(nlp.config, auto_fill=True)
    from_bytes.from_bytes(nlp.to_bytes())
    for loaded in (spacy.load(tmp_path / "model"), from_bytes):
        found = loaded(TEXTS[1])._.influences
        assert _summary(found) == _summary(expected)
        assert [r["probability"] for r in found] == pytest.approx([r["probability"] for r in expected])


def test_a_ner_with_its_own_tok2vec():
    nlp = builtin_nlp(inner_tok2vec=True)
    with pytest.raises(PipelineError, match="no segment_influence component has a CRF surrogate"):
        indexed_surrogate(nlp, "ner")
    component = nlp.add_pipe("segment_influence", config={"k": 2})  # finds the ner by itself
    assert component.cfg["ner"] == "ner"
    component.initialize(lambda: make_examples(nlp), nlp=nlp, show_progress=False)
    assert component.surrogate.head.n_features == 16
    assert indexed_surrogate(nlp, "ner") is component.surrogate
    doc = nlp(TEXTS[0])
    assert all("surrogate_agrees" in record for record in doc._.influences)


@pytest.mark.slow
def test_cli_index_then_validate_a_builtin_ner_pipeline(explained, tmp_path):
    from spacy.tokens import DocBin
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp, _, _ = explained
    corpus = tmp_path / "train.spacy"
    DocBin(docs=[eg.reference for eg in make_examples(nlp)], store_user_data=True).to_disk(corpus)
    nlp.to_disk(tmp_path / "model")  # `index` replaces its segment_influence
    result = CliRunner().invoke(
        app, ["index", str(tmp_path / "model"), str(corpus), str(tmp_path / "indexed"), "--dev", str(corpus)]
    )
    assert result.exit_code == 0, result.output
    assert "CRF surrogate of 'ner'" in result.output
    indexed = spacy.load(tmp_path / "indexed")  # validate on the stored surrogate (what `validate --ner ner` runs)
    surrogate = indexed_surrogate(indexed, "ner")
    docs = [eg.reference for eg in make_examples(indexed)]
    found = validate(indexed, docs, docs, ner_name="ner", ner=surrogate, n_segments=2, pairs=10, show_progress=False)
    assert found["settings"]["n_train"] == len(docs) and "exact" in found["methods"]
