"""NER tag schemes of the JSONL corpora (`SCHEMES`): BIO ("O", "B-LABEL", "I-LABEL"; IOB1's
stray "I-" starts an entity), BILUO (also "L-LABEL", "U-LABEL") and IO ("O" and bare
labels: a maximal run of one label is one entity). Tags <-> `(start, end, label)` spans, with
the checks that word a malformed sequence."""

import re
from typing import Any, List, Tuple

from spacy.tokens import Doc
from spacy.training import biluo_to_iob
from spacy.training.iob_utils import doc_to_biluo_tags, tags_to_entities

from .exceptions import CorpusFormatError

SpanTriple = Tuple[int, int, str]
SCHEMES = ("bio", "biluo", "io")
_TAG_RES = {
    "bio": re.compile(r"O|[BI]-\S+"),
    "biluo": re.compile(r"O|[BILU]-\S+"),
    "io": re.compile(r"O|\S+"),
}
_EXPECTED = {"bio": "O, B-LABEL or I-LABEL", "biluo": "O, B-, I-, L- or U-LABEL", "io": "O or a label"}
_JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


class RecordError(Exception):
    """What is wrong with one record, before the file position is known."""


def tags_to_spans(tags: List[str], scheme: str = "bio") -> Tuple[List[SpanTriple], int]:
    """`(start, end, label)` spans of one sentence's tags in `scheme`, and the number of
    stray BIO I- tags read as entity starts. BILUO goes through spaCy's `biluo_to_iob`;
    a BILUO sequence that does not close its entities raises a RecordError."""
    if scheme == "io":
        runs = [f"I-{tag}" if tag != "O" else "O" for tag in tags]
        return _bio_spans(runs)[0], 0
    if scheme == "biluo":
        entities = _biluo_entities(tags)
        # spaCy's reader skips unclosed B- and mixed labels: the tags rebuilt must match
        rebuilt = ["O"] * len(tags)
        for start, end, label in entities:
            inner = [f"I-{label}"] * (end - start - 2)
            rebuilt[start:end] = [f"U-{label}"] if end - start == 1 else [f"B-{label}", *inner, f"L-{label}"]
        wrong = next((i for i, (a, b) in enumerate(zip(tags, rebuilt)) if a != b), None)
        if wrong is not None:
            raise _invalid_biluo(tags, wrong)
        return entities, 0
    return _bio_spans(tags)


def _biluo_entities(tags: List[str]) -> List[SpanTriple]:
    """spaCy's `tags_to_entities`, end exclusive; an I- or L- outside an entity raises
    a RecordError at the first such position."""
    try:
        return [(start, end + 1, label) for label, start, end in tags_to_entities(tags)]
    except ValueError:
        raise _invalid_biluo(tags, _first_failing(tags)) from None


def _first_failing(tags: List[str]) -> int:
    for k in range(1, len(tags) + 1):
        try:
            tags_to_entities(tags[:k])
        except ValueError:
            return k - 1
    return len(tags) - 1


def _invalid_biluo(tags: List[str], position: int) -> "RecordError":
    return RecordError(
        f"invalid BILUO sequence at position {position}: {tags[position]!r} does not open, continue or end an entity"
    )


def bio_to_spans(tags: List[str]) -> Tuple[List[SpanTriple], int]:
    """Turn BIO tags into `(start, end, label)` spans, also returning how many stray I-
    tags had to be read as entity starts. CorpusFormatError for anything but a list of
    "O", "B-LABEL" and "I-LABEL" strings."""
    try:
        return _bio_spans(tags)
    except RecordError as err:
        raise CorpusFormatError(str(err)) from None


def _bio_spans(tags: List[str]) -> Tuple[List[SpanTriple], int]:
    check_tags(tags)
    spans: List[SpanTriple] = []
    n_repairs = 0
    start, label = -1, ""
    for i, tag in enumerate(tags + ["O"]):
        prefix, tag_label = (tag[0], tag[2:]) if tag != "O" else ("O", "")
        if prefix == "I" and tag_label == label:
            continue
        if label:
            spans.append((start, i, label))
        if prefix == "I":
            n_repairs += 1
        start, label = i, tag_label
    return spans, n_repairs


def doc_to_bio(doc: Doc) -> List[str]:
    """BIO tags of `doc.ents`; tokens outside any entity are "O"."""
    return biluo_to_iob(doc_to_biluo_tags(doc, missing="O"))


def check_tags(tags: List[str], scheme: str = "bio") -> None:
    if not isinstance(tags, list):
        raise RecordError(f"tags must be a list of strings, got {json_type(tags)}")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not _TAG_RES[scheme].fullmatch(tag):
            raise RecordError(
                f"invalid tag {tag!r} at position {i} (expected {_EXPECTED[scheme]} in the {scheme} scheme)"
            )


def json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
