"""A stale or corrupt index is refused with one clear error, never answered from."""

import pytest
import spacy
from thinc.api import Config

from spacy_segment_influence import IndexFormatError, IndexOutOfDateError

from .conftest import TOK2VEC_CONFIG, TRAIN_DATA, make_examples, train

TEXTS = [text for text, _ in TRAIN_DATA]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A trained tok2vec pipeline with an index, on disk. Its embedding tables (5000 x 16)
    are large enough that a strided sample of their entries would skip most of them."""
    config = TOK2VEC_CONFIG.replace("{scheme}", "BILUO").replace("embed_size = 300", "embed_size = 5000")
    nlp = spacy.util.load_model_from_config(Config().from_str(config), auto_fill=True)
    train(nlp, make_examples(nlp), steps=20)
    nlp.add_pipe("segment_influence", config={"k": 3}).initialize(
        lambda: make_examples(nlp), nlp=nlp, show_progress=False
    )
    path = tmp_path_factory.mktemp("indexed") / "model"
    nlp.to_disk(path)
    return path


def embedding_tables(nlp):
    return [node for node in nlp.get_pipe("tok2vec").model.walk() if node.has_param("E")]


def test_an_edit_of_any_single_weight_is_detected(indexed):
    nlp = spacy.load(indexed)
    list(nlp.pipe(TEXTS))  # answers before the edit
    table = embedding_tables(nlp)[0]
    weights = table.get_param("E").copy()
    assert weights.size > 4096 * 2
    weights.reshape(-1)[1] += 0.5  # an entry between the samples of a strided digest
    table.set_param("E", weights)
    with pytest.raises(IndexOutOfDateError, match="an edit") as err:
        list(nlp.pipe(TEXTS))
    assert "further training" in str(err.value)  # training is one cause among others


def test_a_fingerprint_of_an_older_scheme_asks_for_a_rebuild(indexed):
    nlp = spacy.load(indexed)
    component = nlp.get_pipe("segment_influence")
    component.fingerprint = component.fingerprint.split(":", 1)[1]  # as earlier versions stored it
    with pytest.raises(IndexFormatError, match="older version"):
        nlp(TEXTS[0])
