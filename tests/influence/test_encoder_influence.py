"""`segment_influence` with layers = "embeddings": the inverted-index search against the
sparse reference, and the component's scores against the functions it is built from."""

import numpy
import pytest
from spacy.tokens import DocBin

from spacy_segment_influence.exceptions import ConfigError
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
    influence = nlp.add_pipe("segment_influence", name="emb_influence", config={"layers": "embeddings", "k": 3})
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


def test_component_scores_are_the_initial_pipelines(indexed):
    nlp, influence, docs, path = indexed
    doc = nlp("Anna Berg visited Rome .")
    spans = [doc[0:2], doc[3:4]]
    found = influence.scores(spans, ["PER", "LOC"])
    start = ei.initial_pipeline(training_config(nlp.config), path)
    train = [Segment(m["doc_index"], m["start"], m["end"]) for m in influence.index.metadata]
    query = nlp.make_doc("Anna Berg visited Rome .")
    query.ents = [query.char_span(0, 9, "PER"), query.char_span(18, 22, "LOC")]
    expected = ei.embedding_scores(
        ei.embedding_gradients_of(start, "crf_ner", [query, query], [Segment(0, 0, 2), Segment(1, 3, 4)]),
        ei.embedding_gradients_of(start, "crf_ner", docs, train),
    )
    numpy.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-9)
    explained = influence.explain(doc[3:4], label="LOC", k=2)
    best = numpy.argsort(-found[1])[: len(explained["supporters"])]
    assert [(h["doc_index"], h["start"]) for h in explained["supporters"]] == [
        (influence.index.metadata[j]["doc_index"], influence.index.metadata[j]["start"]) for j in best
    ]
    assert explained["supporters"][0]["score"] == pytest.approx(found[1].max())


def test_round_trips(indexed, tmp_path):
    nlp, influence, _, _ = indexed
    doc = nlp("Peter Smith lives in Paris .")
    before = influence.scores([doc[0:2]])
    influence.to_disk(tmp_path / "c")
    loaded = type(influence)(nlp, "copy").from_disk(tmp_path / "c")
    numpy.testing.assert_allclose(loaded.scores([doc[0:2]]), before)
    copied = type(influence)(nlp, "copy").from_bytes(influence.to_bytes())
    numpy.testing.assert_allclose(copied.scores([doc[0:2]]), before)


@pytest.mark.parametrize(
    "config",
    [
        {"layers": "all"},
        {"layers": "embeddings", "granularity": "tokens"},
        {"layers": "embeddings", "curvature": "exact", "refine": True},
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
    loaded = spacy.load(tmp_path / "out")
    assert loaded.get_pipe("segment_influence").cfg["layers"] == "embeddings"
    doc = loaded("Anna Berg visited Paris .")
    assert doc._.influences and all("supporters" in record for record in doc._.influences)
    bad = CliRunner().invoke(app, [*args[:3], str(tmp_path / "out2"), "--layers", "everything"])
    assert bad.exit_code == 1 and "layers must be one of" in bad.output
