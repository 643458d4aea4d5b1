"""Word-embedding gradients of a transformer encoder against finite differences of the
segment loss through the pipeline's own predict path, on a tiny random BERT."""

import numpy
import pytest
import srsly
import torch

from spacy_segment_influence.influence import encoder_influence as ei
from spacy_segment_influence.influence import wordpiece_gradients as wp
from spacy_segment_influence.influence.segments import Segment, segment_losses
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import labelled_batch

from ..conftest import make_examples, train, trf_nlp


@pytest.fixture(scope="module")
def setup(tiny_bert_dir):
    nlp = train(trf_nlp(tiny_bert_dir), make_examples(trf_nlp(tiny_bert_dir)), steps=5)
    ner = bridge.crf_component(nlp, "crf_ner")
    docs = [example.reference for example in make_examples(nlp)]
    segments = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    segments += [Segment(4, 1, 3), Segment(0, 0, len(docs[0]))]  # an all-O span and a whole sentence
    return nlp, ner, docs, segments


def _loss(nlp, ner, docs, segment) -> float:
    return float(segment_losses(ner, labelled_batch(nlp, "crf_ner", docs), [segment])[0])


def test_matches_finite_differences_of_the_segment_loss(setup):
    nlp, ner, docs, segments = setup
    # batch_size 3: segments of one doc in different batches, and copies of one doc in a batch
    found = wp.wordpiece_gradients(nlp, ner, docs, segments, batch_size=3)
    table = wp._torch_transformer(wp.listened_transformer(nlp, ner).model).get_input_embeddings().weight
    assert found.n_rows == table.shape[0] and (found.rows[:, 0] == found.ids.astype(numpy.int64)).all()
    rng = numpy.random.default_rng(0)
    eps = 1e-3
    for k in (0, 1, len(segments) - 2, len(segments) - 1):  # two of one doc, all-O, a whole sentence
        segment = segments[k]
        direction = rng.normal(size=tuple(table.shape)).astype("float32")
        entries = slice(found.offsets[k], found.offsets[k + 1])
        predicted = float((found.vectors[entries] * direction[found.rows[entries, 0]]).sum())
        original = table.data.clone()
        losses = []
        for sign in (1.0, -1.0):
            table.data = original + sign * eps * torch.from_numpy(direction)
            losses.append(_loss(nlp, ner, docs, segment))
        table.data = original
        assert predicted == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=2e-2, abs=2e-3), segment


def test_embedding_gradients_of_dispatches_and_restores_the_model(setup):
    nlp, ner, docs, segments = setup
    module = wp._torch_transformer(wp.listened_transformer(nlp, ner).model)
    module.train()
    flags = [p.requires_grad for p in module.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    first = ei.embedding_gradients_of(nlp, "crf_ner", docs, segments)
    second = ei.embedding_gradients_of(nlp, "crf_ner", docs, segments)
    numpy.testing.assert_array_equal(first.vectors, second.vectors)  # no dropout
    assert module.training and [p.requires_grad for p in module.parameters()] == flags
    for p, before in zip(module.parameters(), grads):  # the weights' gradients are not touched
        assert (p.grad is None and before is None) or torch.equal(p.grad, before)
    ei.require_embedding_tables(nlp, "crf_ner")
    assert not ei.has_hash_embeddings(nlp, "crf_ner")  # pretrained: the head, not embeddings, is the tip


def test_index_and_explain_a_transformer_pipeline_with_embeddings(setup, tmp_path):
    import spacy
    from spacy.tokens import DocBin
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp, ner, docs, _ = setup
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    nlp.to_disk(tmp_path / "model")
    args = ["index", str(tmp_path / "model"), str(tmp_path / "train.spacy"), str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--layers", "embeddings", "--inits", "2"])
    assert result.exception is None, result.output
    loaded = spacy.load(tmp_path / "out")
    doc = loaded("Anna Berg visited Paris .")
    assert doc._.influences and all(record["supporters"] for record in doc._.influences)
    explainer = loaded.get_pipe("segment_influence")._encoder
    data = explainer.to_bytes()
    assert [set(own) for own in srsly.msgpack_loads(data)["own_components"]] == [{"crf_ner"}]  # encoder once
    copy = ei.EncoderExplainer.from_bytes(data)
    queries = [Segment(0, 0, 2), Segment(0, 3, 4)]
    labellings = [[doc[0:2], doc[3:4]]]
    numpy.testing.assert_array_equal(
        copy.scores([doc], labellings, queries), explainer.scores([doc], labellings, queries)
    )
