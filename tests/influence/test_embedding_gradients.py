"""Embedding-table gradients through the encoder against thinc's own dense backprop."""

import numpy
import pytest
from thinc.api import set_dropout_rate

from spacy_segment_influence.influence import embedding_gradients as eg
from spacy_segment_influence.influence.segments import Segment, segment_gradients, segment_windows
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import labelled_batch

from ..conftest import make_examples


def _dense_reference(nlp, ner, docs, grads, windows, segments):
    """Each segment's gradient w.r.t. every hash-embedding table, by thinc's backprop
    into the tables' own gradients (one backward pass per segment)."""
    encoder = eg.upstream_encoder(nlp, ner)
    tables = eg.hash_embed_tables(encoder)
    weight = ner.head.weight.detach().numpy()
    rows = []
    for k, segment in enumerate(segments):
        for node in encoder.walk():
            for name in node.param_names:
                if node.has_grad(name):
                    node.set_grad(name, node.ops.alloc(node.get_grad(name).shape))
        outputs, backprop = encoder.begin_update([docs[segment.doc_index]])
        d_output = numpy.zeros_like(outputs[0])
        lo, hi = windows[k]
        d_output[lo:hi] = grads.r[grads.offsets[k] : grads.offsets[k + 1]] @ weight
        backprop([d_output])
        rows.append(numpy.concatenate([t.get_grad("E") for t in tables]).reshape(-1))
    return numpy.asarray(rows, dtype="float64")


@pytest.fixture
def setup(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    ner = bridge.crf_component(nlp, "crf_ner")
    docs = [eg_.reference for eg_ in make_examples(nlp)]
    batch = labelled_batch(nlp, "crf_ner", docs)
    segments = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    segments += [Segment(4, 1, 3), Segment(0, 0, len(docs[0]))]  # an all-O span and a whole sentence
    grads = segment_gradients(ner, batch, segments)
    windows = segment_windows(batch, segments)
    encoded = [bridge.unannotated(doc) for doc in docs]
    return nlp, ner, encoded, grads, windows, segments


def test_matches_thinc_backprop(setup):
    nlp, ner, docs, grads, windows, segments = setup
    found = eg.embedding_gradients(nlp, ner, docs, grads, windows, [s.doc_index for s in segments], batch_size=3)
    encoder = eg.upstream_encoder(nlp, ner)
    set_dropout_rate(encoder, 0.0)  # the reference must see the model as it predicts
    reference = _dense_reference(nlp, ner, docs, grads, windows, segments)
    width = found.vectors.shape[1]
    for k in range(len(segments)):
        dense = numpy.zeros((found.n_rows, width))
        for rows, vector in zip(found.rows[found.offsets[k] : found.offsets[k + 1]], found.vectors[found.offsets[k] :]):
            for row in rows:
                dense[row] += vector
        numpy.testing.assert_allclose(dense.reshape(-1), reference[k], atol=1e-6, rtol=1e-4)
    numpy.testing.assert_allclose(eg.dot(found, found), reference @ reference.T, atol=1e-6, rtol=1e-4)
    numpy.testing.assert_allclose(found.squared_norms(), (reference**2).sum(axis=1), atol=1e-6, rtol=1e-4)


def test_dropout_restored_and_not_used(setup):
    nlp, ner, docs, grads, windows, segments = setup
    encoder = eg.upstream_encoder(nlp, ner)
    set_dropout_rate(encoder, 0.5)
    doc_of = [s.doc_index for s in segments]
    first = eg.embedding_gradients(nlp, ner, docs, grads, windows, doc_of)
    second = eg.embedding_gradients(nlp, ner, docs, grads, windows, doc_of)
    numpy.testing.assert_array_equal(first.vectors, second.vectors)
    rates = {node.attrs["dropout_rate"] for node in encoder.walk() if "dropout_rate" in node.attrs}
    assert rates == {0.5}
    set_dropout_rate(encoder, 0.0)
