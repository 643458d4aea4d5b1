"""`doc._.influences` and `span._.influences`: the records `segment_influence` stores per
predicted entity. They live in `doc.user_data` as JSON strings, so they come back from a
`DocBin` unchanged (msgpack would turn lists into tuples)."""

from typing import Any, Dict, List, Optional, cast

import srsly
from spacy.tokens import Doc, Span


def _user_data(doc: Doc) -> Dict[Any, Any]:
    """doc.user_data, whose keys for extensions are tuples (spaCy's own convention)."""
    return cast(Dict[Any, Any], doc.user_data)


def _get_doc_influences(doc: Doc) -> Optional[List[dict]]:
    raw = _user_data(doc).get(("segment_influence", None, None))
    return None if raw is None else srsly.json_loads(raw)


def _set_doc_influences(doc: Doc, records: Optional[List[dict]]) -> None:
    _user_data(doc)[("segment_influence", None, None)] = srsly.json_dumps(records)


def _get_span_influences(span: Span) -> Optional[dict]:
    raw = _user_data(span.doc).get(("segment_influence", span.start_char, span.end_char))
    return None if raw is None else srsly.json_loads(raw)


def _set_span_influences(span: Span, record: Optional[dict]) -> None:
    _user_data(span.doc)[("segment_influence", span.start_char, span.end_char)] = srsly.json_dumps(record)


if not Doc.has_extension("influences"):
    Doc.set_extension("influences", getter=_get_doc_influences, setter=_set_doc_influences)
if not Span.has_extension("influences"):
    Span.set_extension("influences", getter=_get_span_influences, setter=_set_span_influences)
