"""Plain-text tables of influence records for the terminal (`explain`).

Each hit's context is centred on its training span, which is always shown whole: the
left and right context are clipped with "..." to fit the width instead. Widths are
counted in terminal columns (East Asian wide characters take two, combining marks none),
and newlines in the text are shown as spaces, so that each hit stays on one line."""

import unicodedata
from typing import List, Tuple

from spacy.tokens import Doc

_LABEL_WIDTH = (5, 12)  # the label column grows with the labels, within these bounds
_SOURCE_WIDTH = (8, 22)


def format_influences(doc: Doc, width: int = 100) -> str:
    """A table per doc: each predicted entity with its label, then the training spans that
    support (+) and oppose (-) it: score (and, when refined, the estimated loss change on
    removal in nats), the training span's label, its doc and its context."""
    name = doc.user_data.get("id")
    lines = [_clip_right(f"== {name + ': ' if name else ''}{_one_line(doc.text)}", width)]
    records = doc._.influences or []
    if not records:
        lines.append("   (no entities predicted)")
        return "\n".join(lines)
    hits = [hit for record in records for key in ("supporters", "opposers") for hit in record[key]]
    label_width = _fit(max((_columns(hit["label"]) for hit in hits), default=0), *_LABEL_WIDTH)
    source_width = _fit(max((_columns(_source(hit)) for hit in hits), default=0), *_SOURCE_WIDTH)
    refined_width = len(" (+0.000 nats)") if any("refined" in hit for hit in hits) else 0
    heading = (
        f"     {'score':>8}{' ' * refined_width} {'label':<{label_width}} {'training doc':<{source_width}} context"
    )
    lines.append(heading.rstrip())
    context_width = width - _columns(heading) + len("context")
    for record in records:
        where = f"[tokens {record['start']}-{record['end']}]"
        probability = f" p={record['probability']:.3f}" if "probability" in record else ""
        lines.append(f"   {record['label']} {_one_line(record['text'])!r} {where}{probability}")
        for sign, key in (("+", "supporters"), ("-", "opposers")):
            for hit in record[key]:
                refined = f" ({hit['refined']:+.3f} nats)" if "refined" in hit else ""
                label = _pad(_clip_right(hit["label"], label_width), label_width)
                source = _pad(_clip_left(_source(hit), source_width), source_width)
                context = centred_context(hit["context"], hit["text"], context_width)
                lines.append(f"     {sign} {hit['score']:+.3f}{refined:<{refined_width}} {label} {source} {context}")
            if not record[key]:
                lines.append(f"     {sign} (no {key})")
    return "\n".join(lines)


def centred_context(context: str, span: str, width: int) -> str:
    """`context` ("left [span] right") in at most `width` columns, centred on "[span]":
    the sides are clipped with "..." and a side that needs less room leaves it to the
    other. The span is kept whole, and a side shrinks to no less than "...", even when
    that takes more than `width`."""
    left, right = (_one_line(side) for side in _split(context, span))
    marked = f"[{_one_line(span)}]"
    room = max(0, width - _columns(marked) - (1 if left else 0) - (1 if right else 0))
    left_room = max(room // 2, room - _columns(right))
    right_room = room - min(_columns(left), left_room)
    sides = (_clip_left(left, max(3, left_room)), _clip_right(right, max(3, right_room)))
    return " ".join(part for part in (sides[0], marked, sides[1]) if part)


def _split(context: str, span: str) -> Tuple[str, str]:
    """The left and right context around the first "[span]" that starts a word."""
    marked = f"[{span}]"
    start = context.find(marked)
    while start > 0 and context[start - 1] != " ":
        start = context.find(marked, start + 1)
    if start < 0:  # not the component's format: show it all after the span
        return "", context
    return context[:start].rstrip(), context[start + len(marked) :].lstrip()


def _one_line(text: str) -> str:
    """`text` with each run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def _source(hit: dict) -> str:
    return hit["doc_id"] if hit["doc_id"] is not None else f"#{hit['doc_index']}"


def _fit(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def _char_columns(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _columns(text: str) -> int:
    """The terminal columns `text` takes."""
    return sum(_char_columns(char) for char in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _columns(text))


def _clip_right(text: str, width: int) -> str:
    """`text`, or its start and "..." in at most `width` columns ("" when under 3)."""
    if _columns(text) <= width:
        return text
    return _take(text, width - 3) + "..." if width >= 3 else ""


def _clip_left(text: str, width: int) -> str:
    """`text`, or "..." and its end in at most `width` columns ("" when under 3)."""
    if _columns(text) <= width:
        return text
    if width < 3:
        return ""
    end = _take(text[::-1], width - 3)[::-1]
    while end and _char_columns(end[0]) == 0:  # a mark whose base was cut off
        end = end[1:]
    return "..." + end.lstrip()


def _take(text: str, width: int) -> str:
    """The longest start of `text` within `width` columns that ends with a whole word
    (any start, when `text` is a single word)."""
    taken: List[str] = []
    used = 0
    for char in text:
        used += _char_columns(char)
        if used > width:
            break
        taken.append(char)
    start = "".join(taken)
    if len(start) < len(text) and not text[len(start)].isspace() and " " in text.strip():
        start = start[: start.rfind(" ") + 1]
    return start.rstrip()
