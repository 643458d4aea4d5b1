import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc, Span

from spacy_segment_influence.influence.hessian import head_hessian, head_hessian_autograd
from spacy_segment_influence.influence.segments import Segment, segment_gradients, segment_gradients_autograd
from spacy_segment_influence.ner import bridge, crf
from spacy_segment_influence.ner.bridge import LabelledBatch
from spacy_segment_influence.ner.layout import HeadLayout

from ..conftest import TRAIN_DATA, make_examples, tok2vec_nlp, train, trf_nlp

# (doc, start, end): entity, multi-token entity touching the end, all-O, edges, whole sentence
SEGMENTS = [
    Segment(0, 0, 2),  # "Peter Smith" PER, touches the start
    Segment(0, 4, 7),  # "New York City" LOC
    Segment(0, 2, 4),  # "lives in": all O
    Segment(0, 7, 8),  # "." touches the end
    Segment(1, 0, 1),  # "Apple" single token at the start
    Segment(4, 0, 5),  # the whole all-O sentence
    Segment(5, 0, 1),  # a length-1 sentence
    Segment(3, 1, 2),  # "Olympics"
]


def labelled_batch(nlp, with_unknown: bool = False) -> LabelledBatch:
    ner = nlp.get_pipe("crf_ner")
    references = [eg.reference for eg in make_examples(nlp)]
    single = Doc(nlp.vocab, words=["Rome"])
    single.ents = [Span(single, 0, 1, label="LOC")]
    docs = bridge.encode(nlp, [*references, single], "crf_ner")
    tags = [bridge.tag_ids(ner, doc, doc.ents) for doc in docs]
    if with_unknown:  # partial annotation outside the segments, next to and apart from them
        tags[1][1:3] = [-1, -1]
        tags[3][2] = -1
        tags[3][4] = -1
    return LabelledBatch(bridge.head_features(ner, docs), tags)


def assert_close(closed, reference, rtol=1e-5):
    scale = numpy.abs(reference).max()
    assert scale > 0
    numpy.testing.assert_allclose(closed, reference, rtol=0, atol=rtol * scale)
    assert numpy.linalg.norm(closed - reference) <= rtol * numpy.linalg.norm(reference)


@pytest.mark.parametrize("with_unknown", [False, True])
def test_closed_form_equals_autograd_tok2vec(trained_tok2vec_nlp, with_unknown):
    ner = trained_tok2vec_nlp.get_pipe("crf_ner")
    batch = labelled_batch(trained_tok2vec_nlp, with_unknown)
    closed = segment_gradients(ner, batch, SEGMENTS, batch_size=3, dtype=torch.float64)
    reference = segment_gradients_autograd(ner, batch, SEGMENTS)
    assert len(closed) == len(SEGMENTS)
    for row in range(len(SEGMENTS)):
        assert_close(closed.to_dense()[row], reference[row])
    if not with_unknown:  # known labels: a segment only keeps its own rows
        assert list(closed.lengths) == [s.end - s.start for s in SEGMENTS]


def test_closed_form_equals_autograd_tiny_transformer(tiny_bert_dir):
    nlp = trf_nlp(tiny_bert_dir)
    train(nlp, make_examples(nlp), steps=10)
    ner = nlp.get_pipe("crf_ner")
    batch = labelled_batch(nlp)
    closed = segment_gradients(ner, batch, SEGMENTS, dtype=torch.float64)
    reference = segment_gradients_autograd(ner, batch, SEGMENTS)
    for row in range(len(SEGMENTS)):
        assert_close(closed.to_dense()[row], reference[row])


def test_features_are_what_the_head_saw(trained_tok2vec_nlp):
    """Features through the listener's predict path give the pipeline's own emissions."""
    nlp = trained_tok2vec_nlp
    ner = nlp.get_pipe("crf_ner")
    docs = bridge.encode(nlp, [nlp.make_doc(text) for text, _ in TRAIN_DATA], "crf_ner")
    features = bridge.head_features(ner, docs)
    emissions = ner.model.predict(docs)
    for x, em in zip(features, emissions):
        expected = torch.as_tensor(x) @ ner.head.weight.T + ner.head.bias
        numpy.testing.assert_allclose(expected.detach().numpy(), em, rtol=1e-5, atol=1e-5)


def test_segment_loss_decomposes_sentence_loss(trained_tok2vec_nlp):
    """-log p(y|x) = l_S - log p(y_-S|x): removing l_S is removing the segment's labels."""
    ner = trained_tok2vec_nlp.get_pipe("crf_ner")
    batch = labelled_batch(trained_tok2vec_nlp)
    x = torch.as_tensor(batch.features[0], dtype=torch.float64)
    head = ner.head
    scores = crf.ChainScores(
        (x @ head.weight.double().T + head.bias.double()).unsqueeze(0),
        torch.tensor([len(x)]),
        head.transitions.double(),
        head.start.double(),
        head.end.double(),
    )
    tags = torch.tensor([batch.tags[0]])
    start, end = torch.tensor([4]), torch.tensor([7])
    whole = crf.nll(scores, tags, ner.constraints)
    rest = crf.nll(scores, tags.masked_fill(crf.segment_mask(tags, start, end), -1), ner.constraints)
    segment = crf.segment_nll(scores, tags, start, end, ner.constraints)
    torch.testing.assert_close(whole, segment + rest)


@pytest.mark.parametrize("scheme", ["BILUO", "BIO"])
def test_closed_form_hessian_matches_autograd(scheme):
    """Closed-form Hessian (covariance of the sufficient statistics) == reverse-over-reverse
    autograd, away from the optimum, with unknown labels inside, at the edges of and next to
    entities, and with sentences of different lengths (padding) split over several chunks."""
    nlp = tok2vec_nlp(scheme)
    nlp = train(nlp, make_examples(nlp), steps=10)
    ner = nlp.get_pipe("crf_ner")
    batch = bridge.labelled_batch(nlp, "crf_ner", [eg.reference for eg in make_examples(nlp)])
    tags = [list(t) for t in batch.tags]
    tags[0][2] = -1  # inside "Peter Smith lives ...": after an entity
    tags[1][0] = tags[1][1] = -1  # sentence start, over an entity
    tags[3][-1] = -1  # sentence end
    batch = LabelledBatch(batch.features, tags)
    generator = torch.Generator().manual_seed(0)
    theta = bridge.flat_head(ner)
    theta = theta + 0.3 * torch.randn(len(theta), generator=generator, dtype=torch.float64)
    reference = head_hessian_autograd(ner, batch, flat=theta)
    for max_pairs in (60, 16384):  # many small chunks / one chunk
        closed_form = head_hessian(ner, batch, theta, max_pairs=max_pairs)
        numpy.testing.assert_allclose(closed_form, reference, rtol=0, atol=1e-10 * numpy.abs(reference).max())
    # and it is not trivially so: the clamped (partial-label) term matters
    full = LabelledBatch(
        batch.features,
        [list(t) for t in bridge.labelled_batch(nlp, "crf_ner", [eg.reference for eg in make_examples(nlp)]).tags],
    )
    assert numpy.abs(head_hessian(ner, full, theta) - reference).max() > 1e-3


def test_hessian_of_a_freshly_loaded_pipeline(trained_tok2vec_nlp, tmp_path):
    """The tag constraints are built lazily: if that first happened inside the
    autograd Hessian's functorch transforms, the cached tensors escaped their level."""
    trained_tok2vec_nlp.to_disk(tmp_path / "model")
    fresh = spacy.load(tmp_path / "model")
    batch = labelled_batch(fresh)
    expected = head_hessian_autograd(trained_tok2vec_nlp.get_pipe("crf_ner"), batch, batch_size=4)
    numpy.testing.assert_allclose(head_hessian_autograd(fresh.get_pipe("crf_ner"), batch, batch_size=4), expected)


def test_hessian_layout_matches_gradient_differences(trained_tok2vec_nlp):
    """H v equals the central difference of the (flattened-layout) gradient along v."""
    ner = trained_tok2vec_nlp.get_pipe("crf_ner")
    batch = labelled_batch(trained_tok2vec_nlp)
    hessian = head_hessian(ner, batch)
    assert numpy.allclose(hessian, hessian.T, atol=1e-10)
    rng = numpy.random.default_rng(0)
    v = rng.normal(size=hessian.shape[0])
    n_tags, width = ner.head.n_tags, ner.head.n_features + 1
    names = ["weight", "bias", "transitions", "start", "end"]

    def gradient(shift: numpy.ndarray) -> numpy.ndarray:
        emission = torch.as_tensor(shift[: n_tags * width]).reshape(n_tags, width)
        rest = torch.as_tensor(shift[n_tags * width :])
        deltas = [
            emission[:, :-1],
            emission[:, -1],
            rest[: n_tags * n_tags].reshape(n_tags, n_tags),
            rest[n_tags * n_tags : n_tags * n_tags + n_tags],
            rest[n_tags * n_tags + n_tags :],
        ]
        params = {
            name: (getattr(ner.head, name).detach().double() + delta).requires_grad_()
            for name, delta in zip(names, deltas)
        }
        feats = [torch.as_tensor(x, dtype=torch.float64) for x in batch.features]
        emissions = [torch.func.functional_call(ner.head, params, (x,)) for x in feats]
        scores = crf.ChainScores(
            torch.nn.utils.rnn.pad_sequence(emissions, batch_first=True),
            torch.tensor([len(x) for x in feats]),
            params["transitions"],
            params["start"],
            params["end"],
        )
        tags = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(t) for t in batch.tags], batch_first=True, padding_value=-1
        )
        loss = crf.nll(scores, tags, ner.constraints).sum() / len(feats)
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        return HeadLayout.of(ner.head).flatten_module(*grads).numpy()

    eps = 1e-5
    difference = (gradient(eps * v) - gradient(-eps * v)) / (2 * eps)
    numpy.testing.assert_allclose(hessian @ v, difference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", ["BILUO", "BIO"])
def test_tag_ids_match_the_scheme_and_decode_back(scheme):
    """Against the tags written out per span, and back through the tagger's decoding, on
    random entity layouts."""
    nlp = tok2vec_nlp(scheme)
    nlp.initialize(lambda: make_examples(nlp))
    ner = nlp.get_pipe("crf_ner")
    rng = numpy.random.default_rng(0)
    for _ in range(30):
        doc = nlp.make_doc(" ".join(f"w{i}" for i in range(10)))
        cuts = sorted(rng.choice(11, size=6, replace=False))
        spans = [Span(doc, a, b, label=str(rng.choice(ner.labels))) for a, b in zip(cuts[::2], cuts[1::2])]
        expected = ["O"] * len(doc)  # written out per span, independently of spaCy's converters
        for s in spans:
            inside = ["I"] * (len(s) - 2)
            if scheme == "BILUO":
                prefixes = ["U"] if len(s) == 1 else ["B", *inside, "L"]
            else:
                prefixes = ["B"] + ["I"] * (len(s) - 1)
            expected[s.start : s.end] = [f"{p}-{s.label_}" for p in prefixes]
        ids = bridge.tag_ids(ner, doc, spans[::-1])
        assert [ner.tags[i] for i in ids] == expected
        decoded = ner.spans_from_tag_ids(doc, ids)  # and back, as predictions are written
        assert [(e.start, e.end, e.label_) for e in decoded] == [(s.start, s.end, s.label_) for s in spans]
    with pytest.raises(ValueError, match="overlap"):
        bridge.tag_ids(ner, doc, [Span(doc, 0, 3, label=ner.labels[0]), Span(doc, 2, 4, label=ner.labels[0])])


def test_tag_ids_reject_unknown_labels(trained_tok2vec_nlp):
    ner = trained_tok2vec_nlp.get_pipe("crf_ner")
    doc = trained_tok2vec_nlp.make_doc("Apple bought IBM")
    with pytest.raises(ValueError, match="COMPANY"):
        bridge.tag_ids(ner, doc, [Span(doc, 0, 1, label="COMPANY")])


def test_wrong_component_name(trained_tok2vec_nlp):
    with pytest.raises(ValueError, match="No component 'ner'"):
        bridge.upstream_components(trained_tok2vec_nlp, "ner")
    with pytest.raises(ValueError, match="not a crf_ner"):
        bridge.crf_component(trained_tok2vec_nlp, "tok2vec")
    assert bridge.upstream_components(trained_tok2vec_nlp, "tok2vec") == []  # any component has an upstream
    assert bridge.default_ner(trained_tok2vec_nlp) == "crf_ner"
