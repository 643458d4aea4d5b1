"""A stale or corrupt index is refused with one clear error, never answered from."""

import re
import shutil

import pytest
import spacy
from spacy.tokens import DocBin
from thinc.api import Config
from typer.testing import CliRunner

from spacy_segment_influence import IndexCorruptError, IndexFormatError, IndexOutOfDateError
from spacy_segment_influence.cli import app

from ..conftest import TOK2VEC_CONFIG, TRAIN_DATA, make_examples, train

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


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":  # 64 bytes inverted in place: same size, still parseable for most files
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()


INDEX_FILES = [
    "h.npy",
    "r.npy",
    "offsets.npy",
    "dense_indptr.npy",
    "dense_columns.npy",
    "dense_values.npy",
    "norms.npy",
    "curvature.a.npy",
    "curvature.b.npy",
    "curvature.dense_cov.npy",
    "metadata.json",
    "settings.json",
    "checksums.json",
]


def test_every_index_file_is_covered(indexed):
    stored = {path.name for path in (indexed / "segment_influence" / "index").iterdir()}
    assert stored == set(INDEX_FILES)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("name", INDEX_FILES)
def test_a_damaged_index_file_is_named(indexed, tmp_path, name, how):
    copy = tmp_path / "model"
    shutil.copytree(indexed, copy)
    target = copy / "segment_influence" / "index" / name
    damage(target, how)
    with pytest.raises(IndexCorruptError, match=re.escape(str(target.parent))) as err:
        spacy.load(copy)
    assert name in str(err.value) or "checksum table" in str(err.value)


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_a_damaged_component_cfg_is_named(indexed, tmp_path, how):
    copy = tmp_path / "model"
    shutil.copytree(indexed, copy)
    damage(copy / "segment_influence" / "cfg", how)
    with pytest.raises(IndexCorruptError, match=re.escape(str(copy / "segment_influence" / "cfg"))):
        spacy.load(copy)


def test_cli_reports_a_corrupt_index_in_one_line(indexed, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(indexed, copy)
    damage(copy / "segment_influence" / "index" / "h.npy", "flip")
    result = CliRunner().invoke(app, ["explain", str(copy), TEXTS[0]])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "h.npy" in result.output and len(result.output.strip().splitlines()) == 1


def test_damaged_index_bytes_are_refused(indexed):
    from spacy_segment_influence import SegmentIndex

    data = bytearray(spacy.load(indexed).get_pipe("segment_influence").index.to_bytes())
    middle = len(data) // 2
    flipped = bytes(data[:middle]) + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + bytes(data[middle + 8 :])
    for damaged in (flipped, bytes(data[: len(data) // 2])):
        with pytest.raises(IndexCorruptError, match="serialized index is damaged"):
            SegmentIndex.from_bytes(damaged)
    assert len(SegmentIndex.from_bytes(bytes(data))) > 0


def test_index_rebuilds_a_pipeline_whose_index_is_damaged(indexed, tmp_path):
    copy = tmp_path / "model"
    train = tmp_path / "train.spacy"
    nlp = spacy.load(indexed)
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(train)
    written = CliRunner().invoke(app, ["index", str(indexed), str(train), str(copy), "--k", "3"])
    assert written.exception is None, written.output
    damage(copy / "segment_influence" / "index" / "h.npy", "truncate")
    result = CliRunner().invoke(app, ["index", str(copy), str(train), str(copy), "--k", "3"])  # in place
    assert result.exception is None, result.output
    assert [doc._.influences for doc in spacy.load(copy).pipe(TEXTS)] == [doc._.influences for doc in nlp.pipe(TEXTS)]
