import subprocess
import sys
import warnings

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example
from thinc.api import xp2torch

from spacy_segment_influence import MisalignedEntityWarning
from spacy_segment_influence.ner import crf

from ..conftest import TRAIN_DATA, make_examples, tok2vec_nlp, train, trf_nlp


def ents(doc):
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def test_factories_registered_by_entry_points():
    # A fresh interpreter that never imports the package must still find everything.
    code = (
        "import spacy; from spacy.util import registry;"
        "registry.architectures.get('spacy-segment-influence.CRFTagger.v1');"
        "print(registry.misc.get('spacy-segment-influence.packaged_encoder.v1')());"
        "nlp = spacy.blank('en'); nlp.add_pipe('crf_ner'); print(nlp.pipe_names)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "['crf_ner']" in out.stdout
    assert "model" in out.stdout.splitlines()[0]


@pytest.mark.parametrize("scheme", ["BILUO", "BIO"])
def test_learns_training_data(scheme):
    nlp = tok2vec_nlp(scheme)
    train(nlp, make_examples(nlp), steps=60)
    ner = nlp.get_pipe("crf_ner")
    assert ner.labels == ("LOC", "MISC", "ORG", "PER")  # found in the training data, sorted
    prefixes = ["B", "I", "L", "U"] if scheme == "BILUO" else ["B", "I"]
    assert ner.tags == ["O"] + [f"{p}-{label}" for label in ner.labels for p in prefixes]
    for text, gold in TRAIN_DATA:
        assert ents(nlp(text)) == gold
    # spaCy's scorer reads the component's doc.ents: every type found, none invented
    scores = nlp.evaluate(make_examples(nlp))
    assert scores["ents_f"] == 1.0
    assert {label: s["f"] for label, s in scores["ents_per_type"].items()} == {label: 1.0 for label in ner.labels}


def test_update_gradient_is_marginals_minus_gold(trained_tok2vec_nlp):
    """d NLL / d emissions = p(y_t | x) - p(y_t | y_gold, x) (closed form)."""
    nlp = trained_tok2vec_nlp
    ner = nlp.get_pipe("crf_ner")
    examples = make_examples(nlp)
    docs = [nlp.get_pipe("tok2vec")(eg.predicted) for eg in examples]
    emissions = ner.model.predict(docs)
    _, d_emissions = ner.get_loss(examples, emissions)
    for eg, em, d_em in zip(examples, emissions, d_emissions):
        scores = ner.chain_scores([xp2torch(em).double()])
        gold = torch.tensor([ner.gold_tag_ids(eg)])
        _, unary, _ = crf.marginals(scores, ner.constraints)
        _, gold_unary, _ = crf.marginals(scores, ner.constraints, crf.gold_mask(gold, len(ner.tags)))
        numpy.testing.assert_allclose(d_em, (unary - gold_unary)[0].detach().numpy(), atol=1e-4)


def test_update_applies_the_training_dropout():
    """`[training] dropout` must reach the component's own Dropout layers, as spaCy's
    pipes do with set_dropout_rate; the rate in force during update is recorded."""
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("crf_ner")  # default model: its own tok2vec, with Dropout layers
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    seen = []
    for node in ner.model.walk():
        if "dropout_rate" in node.attrs:
            forward = node._func

            def spy(model, X, is_train, forward=forward):
                seen.append(model.attrs["dropout_rate"])
                return forward(model, X, is_train)

            node._func = spy
    nlp.update(examples, drop=0.37)
    assert seen and all(rate == 0.37 for rate in seen)


def test_partial_annotation_marginalises():
    nlp = tok2vec_nlp()
    examples = make_examples(nlp)
    train(nlp, examples, steps=5)
    ner = nlp.get_pipe("crf_ner")
    doc = nlp.make_doc("Peter Smith lives in New York City .")
    partial = Example.from_dict(doc, {"entities": ["B-PER", "L-PER", "-", "O", "-", "-", "-", "O"]})
    ids = ner.gold_tag_ids(partial)
    assert ids[2] == -1 and ids[4:7] == [-1, -1, -1] and ids[0] == ner.tags.index("B-PER")
    full = Example.from_dict(doc, {"entities": [(0, 11, "PER"), (21, 34, "LOC")]})
    docs = [nlp.get_pipe("tok2vec")(nlp.make_doc(doc.text))]
    emissions = ner.model.predict(docs)
    partial_loss, _ = ner.get_loss([partial], emissions)
    full_loss, _ = ner.get_loss([full], emissions)
    assert 0 < partial_loss < full_loss  # fewer constraints, more probable


def test_empty_docs_and_batches(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    assert nlp("").ents == ()
    docs = list(nlp.pipe(["", "Peter Smith lives in New York City .", ""]))
    assert ents(docs[1]) == TRAIN_DATA[0][1]
    nlp.update([Example.from_dict(nlp.make_doc(""), {"entities": []})], losses={})


def test_unknown_labels_never_crash_prediction(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    doc = nlp.make_doc("Peter Smith lives in New York City .")
    doc.ents = [Span(doc, 0, 1, label="PRODUCT")]  # a label the model has never seen
    doc = nlp(doc)
    assert ents(doc) == TRAIN_DATA[0][1]


def test_unknown_gold_label_is_a_clear_error(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    doc = nlp.make_doc("Apple bought IBM")
    doc.user_data["id"] = "doc-7"
    eg = Example.from_dict(doc, {"entities": [(0, 5, "COMPANY")]})
    with pytest.raises(ValueError, match=r"doc 'doc-7'.*'COMPANY'"):
        nlp.get_pipe("crf_ner").gold_tag_ids(eg)


def test_misaligned_entity_warns_once_and_marginalises(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    ner = nlp.get_pipe("crf_ner")
    ner._warned_misaligned = False
    reference = Doc(nlp.vocab, words=["Ala", ".", "is", "nice"], spaces=[False, True, True, False])
    reference.ents = [Span(reference, 0, 1, label="LOC")]
    eg = Example(nlp.make_doc("Ala. is nice"), reference)
    with pytest.warns(MisalignedEntityWarning, match="'Ala' \\(LOC"):
        ids = ner.gold_tag_ids(eg)
    assert ids[0] == -1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ner.gold_tag_ids(eg)


def test_cannot_add_label_after_sizing(trained_tok2vec_nlp):
    with pytest.raises(ValueError, match="after the model was sized"):
        trained_tok2vec_nlp.get_pipe("crf_ner").add_label("EVENT")


def test_bad_scheme():
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        nlp.add_pipe("crf_ner", config={"scheme": "IOE"})


def test_serialization_round_trips(trained_tok2vec_nlp, tmp_path):
    nlp = trained_tok2vec_nlp
    texts = [text for text, _ in TRAIN_DATA]
    expected = [ents(doc) for doc in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "model")
    loaded = spacy.load(tmp_path / "model")
    assert [ents(doc) for doc in loaded.pipe(texts)] == expected
    from_bytes = tok2vec_nlp().from_bytes(nlp.to_bytes())
    assert [ents(doc) for doc in from_bytes.pipe(texts)] == expected
    head, loaded_head = nlp.get_pipe("crf_ner").head, loaded.get_pipe("crf_ner").head
    for name, param in head.state_dict().items():
        assert torch.equal(param, loaded_head.state_dict()[name]), name
    # predictions survive DocBin
    docs = list(DocBin(docs=list(loaded.pipe(texts))).get_docs(loaded.vocab))
    assert [ents(doc) for doc in docs] == expected


def test_transformer_listener_long_docs(tiny_bert_dir, tmp_path):
    nlp = trf_nlp(tiny_bert_dir)
    train(nlp, make_examples(nlp), steps=30)
    long_text = " ".join(text for text, _ in TRAIN_DATA * 6)  # far beyond the 16-piece window
    doc = nlp(long_text)
    assert len(doc) > 100
    assert all(ent.label_ in {"PER", "LOC", "ORG", "MISC"} for ent in doc.ents)
    nlp.to_disk(tmp_path / "trf")
    loaded = spacy.load(tmp_path / "trf")
    assert ents(loaded(long_text)) == ents(doc)
