"""Embedding-table gradients through the encoder against thinc's own dense backprop."""

import numpy
import pytest
from spacy.tokens import Doc, Span
from thinc.api import set_dropout_rate

from spacy_segment_influence.influence import embedding_gradients as eg
from spacy_segment_influence.influence.segments import Segment, segment_gradients, segment_windows
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import labelled_batch

from ..conftest import TRAIN_DATA, make_examples


def _dense_reference(nlp, ner, docs, segments):
    """Each segment's gradient w.r.t. every hash-embedding table, in two passes: the head's
    features from the pipeline's own encoding (`labelled_batch`) and the head's segment
    gradient there, then a second forward and thinc's backprop into the tables' own
    gradients (one backward pass per segment)."""
    batch = labelled_batch(nlp, "crf_ner", docs)
    grads = segment_gradients(ner, batch, segments)
    windows = segment_windows(batch, segments)
    encoder = eg.upstream_encoder(nlp, ner)
    tables = eg.hash_embed_tables(encoder)
    weight = ner.head.weight.detach().numpy()
    rows = []
    for k, segment in enumerate(segments):
        for node in encoder.walk():
            for name in node.param_names:
                if node.has_grad(name):
                    node.set_grad(name, node.ops.alloc(node.get_grad(name).shape))
        outputs, backprop = encoder.begin_update([bridge.unannotated(docs[segment.doc_index])])
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
    segments = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    segments += [Segment(4, 1, 3), Segment(0, 0, len(docs[0]))]  # an all-O span and a whole sentence
    return nlp, ner, docs, segments


def _assert_matches_dense(nlp, ner, docs, segments, batch_size):
    found = eg.embedding_gradients(nlp, ner, docs, segments, batch_size=batch_size)
    encoder = eg.upstream_encoder(nlp, ner)
    set_dropout_rate(encoder, 0.0)  # the reference must see the model as it predicts
    reference = _dense_reference(nlp, ner, docs, segments)
    width = found.vectors.shape[1]
    scale = numpy.abs(reference).max()  # float32 sums: absolute errors scale with the largest entry
    for k in range(len(segments)):
        dense = numpy.zeros((found.n_rows, width))
        for rows, vector in zip(found.rows[found.offsets[k] : found.offsets[k + 1]], found.vectors[found.offsets[k] :]):
            for row in rows:
                dense[row] += vector
        numpy.testing.assert_allclose(dense.reshape(-1), reference[k], atol=1e-6 * scale, rtol=1e-4)
    products = reference @ reference.T
    numpy.testing.assert_allclose(eg.dot(found, found), products, atol=1e-6 * products.max(), rtol=1e-4)
    numpy.testing.assert_allclose(found.squared_norms(), products.diagonal(), atol=1e-6 * products.max(), rtol=1e-4)


def test_matches_thinc_backprop(setup):
    nlp, ner, docs, segments = setup
    _assert_matches_dense(nlp, ner, docs, segments, batch_size=3)


@pytest.mark.parametrize("seed", range(2))
def test_one_pass_matches_two_passes_on_random_docs(trained_tok2vec_nlp, seed):
    """The head's features taken from the backprop's own forward pass give the gradients of
    the features from a separate encoding, on random sentences, labellings and segments."""
    nlp = trained_tok2vec_nlp
    ner = bridge.crf_component(nlp, "crf_ner")
    rng = numpy.random.default_rng(seed)
    words = sorted({w for text, _ in TRAIN_DATA for w in text.split()}) + ["qzx", "Ww9", "-"]
    docs, segments = [], []
    for i in range(6):
        doc = Doc(nlp.vocab, words=[str(w) for w in rng.choice(words, int(rng.integers(1, 12)))])
        start = int(rng.integers(0, len(doc)))
        end = int(rng.integers(start + 1, len(doc) + 1))
        doc.ents = [Span(doc, start, end, label=str(rng.choice(ner.labels)))] if rng.random() < 0.7 else []
        docs.append(doc)
        segments += [Segment(i, start, end), Segment(i, 0, len(doc))]
        segments += [Segment(i, j, j + 1) for j in rng.choice(len(doc), min(2, len(doc)), replace=False)]
    order = rng.permutation(len(segments))  # copies of one doc spread over batches
    _assert_matches_dense(nlp, ner, docs, [segments[j] for j in order], batch_size=int(rng.integers(1, 8)))


def test_dropout_restored_and_not_used(setup):
    nlp, ner, docs, segments = setup
    encoder = eg.upstream_encoder(nlp, ner)
    set_dropout_rate(encoder, 0.5)
    first = eg.embedding_gradients(nlp, ner, docs, segments)
    second = eg.embedding_gradients(nlp, ner, docs, segments)
    numpy.testing.assert_array_equal(first.vectors, second.vectors)
    rates = {node.attrs["dropout_rate"] for node in encoder.walk() if "dropout_rate" in node.attrs}
    assert rates == {0.5}
    set_dropout_rate(encoder, 0.0)
