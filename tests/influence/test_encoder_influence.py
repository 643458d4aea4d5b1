"""`segment_influence` with layers = "embeddings": the inverted-index search against the
sparse reference, and the component's scores against the functions it is built from."""

import numpy
import pytest
from spacy.tokens import DocBin

from spacy_segment_influence.exceptions import ConfigError, IndexFormatError
from spacy_segment_influence.influence import embedding_gradients as eg
from spacy_segment_influence.influence import encoder_influence as ei
from spacy_segment_influence.influence.segments import Segment
from spacy_segment_influence.training import training_config

from ..conftest import make_examples


@pytest.fixture(scope="module")
def indexed(trained_tok2vec_nlp, tmp_path_factory):
    nlp = trained_tok2vec_nlp
    docs = [eg.reference for eg in make_examples(nlp)]
    path = tmp_path_factory.mktemp("emb") / "train.spacy"
    DocBin(docs=docs).to_disk(path)
    influence = nlp.add_pipe(
        "segment_influence", name="emb_influence", config={"layers": "embeddings", "k": 3, "inits": 2}
    )
    influence.initialize(lambda: [], nlp=nlp, train_path=path, show_progress=False)
    yield nlp, influence, docs, path
    nlp.remove_pipe("emb_influence")


def test_inverted_index_matches_sparse_reference(indexed):
    nlp, _, docs, path = indexed
    start = ei.initial_pipeline(training_config(nlp.config), path)
    train = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    stored = ei.embedding_gradients_of(start, "crf_ner", docs, train)
    queries = ei.embedding_gradients_of(start, "crf_ner", docs, train[:4] + [Segment(4, 0, 2)])
    numpy.testing.assert_allclose(
        ei.EmbeddingIndex(stored).scores(queries), ei.embedding_scores(queries, stored), rtol=1e-6, atol=1e-9
    )


def test_side_by_side_sums_the_models(indexed):
    nlp, _, docs, path = indexed
    train = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    queries = train[:3] + [Segment(4, 0, 2)]
    starts = ei.initial_pipelines(training_config(nlp.config), path, 3)
    assert len({s.get_pipe("tok2vec").model.get_ref("embed").to_bytes() for s in starts}) == 3
    each = [
        (ei.embedding_gradients_of(s, "crf_ner", docs, queries), ei.embedding_gradients_of(s, "crf_ner", docs, train))
        for s in starts
    ]
    both = eg.dot(eg.side_by_side([q for q, _ in each]), eg.side_by_side([t for _, t in each]))
    numpy.testing.assert_allclose(both, sum(eg.dot(q, t) for q, t in each), rtol=1e-6, atol=1e-9)
    stacked = ei.ensemble_gradients(starts, "crf_ner", docs, train)
    numpy.testing.assert_allclose(
        ei.EmbeddingIndex(stacked).scores(ei.ensemble_gradients(starts, "crf_ner", docs, queries)),
        sum(ei.embedding_scores(q, t) for q, t in each),
        rtol=1e-6,
        atol=1e-9,
    )


def test_component_scores_are_the_initial_pipelines(indexed):
    nlp, influence, docs, path = indexed
    doc = nlp("Anna Berg visited Rome .")
    spans = [doc[0:2], doc[3:4]]
    found = influence.scores(spans, ["PER", "LOC"])
    train = [Segment(m["doc_index"], m["start"], m["end"]) for m in influence.index.metadata]
    query = nlp.make_doc("Anna Berg visited Rome .")
    query.ents = [query.char_span(0, 9, "PER"), query.char_span(18, 22, "LOC")]
    expected = sum(
        ei.embedding_scores(
            ei.embedding_gradients_of(start, "crf_ner", [query, query], [Segment(0, 0, 2), Segment(1, 3, 4)]),
            ei.embedding_gradients_of(start, "crf_ner", docs, train),
        )
        for start in ei.initial_pipelines(training_config(nlp.config), path, 2)
    )
    numpy.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-9)
    explained = influence.explain(doc[3:4], label="LOC", k=2)
    best = numpy.argsort(-found[1])[: len(explained["supporters"])]
    assert [(h["doc_index"], h["start"]) for h in explained["supporters"]] == [
        (influence.index.metadata[j]["doc_index"], influence.index.metadata[j]["start"]) for j in best
    ]
    assert explained["supporters"][0]["score"] == pytest.approx(found[1].max())
    assert len(influence.explainer.index) == len(influence.index.metadata)  # the public way to the search


def test_round_trips(indexed, tmp_path):
    nlp, influence, _, _ = indexed
    doc = nlp("Peter Smith lives in Paris .")
    before = influence.scores([doc[0:2]])
    influence.to_disk(tmp_path / "c")
    loaded = type(influence)(nlp, "copy").from_disk(tmp_path / "c")
    numpy.testing.assert_allclose(loaded.scores([doc[0:2]]), before)
    copied = type(influence)(nlp, "copy").from_bytes(influence.to_bytes())
    numpy.testing.assert_allclose(copied.scores([doc[0:2]]), before)
    assert len(copied._encoder.initials) == 2


def test_refuses_an_older_embeddings_index():
    import srsly

    with pytest.raises(IndexFormatError, match="re-index"):
        ei.EncoderExplainer.from_bytes(
            srsly.msgpack_dumps({"config": "", "initial": b"", "ner": "crf_ner", "index": b""})
        )


@pytest.mark.parametrize(
    "config",
    [
        {"layers": "all"},
        {"layers": "embeddings", "granularity": "tokens"},
        {"layers": "embeddings", "curvature": "exact", "refine": True},
        {"layers": "embeddings", "inits": 0},
    ],
)
def test_refused_settings(trained_tok2vec_nlp, config):
    with pytest.raises(ConfigError):
        trained_tok2vec_nlp.add_pipe("segment_influence", name="refused", config=config)
    assert "refused" not in trained_tok2vec_nlp.pipe_names


def test_index_command_with_embeddings(trained_tok2vec_nlp, tmp_path):
    import spacy
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp = trained_tok2vec_nlp
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(tmp_path / "train.spacy")
    nlp.to_disk(tmp_path / "model")
    args = ["index", str(tmp_path / "model"), str(tmp_path / "train.spacy"), str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--layers", "embeddings"])
    assert result.exception is None, result.output
    assert ei.has_hash_embeddings(nlp, "crf_ner") and "Tip:" not in result.output
    head = CliRunner().invoke(app, [*args[:3], str(tmp_path / "head")])
    assert head.exception is None and "Tip: for a tok2vec encoder, --layers embeddings" in head.output
    loaded = spacy.load(tmp_path / "out")
    assert loaded.get_pipe("segment_influence").cfg["layers"] == "embeddings"
    doc = loaded("Anna Berg visited Paris .")
    assert doc._.influences and all("supporters" in record for record in doc._.influences)
    bad = CliRunner().invoke(app, [*args[:3], str(tmp_path / "out2"), "--layers", "everything"])
    assert bad.exit_code == 1 and "layers must be one of" in bad.output
