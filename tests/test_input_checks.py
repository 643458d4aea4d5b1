"""Input that used to be dropped, changed or accepted without a word: each case of issue 15
now warns with counts and examples, or stops with one line naming the file."""

import re
import warnings

import pytest
import srsly
from spacy.tokens import DocBin, Span
from typer.testing import CliRunner

from spacy_segment_influence import ConfigError, CorpusFormatError, DataError, UnknownLabelWarning
from spacy_segment_influence.annotation_errors import Corrections, evaluate_ranking, read_decisions
from spacy_segment_influence.cli import app
from spacy_segment_influence.review.review_page import render_review_page

from .conftest import EVIL, HELD_OUT, JSONL_SENTENCES, TRAIN_DATA, make_examples, ranked_lines, ranking


def relabelled(nlp, label_of):
    """The training docs, each entity relabelled by `label_of(label)`, with ids."""
    docs = []
    for i, eg in enumerate(make_examples(nlp)):
        doc = eg.reference
        doc.ents = [Span(doc, e.start, e.end, label=label_of(e.label_)) for e in doc.ents]
        doc.user_data["id"] = f"train_{i}"
        docs.append(doc)
    return docs


def one_line_error(result, *fragments):
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_index_warns_on_entities_with_unknown_labels(trained_tok2vec_nlp, tmp_path):
    nlp = trained_tok2vec_nlp
    train = tmp_path / "train.spacy"
    DocBin(
        docs=relabelled(nlp, lambda label: "ORGANISATION" if label == "ORG" else label), store_user_data=True
    ).to_disk(train)
    component = nlp.add_pipe("segment_influence", name="unknown")
    try:
        with pytest.warns(UnknownLabelWarning, match=r"2 of 8 entities .*ORGANISATION \(2\).*'Apple' ORGANISATION"):
            component.initialize(lambda: [], nlp=nlp, train_path=train, show_progress=False)
    finally:
        nlp.remove_pipe("unknown")


def test_index_and_find_errors_say_when_no_label_is_known(trained_tok2vec_nlp, tmp_path):
    nlp = trained_tok2vec_nlp
    nlp.to_disk(tmp_path / "model")
    train = tmp_path / "train.spacy"
    DocBin(docs=relabelled(nlp, str.lower), store_user_data=True).to_disk(train)
    result = CliRunner().invoke(app, ["index", str(tmp_path / "model"), str(train), str(tmp_path / "out")])
    one_line_error(result, "none of its 8 entities has a label the model knows", "per (2)")
    out = tmp_path / "ranking.jsonl"
    args = ["find-errors", str(tmp_path / "model"), str(train), "--method", "loss", "--folds", "0", "--out", str(out)]
    one_line_error(CliRunner().invoke(app, args), "the training corpus: none of its 8 entities")


def test_validate_says_when_no_label_is_known(trained_tok2vec_nlp):
    from spacy_segment_influence import validate

    docs = relabelled(trained_tok2vec_nlp, str.lower)
    with pytest.raises(DataError, match="validate: the training sample: none of its 8 entities"):
        validate(trained_tok2vec_nlp, docs, docs)


def write_jsonl(path, records):
    srsly.write_jsonl(path, records)
    return path


def test_convert_refuses_duplicate_ids(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [*JSONL_SENTENCES, {**JSONL_SENTENCES[1], "id": "a_0"}])
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.spacy")])
    one_line_error(result, f"{src}:3: id 'a_0' repeats line 1")
    assert not (tmp_path / "out.spacy").exists()


def test_evaluate_errors_checks_the_tokens_of_each_id(tmp_path):
    original = write_jsonl(tmp_path / "original.jsonl", JSONL_SENTENCES)
    swapped = [
        {**JSONL_SENTENCES[0], "tokens": JSONL_SENTENCES[1]["tokens"]},
        {**JSONL_SENTENCES[1], "tokens": JSONL_SENTENCES[0]["tokens"]},
    ]
    corrected = write_jsonl(tmp_path / "corrected.jsonl", swapped)
    meta = {"doc_id": "a_0", "rank": 1, "candidates": 1}
    ranked = write_jsonl(tmp_path / "ranking.jsonl", [{"meta": meta, "spans": [{"token_start": 0, "token_end": 0}]}])
    result = CliRunner().invoke(app, ["evaluate-errors", str(ranked), str(original), str(corrected)])
    one_line_error(result, "'a_0' has other tokens in", str(corrected), str(original))
    duplicated = write_jsonl(tmp_path / "duplicated.jsonl", [*JSONL_SENTENCES, JSONL_SENTENCES[0]])
    result = CliRunner().invoke(app, ["evaluate-errors", str(ranked), str(duplicated), str(original)])
    one_line_error(result, f"{duplicated}:3: id 'a_0' repeats line 1")


def test_an_empty_ranking_is_an_error_not_full_recall(tmp_path):
    original = write_jsonl(tmp_path / "original.jsonl", JSONL_SENTENCES)
    corrected = write_jsonl(
        tmp_path / "corrected.jsonl", [{**JSONL_SENTENCES[0], "ner_tags": ["O"] * 3}, JSONL_SENTENCES[1]]
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(app, ["evaluate-errors", str(empty), str(original), str(corrected)])
    one_line_error(result, f"{empty}: the ranking is empty")
    with pytest.raises(DataError, match="empty"):
        evaluate_ranking([], Corrections.from_files(original, corrected))


def test_convert_names_the_byte_that_is_not_utf8(tmp_path):
    src = tmp_path / "latin1.jsonl"
    first = srsly.json_dumps(JSONL_SENTENCES[0]) + "\n"
    src.write_bytes(first.encode() + '{"id": "b", "tokens": ["Z\xfcrich"], "ner_tags": ["B-LOC"]}\n'.encode("latin-1"))
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.spacy")])
    offset = len(first.encode()) + len('{"id": "b", "tokens": ["Z')
    one_line_error(result, f"{src}:2: not UTF-8", f"byte offset {offset}")


def test_convert_of_an_empty_file_is_an_error(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.spacy")])
    one_line_error(result, f"{src}: no sentences")
    assert not (tmp_path / "out.spacy").exists()


@pytest.fixture(scope="module")
def explained(trained_tok2vec_nlp):
    nlp = trained_tok2vec_nlp
    component = nlp.add_pipe("segment_influence", name="explainer")
    component.initialize(lambda: make_examples(nlp), nlp=nlp, show_progress=False)
    yield component, nlp(TRAIN_DATA[0][0])
    nlp.remove_pipe("explainer")


def test_explain_refuses_an_empty_span(explained):
    component, doc = explained
    with pytest.raises(DataError, match="is empty"):
        component.explain(doc[0:0])


@pytest.mark.parametrize("k", [0, 1.5, "5", True, 100000])
def test_explain_refuses_k_that_is_not_a_small_positive_integer(explained, k):
    component, doc = explained
    with pytest.raises(ConfigError, match=f"k must be an integer from 1 to 1000, got {k!r}"):
        component.explain(doc[0:2], k=k)
    assert len(component.explain(doc[0:2], k=1)["supporters"]) == 1


@pytest.mark.parametrize(("option", "message"), [("--k", "k must be an integer"), ("--limit", "--limit must be >= 0")])
def test_cli_explain_refuses_k_below_one_and_a_negative_limit(tmp_path, option, message):
    result = CliRunner().invoke(app, ["explain", str(tmp_path), "Anna", option, "-1"])
    one_line_error(result, message)


def test_labels_are_escaped_wherever_they_reach_the_page():
    records = ranking()
    for record in records:
        record["meta"].update(
            suggested_label=EVIL, influenced=[{**item, "label": EVIL, "predicted": EVIL} for item in HELD_OUT]
        )
    page = render_review_page(records)
    assert "<img" not in page


def test_known_labels_pass_silently(trained_tok2vec_nlp):
    from spacy_segment_influence.ner.known_labels import check_known_labels

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_known_labels(relabelled(trained_tok2vec_nlp, str), trained_tok2vec_nlp.get_pipe("crf_ner").labels, "x")


# -- issue 24: input that silently changed meaning ------------------------------------------


def test_convert_refuses_a_bio_file_with_a_bare_label_and_names_the_line(tmp_path):
    """One "B_MISC" typo used to flip detection to IO: "B-LOC" became a label."""
    lines = [{**JSONL_SENTENCES[i % 2], "id": f"a_{i}"} for i in range(30)]
    lines[17] = {**lines[17], "ner_tags": ["B_MISC", "O", "B-LOC"]}
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.spacy")])
    one_line_error(result, f"{src}: mixed tag schemes: line(s) 18 have bare labels (IO)")
    assert not (tmp_path / "out.spacy").exists()
    io = write_jsonl(tmp_path / "io.jsonl", [{**s, "ner_tags": ["PER", "O", "LOC"]} for s in JSONL_SENTENCES])
    assert CliRunner().invoke(app, ["convert", str(io), str(tmp_path / "io.spacy")]).exception is None


def decided(records, *answers):
    return [{**record, "answer": answer} for record, answer in zip(records, answers)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (lambda r: decided(r, "accept", "maybe"), ":2: 'answer' must be accept, reject or ignore, got 'maybe'"),
        (lambda r: r, "no record has an answer (accept, reject or ignore)"),
        (lambda r: decided([r[0], r[0]], "accept", "reject"), ":2: reject contradicts line 1 on the same region"),
        (lambda r: decided([{**r[0], "text": "Another sentence ."}], "accept"), ":1: its text differs from sentence"),
    ],
)
def test_read_decisions_refuses_what_it_cannot_use(tmp_path, lines, message):
    records = ranking()
    path = write_jsonl(tmp_path / "reviewed.jsonl", lines(records))
    texts = {r["meta"]["doc_id"]: r["text"] for r in records}
    with pytest.raises(CorpusFormatError, match=re.escape(message)):
        read_decisions(path, texts)


def test_read_decisions_counts_a_repeated_decision_once(tmp_path):
    records = ranking()
    path = write_jsonl(tmp_path / "reviewed.jsonl", decided([records[0], records[0], records[1]], *["accept"] * 3))
    assert list(read_decisions(path).values()) == [True, True]


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([("a_0", 0, 0), ("a_0", 0, 0)], "Ranking line 2 repeats the region of line 1"),
        ([("a_0", 2, 3)], "Ranking line 1: token_end 3 is past the end of sentence 'a_0' (3 tokens)"),
    ],
)
def test_evaluate_errors_refuses_repeated_regions_and_tokens_past_the_sentence(tmp_path, regions, message):
    original = write_jsonl(tmp_path / "original.jsonl", JSONL_SENTENCES)
    corrected = write_jsonl(
        tmp_path / "corrected.jsonl", [{**JSONL_SENTENCES[0], "ner_tags": ["O"] * 3}, JSONL_SENTENCES[1]]
    )
    ranked = write_jsonl(tmp_path / "ranking.jsonl", ranked_lines(*regions))
    result = CliRunner().invoke(app, ["evaluate-errors", str(ranked), str(original), str(corrected)])
    one_line_error(result, message)


def test_evaluate_errors_refuses_corrected_equal_to_original(tmp_path):
    original = write_jsonl(tmp_path / "original.jsonl", JSONL_SENTENCES)
    same = write_jsonl(tmp_path / "same.jsonl", JSONL_SENTENCES)
    ranked = write_jsonl(tmp_path / "ranking.jsonl", ranked_lines(("a_0", 0, 0)))
    result = CliRunner().invoke(app, ["evaluate-errors", str(ranked), str(original), str(same)])
    one_line_error(result, f"{same} has the same labels as {original} everywhere")


def test_an_input_is_never_the_output(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", JSONL_SENTENCES)
    ranked = write_jsonl(tmp_path / "ranking.jsonl", ranking())
    before = {path: path.read_bytes() for path in (corpus, ranked)}
    folds = tmp_path / "train_1.spacy"
    assert CliRunner().invoke(app, ["convert", str(corpus), str(folds)]).exception is None
    before[folds] = folds.read_bytes()
    for args in (
        ["split-folds", str(folds), str(tmp_path)],
        ["convert", str(corpus), str(corpus)],
        ["report", str(ranked), "--out", str(ranked)],
        ["evaluate-errors", str(ranked), str(corpus), str(corpus), "--out", str(corpus)],
    ):
        one_line_error(CliRunner().invoke(app, args), "is both an input and the output")
    assert {path: path.read_bytes() for path in before} == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.update(tokens=["a", "b"]),
        lambda r: r["tokens"][0].update(text=3),
        lambda r: r["spans"][0].update(token_start="x"),
        lambda r: r["meta"].update(gold_spans=["x"]),
        lambda r: r["meta"].update(gold_spans=[{"token_start": "a", "token_end": 1, "label": "X"}]),
        lambda r: r["meta"].update(influenced="x"),
        lambda r: r["meta"].update(influenced=[1]),
        lambda r: r["meta"].update(kind=3),
        lambda r: r["meta"].update(label=[1]),
        lambda r: r["meta"].update(suggested_label={}),
    ],
)
def test_report_refuses_fields_of_the_wrong_type_in_one_line(tmp_path, damage):
    records = ranking()
    damage(records[0])
    path = write_jsonl(tmp_path / "ranking.jsonl", records)
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "page.html")])
    one_line_error(result, f"{path}:1: ", "has the wrong type")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "tokens": ["x"], "ner_tags": ["O"], "n": ' + "9" * 5000 + "}", "invalid JSON (Exceeds the limit"),
        ('{"id": "a", "tokens": ["x"], "ner_tags": ["O"], "n": ' + "[" * 100_000 + "]" * 100_000 + "}", "too deeply"),
    ],
)
def test_json_that_python_cannot_parse_is_one_line(tmp_path, line, message):
    src = tmp_path / "in.jsonl"
    src.write_text(line + "\n")
    one_line_error(CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.spacy")]), f"{src}:1:", message)


def test_a_conll_file_that_is_not_utf8_is_one_line(tmp_path):
    src = tmp_path / "in.iob"
    src.write_bytes(b"Anna B-PER\nvisited O\n\nRom\xe9 B-LOC\n")
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.spacy")])
    one_line_error(result, f"{src}:4: not UTF-8 text (byte offset 25")
