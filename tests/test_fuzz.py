"""Property-based tests of the readers and the BIO conversion: any input ends in a result or
in one of the package's user-facing errors (`SegmentInfluenceError`), never another
exception. 1,000 examples per reader (the file readers are marked slow: 30-80 s each on a
loaded 2-core machine). Besides files of any shape, real find-errors rankings with 1-3
fields replaced by any JSON value (and lines dropped or repeated) go through `report`'s
reader and page, review decisions through `read_decisions`, and stored component cfgs
through `check_cfg`."""

import copy
import json
import warnings

import pytest
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_segment_influence import SegmentInfluenceError
from spacy_segment_influence.annotation_errors import ranked_regions, read_decisions
from spacy_segment_influence.annotation_errors.metrics import read_sentences
from spacy_segment_influence.corpus import read_jsonl_docs, read_jsonl_records
from spacy_segment_influence.pipeline.settings import check_cfg
from spacy_segment_influence.review.review_page import read_ranking, render_review_page
from spacy_segment_influence.tag_schemes import bio_to_spans

from .conftest import ranking

EXAMPLES = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = spacy.blank("en").vocab

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
# tags near the valid ones, where the edge cases are
tags = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-", "I-", "B", "O\n", "B-X Y", ""]) | st.text(
    max_size=5
)
tokens = st.sampled_from(["Anna", ".", "New York", "", " ", "\ud800", "\u2028"]) | st.text(max_size=4)


@st.composite
def records(draw):
    """Dicts shaped like corpus lines, with any field of any type or missing."""
    record = {
        "id": draw(st.text(max_size=3) | json_values),
        "tokens": draw(st.lists(tokens, max_size=5) | json_values),
        "ner_tags": draw(st.lists(tags, max_size=5) | json_values),
    }
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=1)):
        del record[key]
    return record


@st.composite
def ranking_records(draw):
    """Dicts shaped like find-errors' review records, fields of any type."""
    span = {
        "token_start": draw(st.integers(-2, 6) | json_values),
        "token_end": draw(st.integers(-2, 6) | json_values),
        "label": draw(tags | json_values),
        "start": draw(st.integers(-2, 20)),
        "end": draw(st.integers(-2, 20)),
    }
    meta = {
        "doc_id": draw(st.text(max_size=4) | json_values),
        "doc_index": draw(st.integers(0, 3) | json_values),
        "rank": draw(st.integers(0, 3) | json_values),
        "candidates": draw(st.integers(0, 3) | json_values),
    }
    record = {
        "text": draw(st.text(max_size=12) | json_values),
        "tokens": draw(st.lists(st.fixed_dictionaries({"text": st.text(max_size=3)}), max_size=4) | json_values),
        "spans": draw(st.lists(st.just(span), max_size=2) | json_values),
        "meta": draw(st.just(meta) | json_values),
        "answer": draw(st.sampled_from(["accept", "reject", "ignore"]) | json_values),
    }
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=2)):
        record.pop(key, None)
    return record


def lines_of(items):
    return st.lists(items.map(lambda r: json.dumps(r)) | st.text(max_size=20), max_size=4).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    )


corpus_files = st.binary(max_size=60) | lines_of(records())
ranking_files = st.binary(max_size=60) | lines_of(ranking_records())

RANKING = ranking()
# where a field of a review record can be replaced (dict keys, list positions)
FIELDS = [
    ("text",),
    ("tokens",),
    ("tokens", 0),
    ("tokens", 0, "text"),
    ("tokens", 0, "ws"),
    ("spans",),
    ("spans", 0),
    ("spans", 0, "token_start"),
    ("spans", 0, "token_end"),
    ("spans", 0, "label"),
    ("meta",),
    *(("meta", key) for key in RANKING[0]["meta"]),
    ("meta", "gold_spans", 0),
    ("meta", "gold_spans", 0, "start"),
    ("meta", "gold_spans", 0, "token_end"),
    ("meta", "suggested_spans", 0, "label"),
    ("meta", "influenced", 0),
    ("meta", "influenced", 0, "score"),
    ("meta", "influenced", 0, "text"),
    ("meta", "sentence_gold_spans"),
    ("answer",),
]


def replaced(record, field, value):
    """`record` with the value at `field` replaced (where the path exists)."""
    *parents, last = field
    node = record
    for key in parents:
        if not holds(node, key):
            return record
        node = node[key]
    if holds(node, last):
        node[last] = value
    return record


def holds(node, key) -> bool:
    if isinstance(node, dict):
        return isinstance(key, str) and key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


@st.composite
def damaged_rankings(draw, answers=False):
    """A real ranking (with answers, as a decisions file) with 1-3 fields replaced by any
    JSON value, and maybe a line dropped or repeated."""
    records = copy.deepcopy(RANKING)
    if answers:
        for record in records:
            record["answer"] = draw(st.sampled_from(["accept", "reject", "ignore"]))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(records) - 1))
        records[i] = replaced(records[i], draw(st.sampled_from(FIELDS)), draw(json_values))
    cut = draw(st.sampled_from(["whole", "drop", "repeat"]))
    i = draw(st.integers(0, len(records) - 1))
    if cut == "drop":
        del records[i]
    elif cut == "repeat":
        records.insert(i, records[i])
    return "".join(json.dumps(record) + "\n" for record in records).encode()


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "input.jsonl"


def ends_well(read, path, data: bytes):
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings (repairs, unknown labels) are fine
        try:
            read(path)
        except SegmentInfluenceError:
            pass


@pytest.mark.slow
@EXAMPLES
@given(data=corpus_files)
def test_corpus_reader(path, data):
    ends_well(lambda p: list(read_jsonl_docs(p, VOCAB)), path, data)


@pytest.mark.slow
@EXAMPLES
@given(data=corpus_files)
def test_jsonl_records_reader(path, data):
    ends_well(lambda p: list(read_jsonl_records(p)), path, data)


@pytest.mark.slow
@EXAMPLES
@given(data=corpus_files)
def test_corrections_reader(path, data):
    ends_well(read_sentences, path, data)


@pytest.mark.slow
@EXAMPLES
@given(data=ranking_files)
def test_ranking_readers(path, data):
    ends_well(lambda p: ranked_regions(record for _, record in read_jsonl_records(p)), path, data)
    ends_well(read_ranking, path, data)
    ends_well(read_decisions, path, data)


@EXAMPLES
@given(tag_list=st.lists(tags, max_size=8) | json_values)
def test_bio_to_spans(tag_list):
    try:
        spans, repairs = bio_to_spans(tag_list)
    except SegmentInfluenceError:
        return
    # a result covers only valid, non-overlapping token ranges
    assert repairs >= 0 and all(0 <= s < e <= len(tag_list) for s, e, _ in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.slow
@EXAMPLES
@given(data=damaged_rankings() | ranking_files)
def test_report_reads_and_renders(path, data):
    ends_well(lambda p: render_review_page(*read_ranking(p)[:2]), path, data)


@pytest.mark.slow
@EXAMPLES
@given(data=damaged_rankings(answers=True))
def test_decisions_reader(path, data):
    texts = {record["meta"]["doc_id"]: record["text"] for record in RANKING}
    ends_well(lambda p: read_decisions(p, texts), path, data)


CFG = {
    "ner": "crf_ner",
    "k": 5,
    "curvature": "kfac",
    "damping": 0.001,
    "normalize": True,
    "granularity": "entities",
    "dtype": "float32",
    "batch_size": 64,
    "refine": False,
}


@EXAMPLES
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(CFG)),
        json_values | st.integers(-5, 2000) | st.sampled_from(["exact", "tokens", "float16", "float33", "5"]),
        max_size=3,
    ),
    dropped=st.lists(st.sampled_from(sorted(CFG)), max_size=1),
)
def test_stored_cfg_check(changes, dropped):
    cfg = {key: value for key, value in {**CFG, **changes}.items() if key not in dropped}
    try:
        check_cfg(cfg, "cfg")
    except SegmentInfluenceError:
        return
    assert isinstance(cfg["k"], int) and 1 <= cfg["k"] <= 1000 and isinstance(cfg["normalize"], bool)
