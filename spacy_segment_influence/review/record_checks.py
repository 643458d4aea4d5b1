"""The checks a review record passes before the review page renders it: a record that is no
`find-errors` output, or has a field of the wrong type, is one `CorpusFormatError` naming it."""

from typing import Optional

from ..exceptions import CorpusFormatError

# The Prodigy span lists a record's meta may carry
SPAN_LISTS = ("gold_spans", "suggested_spans", "sentence_gold_spans", "sentence_predicted_spans")


def check_record(record: dict, where: str) -> None:
    """CorpusFormatError naming `where` unless `record` is a review record the page can render."""
    fields = ("text", "tokens", "spans", "meta")
    if not isinstance(record, dict) or not all(key in record for key in fields) or not record["spans"]:
        raise CorpusFormatError(f"{where}: no text, tokens, spans or meta: was it written by find-errors?")
    span, meta = record["spans"][0] if isinstance(record["spans"], list) else None, record["meta"]
    if not isinstance(span, dict) or not all(key in span for key in ("token_start", "token_end", "label")):
        raise CorpusFormatError(
            f"{where}: its span lacks token_start, token_end or label: was it written by find-errors?"
        )
    sentence = (meta.get("doc_id"), meta.get("doc_index")) if isinstance(meta, dict) else ([],)
    span_lists = [meta.get(key, []) for key in SPAN_LISTS] if isinstance(meta, dict) else [None]
    if (
        not isinstance(record["text"], str)
        or not isinstance(record["tokens"], list)
        or not all(isinstance(value, (str, int, type(None))) for value in sentence)
        or not all(isinstance(spans, list) for spans in span_lists)
    ):
        raise CorpusFormatError(
            f"{where}: expected a string text, a list of tokens and a meta object (doc_id, doc_index, span "
            "lists): was it written by find-errors?"
        )
    wrong = _wrong_field(record)
    if wrong:
        raise CorpusFormatError(f"{where}: {wrong} has the wrong type: was it written by find-errors?")


def _wrong_field(record: dict) -> Optional[str]:
    """The first field of a review record that the page cannot render, None when all fit."""
    meta = record["meta"]
    if not all(isinstance(token, dict) and isinstance(token.get("text"), str) for token in record["tokens"]):
        return "tokens (objects with a string text)"
    for key in ("spans", *SPAN_LISTS):
        spans = record["spans"][:1] if key == "spans" else meta.get(key, [])
        offsets = ("start", "end") if key in ("gold_spans", "suggested_spans") else ()
        for span in spans:
            if not (
                isinstance(span, dict)
                and all(_is_int(span.get(field)) for field in ("token_start", "token_end", *offsets))
                and 0 <= span["token_start"] <= span["token_end"]
                and isinstance(span.get("label"), str)
            ):
                return f"{key} (token_start <= token_end, label)"
    for key in ("kind", "label", "suggested_label", "method"):
        if key in meta and not isinstance(meta[key], str):
            return f"meta.{key}"
    influenced = meta.get("influenced", [])
    if not isinstance(influenced, list) or not all(
        isinstance(item, dict)
        and isinstance(item.get("score"), (int, float))
        and not isinstance(item.get("score"), bool)
        and all(isinstance(item.get(field, ""), str) for field in ("text", "label", "left", "right"))
        and "text" in item
        and "label" in item
        for item in influenced
    ):
        return "meta.influenced"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
