import json
import warnings
from itertools import islice
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_segment_influence.annotation_errors.metrics import read_tags
from spacy_segment_influence.cli import app
from spacy_segment_influence.corpus import (
    BIORepairWarning,
    CorpusFormatError,
    convert_corpus,
    detect_scheme,
    read_docbin,
    read_docs,
    read_jsonl_docs,
    write_jsonl_docs,
)
from spacy_segment_influence.tag_schemes import bio_to_spans

# The shared CoNLL-2003 copy next to the checkout (../shared/data/conll2003); the test skips without it.
CONLL_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "conll2003" / "train_original.jsonl"

SAMPLE = [
    {
        "id": "s1",
        "tokens": ["Peter", "Blackburn", "visited", "New", "York", "."],
        "ner_tags": ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"],
    },
    {"id": "s2", "tokens": ["No", "entities", "here", "."], "ner_tags": ["O", "O", "O", "O"]},
    {
        "id": "s3",
        "tokens": ["EU", "rejects", "German", "British", "lamb"],
        "ner_tags": ["B-ORG", "O", "B-MISC", "B-MISC", "O"],
    },
    {
        "id": "s4",
        "tokens": ["Real", "Madrid", "(", "Spain", ")", "does", "n't", "lose", "."],
        "ner_tags": ["B-ORG", "I-ORG", "O", "B-LOC", "O", "O", "O", "O", "O"],
    },
]


def _write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf8")
    return path


def _write_records(path: Path, records) -> Path:
    return _write_lines(path, [json.dumps(record) for record in records])


def _records_from_spacy(path: Path):
    docs = DocBin().from_disk(path).get_docs(spacy.blank("en").vocab)
    tmp = path.with_suffix(".roundtrip.jsonl")
    write_jsonl_docs(docs, tmp)
    return [json.loads(line) for line in tmp.read_text(encoding="utf8").splitlines()]


def _run_convert(*args: Path):
    return CliRunner().invoke(app, ["convert"] + [str(arg) for arg in args])


def test_roundtrip_sample(tmp_path):
    src = _write_records(tmp_path / "in.jsonl", SAMPLE)
    assert convert_corpus(src, tmp_path / "out" / "train.spacy") == len(SAMPLE)
    assert _records_from_spacy(tmp_path / "out" / "train.spacy") == SAMPLE


def test_read_docbin_matches_docbin_and_restores_srsly(tmp_path):
    src = _write_records(tmp_path / "in.jsonl", SAMPLE)
    convert_corpus(src, tmp_path / "train.spacy")
    vocab = spacy.blank("en").vocab
    expected = list(DocBin().from_disk(tmp_path / "train.spacy").get_docs(vocab))
    got = read_docbin(tmp_path / "train.spacy", vocab)
    assert [d.to_json() for d in got] == [d.to_json() for d in expected]
    assert [d.user_data for d in got] == [d.user_data for d in expected] and got[0].user_data["id"] == "s1"
    assert "get_all" not in vars(srsly.msgpack.msgpack_decoders)


def test_read_docbin_names_a_file_that_is_not_a_docbin(tmp_path):
    src = _write_records(tmp_path / "train.jsonl", SAMPLE)
    with pytest.raises(ValueError, match=r"train\.jsonl: not a \.spacy"):
        read_docbin(src, spacy.blank("en").vocab)
    assert "get_all" not in vars(srsly.msgpack.msgpack_decoders)


@pytest.mark.skipif(not CONLL_TRAIN.exists(), reason=f"CoNLL-2003 JSONL not found at {CONLL_TRAIN}")
def test_roundtrip_conll_head(tmp_path):
    with CONLL_TRAIN.open(encoding="utf8") as file_:
        records = [json.loads(line) for line in islice(file_, 200)]
    src = _write_records(tmp_path / "conll.jsonl", records)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BIORepairWarning)
        assert convert_corpus(src, tmp_path / "conll.spacy") == 200
    assert _records_from_spacy(tmp_path / "conll.spacy") == records


# SAMPLE in CoNLL-2003's four columns and IOB1 tags (an entity starts with I- unless it
# follows one of the same type), two documents
SAMPLE_IOB = """-DOCSTART- -X- -X- O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
visited VBD B-VP O
New NNP B-NP I-LOC
York NNP I-NP I-LOC
. . O O

No DT B-NP O
entities NNS I-NP O
here RB B-ADVP O
. . O O

-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
British JJ I-NP B-MISC
lamb NN I-NP O

Real NNP B-NP I-ORG
Madrid NNP I-NP I-ORG
( ( O O
Spain NNP B-NP I-LOC
) ) O O
does VBZ B-VP O
n't RB I-VP O
lose VB I-VP O
. . O O
"""


def test_conll_iob_reads_like_the_jsonl(tmp_path):
    """spaCy's ner converter reads IOB1 and -DOCSTART- lines; ids are doc<d>_<s>."""
    iob = _write_lines(tmp_path / "train.iob", SAMPLE_IOB.splitlines())
    result = _run_convert(iob, tmp_path / "iob.spacy")
    assert result.exception is None, result.output
    assert "Wrote 4 docs" in result.output
    expected = [{**record, "id": id_} for record, id_ in zip(SAMPLE, ["doc0_0", "doc0_1", "doc1_0", "doc1_1"])]
    assert _records_from_spacy(tmp_path / "iob.spacy") == expected
    assert read_tags(iob) == {record["id"]: record["ner_tags"] for record in expected}
    as_text = _write_lines(tmp_path / "train.tsv", SAMPLE_IOB.splitlines())
    docs = list(read_docs(as_text, spacy.blank("en").vocab, file_format="iob"))
    assert [doc.text for doc in docs] == [doc.text for doc in read_docs(iob, spacy.blank("en").vocab)]


def test_conll_iob_errors_are_one_line(tmp_path):
    unknown = _write_lines(tmp_path / "train.tsv", SAMPLE_IOB.splitlines())
    result = _run_convert(unknown, tmp_path / "out.spacy")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert result.stderr.startswith(f"Error: {unknown}: cannot tell the format") and "--format" in result.stderr
    one_column = _write_lines(tmp_path / "bad.iob", ["Peter", "Smith"])
    result = _run_convert(one_column, tmp_path / "out.spacy")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert result.stderr.startswith(f"Error: {one_column}: not a CoNLL IOB file")
    assert not (tmp_path / "out.spacy").exists()


def test_read_sets_text_ents_and_id(tmp_path):
    src = _write_records(tmp_path / "in.jsonl", SAMPLE)
    docs = list(read_jsonl_docs(src, spacy.blank("en").vocab))
    assert docs[0].text == "Peter Blackburn visited New York."
    assert [(ent.text, ent.label_) for ent in docs[0].ents] == [("Peter Blackburn", "PER"), ("New York", "LOC")]
    assert docs[0].user_data["id"] == "s1"
    assert docs[3].text == "Real Madrid (Spain) doesn't lose."


def test_blank_lines_are_skipped(tmp_path):
    lines = ["", json.dumps(SAMPLE[0]), "   ", json.dumps(SAMPLE[1]), ""]
    src = _write_lines(tmp_path / "in.jsonl", lines)
    assert [doc.user_data["id"] for doc in read_jsonl_docs(src, spacy.blank("en").vocab)] == ["s1", "s2"]


@pytest.mark.parametrize(
    "tags,spans,repairs",
    [
        (["B-PER", "I-PER", "O"], [(0, 2, "PER")], 0),
        (["I-PER", "I-PER", "O"], [(0, 2, "PER")], 1),
        (["B-PER", "I-LOC", "I-LOC"], [(0, 1, "PER"), (1, 3, "LOC")], 1),
        (["B-PER", "B-PER", "O", "I-ORG"], [(0, 1, "PER"), (1, 2, "PER"), (3, 4, "ORG")], 1),
    ],
)
def test_bio_to_spans(tags, spans, repairs):
    assert bio_to_spans(tags) == (spans, repairs)


def test_stray_inside_tags_are_repaired_and_counted(tmp_path):
    records = [
        {"id": "a", "tokens": ["x", "y", "z"], "ner_tags": ["O", "I-PER", "I-PER"]},
        {"id": "b", "tokens": ["x", "y"], "ner_tags": ["B-ORG", "I-LOC"]},
    ]
    src = _write_records(tmp_path / "in.jsonl", records)
    with pytest.warns(BIORepairWarning, match=r"2 stray I- tag\(s\).*line 1"):
        convert_corpus(src, tmp_path / "out.spacy")
    assert _records_from_spacy(tmp_path / "out.spacy") == [
        {"id": "a", "tokens": ["x", "y", "z"], "ner_tags": ["O", "B-PER", "I-PER"]},
        {"id": "b", "tokens": ["x", "y"], "ner_tags": ["B-ORG", "B-LOC"]},
    ]


def test_write_generates_missing_ids(tmp_path):
    nlp = spacy.blank("en")
    docs = [nlp.make_doc("Hello world"), nlp.make_doc("Bye")]
    docs[1].user_data["id"] = "kept"
    assert write_jsonl_docs(docs, tmp_path / "sub" / "out.jsonl") == 2
    lines = (tmp_path / "sub" / "out.jsonl").read_text(encoding="utf8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["doc_0", "kept"]


GOOD = json.dumps(SAMPLE[0])


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ('{"id": "x", "tokens": ["a"]', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object, got array"),
        ('{"id": "x", "tokens": ["a"]}', "missing key(s) 'ner_tags'"),
        ('{"tokens": ["a"], "ner_tags": ["O"]}', "missing key(s) 'id'"),
        ('{"id": 3, "tokens": ["a"], "ner_tags": ["O"]}', "'id' must be a string, got number"),
        ('{"id": "x", "tokens": "a b", "ner_tags": ["O"]}', "'tokens' must be an array of strings, got string"),
        ('{"id": "x", "tokens": ["a", 1], "ner_tags": ["O", "O"]}', "'tokens'[1] must be a string, got number"),
        ('{"id": "x", "tokens": ["a"], "ner_tags": [null]}', "'ner_tags'[0] must be a string, got null"),
        ('{"id": "x", "tokens": ["a", "b"], "ner_tags": ["O"]}', "'tokens' has 2 items but 'ner_tags' has 1"),
        ('{"id": "x", "tokens": [], "ner_tags": []}', "'tokens' is empty"),
        ('{"id": "x", "tokens": ["a", "b"], "ner_tags": ["O", "X-PER"]}', "invalid tag 'X-PER' at position 1"),
        ('{"id": "x", "tokens": ["a"], "ner_tags": ["B-"]}', "invalid tag 'B-' at position 0"),
        ('{"id": "x", "tokens": ["a"], "ner_tags": ["PER"]}', "invalid tag 'PER' at position 0"),
        ('{"id": "x", "tokens": ["a", ""], "ner_tags": ["O", "O"]}', "token 1 is an empty string"),
        ('{"id": "x", "tokens": ["New York"], "ner_tags": ["B-LOC"]}', "token 0 ('New York') contains whitespace"),
    ],
)
def test_malformed_line_reports_file_and_line(tmp_path, bad_line, message):
    src = _write_lines(tmp_path / "bad.jsonl", [GOOD, "", bad_line, GOOD])
    with pytest.raises(CorpusFormatError) as err:
        list(read_jsonl_docs(src, spacy.blank("en").vocab))
    assert str(err.value).startswith(f"{src}:3: ")
    assert message in str(err.value)


def test_failed_convert_writes_nothing(tmp_path):
    src = _write_lines(tmp_path / "bad.jsonl", [GOOD, "not json"])
    with pytest.raises(CorpusFormatError):
        convert_corpus(src, tmp_path / "out" / "train.spacy")
    assert not (tmp_path / "out").exists()


def test_cli_convert(tmp_path):
    src = _write_records(tmp_path / "in.jsonl", SAMPLE)
    result = _run_convert(src, tmp_path / "train.spacy")
    assert result.exit_code == 0, result.output
    assert f"Wrote {len(SAMPLE)} docs" in result.output
    assert _records_from_spacy(tmp_path / "train.spacy") == SAMPLE


def test_cli_convert_reports_format_error_cleanly(tmp_path):
    src = _write_lines(tmp_path / "bad.jsonl", [GOOD, '{"id": "x", "tokens": ["a"], "ner_tags": ["O", "O"]}'])
    result = _run_convert(src, tmp_path / "train.spacy")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception  # a clean exit, not a crash
    assert result.stderr.strip() == f"Error: {src}:2: 'tokens' has 1 items but 'ner_tags' has 2"
    assert not (tmp_path / "train.spacy").exists()


DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"


@pytest.mark.parametrize("name", ["train", "train_corrected", "dev", "test"])
def test_demo_corpus_is_valid(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BIORepairWarning)
        docs = list(read_jsonl_docs(DEMO_DIR / f"{name}.jsonl", spacy.blank("en").vocab))
    assert len(docs) > 100


def test_demo_train_differs_from_gold_only_at_injected_errors():
    def load(name):
        return [json.loads(line) for line in (DEMO_DIR / name).read_text(encoding="utf8").splitlines()]

    noisy, gold = load("train.jsonl"), load("train_corrected.jsonl")
    changed = {n["id"] for n, g in zip(noisy, gold) if n["ner_tags"] != g["ner_tags"]}
    assert [(n["id"], n["tokens"]) for n in noisy] == [(g["id"], g["tokens"]) for g in gold]
    assert changed == {error["id"] for error in load("injected_errors.jsonl")}


def test_cli_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, monkeypatch):
    not_docbin = tmp_path / "bad.spacy"
    not_docbin.write_text("not a DocBin")
    result = CliRunner().invoke(app, ["split-folds", str(not_docbin), str(tmp_path / "folds")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith(f"Error: {not_docbin}: not a .spacy (DocBin) file")
    ranking = _write_lines(tmp_path / "ranking.jsonl", ["", "{not json"])
    result = CliRunner().invoke(app, ["evaluate-errors", str(ranking), str(ranking), str(ranking)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith(f"Error: {ranking}:2: invalid JSON")

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant")

    monkeypatch.setattr("spacy_segment_influence.corpus.convert_corpus", broken)
    result = _run_convert(_write_records(tmp_path / "in.jsonl", SAMPLE), tmp_path / "out.spacy")
    assert isinstance(result.exception, ValueError) and "an internal invariant" in str(result.exception)


def _random_sentence(rng, n_tokens: int, labels=("PER", "LOC", "ORG")):
    """Random non-overlapping entities; no two entities of one label touch (IO can't
    separate them)."""
    spans, i, last = [], 0, None
    while i < n_tokens:
        if rng.random() < 0.3:
            length = int(rng.integers(1, 4))
            label = str(rng.choice([x for x in labels if not (last and last[1] == i and last[2] == x)]))
            end = min(i + length, n_tokens)
            spans.append((i, end, label))
            last = (i, end, label)
            i = end
        else:
            i += 1
    return spans


def _tags(spans, n_tokens, scheme):
    tags = ["O"] * n_tokens
    for start, end, label in spans:
        for i in range(start, end):
            if scheme == "io":
                tags[i] = label
            elif scheme == "bio":
                tags[i] = ("B-" if i == start else "I-") + label
            else:
                first, last = i == start, i == end - 1
                tags[i] = ("U-" if first and last else "B-" if first else "L-" if last else "I-") + label
    return tags


def test_every_scheme_reads_the_same_entities(tmp_path):
    """BIO, BILUO and IO files of the same random entities convert to the same docs, and
    auto-detection picks each file's scheme."""
    import numpy

    rng = numpy.random.default_rng(0)
    sentences = [(n, _random_sentence(rng, n)) for n in rng.integers(1, 12, size=200)]
    converted = {}
    for scheme in ("bio", "biluo", "io"):
        records = [
            {"id": f"s{i}", "tokens": [f"w{j}" for j in range(n)], "ner_tags": _tags(spans, n, scheme)}
            for i, (n, spans) in enumerate(sentences)
        ]
        src = _write_records(tmp_path / f"{scheme}.jsonl", records)
        assert detect_scheme(src) == scheme
        out = tmp_path / f"{scheme}.spacy"
        result = CliRunner().invoke(app, ["convert", str(src), str(out)])
        assert result.exception is None, result.output
        converted[scheme] = [
            [(e.start, e.end, e.label_) for e in doc.ents] for doc in read_docbin(out, spacy.blank("en").vocab)
        ]
    assert converted["bio"] == converted["biluo"] == converted["io"] == [spans for _, spans in sentences]


@pytest.mark.parametrize(
    "tags,position",
    [(["B-PER", "O"], 0), (["B-PER", "L-LOC"], 0), (["I-PER"], 0), (["U-PER", "L-PER"], 1), (["B-PER", "I-PER"], 0)],
)
def test_invalid_biluo_names_the_line_and_position(tmp_path, tags, position):
    src = _write_records(tmp_path / "bad.jsonl", [{"id": "x", "tokens": ["a"] * len(tags), "ner_tags": tags}])
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "o.spacy"), "--scheme", "biluo"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert f"{src}:1: invalid BILUO sequence at position {position}" in result.output
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "o.spacy"), "--scheme", "iob"])
    assert result.exit_code == 1 and "Unknown --scheme 'iob'" in result.output
