import numpy
import pytest
import spacy
from spacy.tokens import DocBin, Span
from spacy.training import Example

from spacy_segment_influence import (
    ConfigError,
    DataError,
    IndexMissingError,
    IndexOutOfDateError,
    PipelineError,
    SegmentInfluence,
)
from spacy_segment_influence.influence.hessian import head_hessian_autograd
from spacy_segment_influence.influence.segments import (
    Segment,
    segment_gradients,
    segment_gradients_autograd,
    token_marginals,
)
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import LabelledBatch

from ..conftest import TRAIN_DATA, make_examples, tok2vec_nlp, train


def add_index(nlp, name="segment_influence", **config):
    examples = make_examples(nlp)
    component = nlp.add_pipe("segment_influence", name=name, config={"k": 50, **config})
    component.initialize(lambda: examples, nlp=nlp, show_progress=False)
    return component


def training_batch(nlp):
    ner = nlp.get_pipe("crf_ner")
    docs = [eg.reference for eg in make_examples(nlp)]
    encoded = bridge.encode(nlp, docs, "crf_ner")
    batch = LabelledBatch(bridge.head_features(ner, encoded), [bridge.gold_tags(ner, d) for d in docs])
    segments = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    return batch, segments


@pytest.mark.parametrize("curvature", ["identity", "kfac", "exact"])
@pytest.mark.parametrize("normalize", [True, False])
def test_search_equals_dense_brute_force(nlp, curvature, normalize):
    """Fast factored search == scores from materialised autograd gradients, H^-1 explicit."""
    component = add_index(nlp, name="si", curvature=curvature, normalize=normalize, damping=0.01)
    try:
        ner = nlp.get_pipe("crf_ner")
        batch, segments = training_batch(nlp)
        dense = segment_gradients_autograd(ner, batch, segments)
        hessian = explicit_curvature(component, ner, batch, dense)
        preconditioned = numpy.linalg.solve(hessian, dense.T).T
        expected = preconditioned @ dense.T  # queries = the training segments themselves
        if normalize:
            norms = numpy.sqrt(numpy.einsum("ij,ij->i", preconditioned, dense))
            expected = expected / numpy.outer(norms, norms)
        queries = segment_gradients(ner, batch, segments)
        got = component.index.scores(queries)
        numpy.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4 * numpy.abs(expected).max())
        for row, result in enumerate(component.index.top_k(queries, k=3)):
            best = numpy.argsort(-expected[row])[:3]
            assert [i for i, _ in result.supporters] == [i for i in best if expected[row, i] > 0]
    finally:
        nlp.remove_pipe("si")


def explicit_curvature(component, ner, batch, dense):
    n_params = dense.shape[1]
    damping = component.cfg["damping"]
    curvature = component.index.curvature
    if component.cfg["curvature"] == "identity":
        return numpy.eye(n_params)
    if component.cfg["curvature"] == "exact":
        return head_hessian_autograd(ner, batch) + damping * numpy.eye(n_params)
    # K-FAC: (B + sqrt(d) I) (x) (A + sqrt(d) I) on [W|b] (row-major [C, E+1]), dense block apart
    h, q = token_marginals(ner, batch.features)
    a = h.T.astype("float64") @ h / len(h)
    b = numpy.diag(q.mean(0)) - q.T.astype("float64") @ q / len(q)
    root = numpy.sqrt(damping)
    emission = numpy.kron(b + root * numpy.eye(len(b)), a + root * numpy.eye(len(a)))
    all_dense = dense[:, emission.shape[0] :]  # the index holds exactly these segments
    rest = all_dense.T @ all_dense / len(all_dense) + damping * numpy.eye(all_dense.shape[1])
    out = numpy.zeros((n_params, n_params))
    k = emission.shape[0]
    out[:k, :k] = emission
    out[k:, k:] = rest
    assert curvature.name == "kfac"
    return out


def test_self_retrieval_and_extensions(nlp):
    add_index(nlp)
    try:
        for text, _ in TRAIN_DATA:
            doc = nlp(text)
            assert len(doc._.influences) == len(doc.ents)
            for ent, record in zip(doc.ents, doc._.influences):
                assert ent._.influences["supporters"] == record["supporters"]
                top = record["supporters"][0]
                assert (top["start"], top["end"], top["label"]) == (ent.start, ent.end, ent.label_)
                assert top["text"] == ent.text and top["score"] == pytest.approx(1.0, abs=1e-4)
                scores = [hit["score"] for hit in record["supporters"]]
                assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
                assert all(hit["score"] < 0 for hit in record["opposers"])
                assert set(top) == {"doc_id", "doc_index", "start", "end", "label", "text", "context", "score"}
        # records survive DocBin(store_user_data=True)
        doc = nlp(TRAIN_DATA[0][0])
        restored = next(DocBin(docs=[doc], store_user_data=True).get_docs(nlp.vocab))
        assert restored._.influences == doc._.influences
        assert [e._.influences for e in restored.ents] == [e._.influences for e in doc.ents]
    finally:
        nlp.remove_pipe("segment_influence")


@pytest.mark.parametrize("start,end,label", [(2, 4, "O"), (4, 7, "O"), (4, 7, "ORG"), (4, 7, None)])
def test_explain_any_span_against_dense_brute_force(nlp, start, end, label):
    """`explain` of a span under a labelling ("O" = why is this NOT an entity?) scores the
    segment whose tags are that labelling, the doc's other predictions kept: the same
    hits and scores as materialised autograd gradients with H^-1 explicit."""
    component = add_index(nlp)
    try:
        ner = nlp.get_pipe("crf_ner")
        doc = nlp("Peter Smith lives in New York City .")
        span = doc[start:end]
        got = component.explain(span, label=label)
        asked = label or next(e.label_ for e in doc.ents if (e.start, e.end) == (start, end))
        others = [e for e in doc.ents if e.end <= start or e.start >= end]
        labelling = others + ([Span(doc, start, end, label=asked)] if asked != "O" else [])
        encoded = bridge.encode(nlp, [bridge.unannotated(doc)], "crf_ner")
        query_batch = LabelledBatch(bridge.head_features(ner, encoded), [bridge.tag_ids(ner, doc, labelling)])
        query = segment_gradients_autograd(ner, query_batch, [Segment(0, start, end)])[0]
        batch, segments = training_batch(nlp)
        train = segment_gradients_autograd(ner, batch, segments)
        hessian = explicit_curvature(component, ner, batch, train)
        preconditioned = numpy.linalg.solve(hessian, query)
        norms = numpy.sqrt(numpy.einsum("ij,ij->i", numpy.linalg.solve(hessian, train.T).T, train))
        expected = preconditioned @ train.T / numpy.sqrt(preconditioned @ query) / norms
        assert (got["label"], got["start"], got["end"]) == (asked, start, end)
        for hits, order in ((got["supporters"], numpy.argsort(-expected)), (got["opposers"], numpy.argsort(expected))):
            wanted = [i for i in order if (expected[i] > 0) == (hits is got["supporters"]) and expected[i] != 0]
            assert [(h["doc_index"], h["start"], h["end"]) for h in hits] == [tuple(segments[i]) for i in wanted]
            numpy.testing.assert_allclose([h["score"] for h in hits], expected[wanted], rtol=2e-3, atol=1e-5)
    finally:
        nlp.remove_pipe("segment_influence")


def test_explain_rejects_an_unknown_label(nlp):
    component = add_index(nlp)
    try:
        doc = nlp("Peter Smith lives in New York City .")
        with pytest.raises(PipelineError, match="COMPANY"):
            component.explain(doc[0:1], label="COMPANY")
    finally:
        nlp.remove_pipe("segment_influence")


def test_token_granularity_indexes_every_annotated_token(nlp):
    """granularity "tokens": one segment per annotated training token, labelled with its
    entity type, scored like any segment (identity curvature: plain dot products)."""
    component = add_index(nlp, name="si", granularity="tokens", curvature="identity", normalize=False)
    try:
        ner = nlp.get_pipe("crf_ner")
        docs = [eg.reference for eg in make_examples(nlp)]
        docs[0].set_ents(list(docs[0].ents), missing=[docs[0][2:3]], default="unmodified")  # "lives": unannotated
        component.initialize(lambda: [Example(d.copy(), d) for d in docs], nlp=nlp, show_progress=False)
        features = training_batch(nlp)[0].features
        batch = LabelledBatch(features, [bridge.gold_tags(ner, d) for d in docs])
        tokens = [Segment(i, t, t + 1) for i, d in enumerate(docs) for t in range(len(d)) if (i, t) != (0, 2)]
        records = [(m["doc_index"], m["start"], m["end"], m["label"]) for m in component.index.metadata]
        assert records == [(i, t, e, docs[i][t].ent_type_ or "O") for i, t, e in tokens]
        dense = segment_gradients_autograd(ner, batch, tokens)
        got = component.index.scores(segment_gradients(ner, batch, tokens))
        expected = dense @ dense.T
        numpy.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4 * numpy.abs(expected).max())
    finally:
        nlp.remove_pipe("si")


def test_round_trips_and_fingerprint(nlp, tmp_path):
    nlp = tok2vec_nlp()
    examples = make_examples(nlp)
    train(nlp, examples, steps=30)
    add_index(nlp, k=3)
    expected = [doc._.influences for doc in nlp.pipe([t for t, _ in TRAIN_DATA])]
    nlp.to_disk(tmp_path / "model")
    loaded = spacy.load(tmp_path / "model")
    assert isinstance(loaded.get_pipe("segment_influence").index.stored.h, numpy.memmap)
    assert [doc._.influences for doc in loaded.pipe([t for t, _ in TRAIN_DATA])] == expected
    from_bytes = tok2vec_nlp()
    from_bytes.add_pipe("segment_influence")
    from_bytes.from_bytes(nlp.to_bytes())
    assert [doc._.influences for doc in from_bytes.pipe([t for t, _ in TRAIN_DATA])] == expected
    # exclude=["index"] leaves the index out, as spaCy pipes leave out excluded fields
    component = nlp.get_pipe("segment_influence")
    component.to_disk(tmp_path / "no_index", exclude=["index"])
    assert not (tmp_path / "no_index" / "index").exists() and (tmp_path / "no_index" / "cfg").exists()
    assert tok2vec_nlp().add_pipe("segment_influence").from_disk(tmp_path / "no_index").index is None
    kept = loaded.get_pipe("segment_influence")
    index = kept.index
    assert kept.from_disk(tmp_path / "model" / "segment_influence", exclude=["index"]).index is index
    assert kept.from_bytes(component.to_bytes(exclude=["index"])).index is index
    assert tok2vec_nlp().add_pipe("segment_influence").from_bytes(component.to_bytes(exclude=["index"])).index is None
    # weights change after indexing -> clear error, not silently wrong scores
    loaded.update(make_examples(loaded)[:2], sgd=loaded.resume_training())
    with pytest.raises(IndexOutOfDateError, match="changed after"):
        loaded(TRAIN_DATA[0][0])


def test_clear_errors(nlp):
    with pytest.raises(ValueError, match="curvature"):  # spaCy validates the config's Literal
        nlp.add_pipe("segment_influence", name="bad", config={"curvature": "hessian"})
    with pytest.raises(ConfigError, match="curvature"):
        SegmentInfluence(nlp, curvature="hessian")
    component = nlp.add_pipe("segment_influence", name="empty")
    try:
        with pytest.raises(IndexMissingError, match="has no index"):
            nlp("Peter Smith")
        with pytest.raises(FileNotFoundError, match="nope.spacy"):
            component.initialize(lambda: [], nlp=nlp, train_path="nope.spacy")
    finally:
        nlp.remove_pipe("empty")
    wrong = nlp.add_pipe("segment_influence", name="wrong", config={"ner": "ner"})
    try:
        with pytest.raises(PipelineError, match="No component 'ner'"):
            wrong.initialize(lambda: make_examples(nlp), nlp=nlp, show_progress=False)
    finally:
        nlp.remove_pipe("wrong")


@pytest.mark.parametrize("option,value", [("--curvature", "hessian"), ("--granularity", "words"), ("--dtype", "int8")])
def test_cli_index_rejects_bad_settings_in_one_line(nlp, tmp_path, option, value):
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp.to_disk(tmp_path / "model")
    train_path = tmp_path / "train.spacy"
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(train_path)
    args = ["index", str(tmp_path / "model"), str(train_path), str(tmp_path / "out"), option, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"{option[2:]} must be one of" in result.output and not (tmp_path / "out").exists()


def test_cli_index_reports_the_size_it_wrote(nlp, tmp_path):
    """The exact curvature's P x P eigenvectors are most of what `index` writes."""
    import re

    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp.to_disk(tmp_path / "model")
    train_path = tmp_path / "train.spacy"
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(train_path)
    args = ["index", str(tmp_path / "model"), str(train_path), str(tmp_path / "out"), "--curvature", "exact"]
    result = CliRunner().invoke(app, args)
    assert result.exception is None, result.output
    reported = float(re.search(r"\(([\d.]+) MB written\)", result.output).group(1))
    written = sum(f.stat().st_size for f in (tmp_path / "out" / "segment_influence").rglob("*") if f.is_file())
    assert (
        reported == round(written / 1e6, 1)
        and written > 10 * spacy.load(tmp_path / "out").get_pipe("segment_influence").index.nbytes
    )


def test_query_gradients_are_explains_queries(nlp, tmp_path):
    """The public query gradients equal autograd's for the span labelled as `explain`
    labels it, and a sharded search with them returns `explain`'s hits."""
    from spacy_segment_influence.scale.sharded_index import ShardedIndex, write_sharded

    component = add_index(nlp, k=3)
    try:
        ner = nlp.get_pipe("crf_ner")
        docs = [nlp("Peter Smith lives in New York City ."), nlp("Apple bought IBM last year .")]
        spans = [docs[0][4:7], docs[1][0:1]]
        grads = component.query_gradients(spans, label="ORG")
        for i, span in enumerate(spans):
            doc = span.doc
            labelling = [e for e in doc.ents if e.end <= span.start or e.start >= span.end]
            labelling = sorted(labelling + [Span(doc, span.start, span.end, label="ORG")], key=lambda e: e.start)
            encoded = bridge.encode(nlp, [bridge.unannotated(doc)], "crf_ner")
            batch = LabelledBatch(bridge.head_features(ner, encoded), [bridge.tag_ids(ner, doc, labelling)])
            expected = segment_gradients_autograd(ner, batch, [Segment(0, span.start, span.end)])[0]
            numpy.testing.assert_allclose(grads.to_dense()[i], expected, rtol=1e-4, atol=1e-6)
        write_sharded(component.index, tmp_path / "shards", n_shards=2)
        sharded = ShardedIndex(tmp_path / "shards")
        for span, result in zip(spans, sharded.top_k(grads, k=3)):
            explained = component.explain(span, label="ORG", k=3)
            for side in ("supporters", "opposers"):
                hits = getattr(result, side)
                assert sharded.records([i for i, _ in hits]) == [
                    {key: value for key, value in hit.items() if key != "score"} for hit in explained[side]
                ]
                numpy.testing.assert_allclose([s for _, s in hits], [h["score"] for h in explained[side]], rtol=1e-5)
        with pytest.raises(DataError, match="empty"):
            component.query_gradients([docs[0][2:2]])
    finally:
        nlp.remove_pipe("segment_influence")
