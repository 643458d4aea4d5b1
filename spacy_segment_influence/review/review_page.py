"""The review page (`segment-influence report`): one self-contained HTML file (no network,
works from file://) on which a person works through the candidates of a `find-errors`
ranking, most suspicious first, and records a decision on each.

Every candidate asks one question: **is the current annotation of this region wrong?**

- accept (key a): yes, the annotation is wrong: an annotation error to fix;
- reject (key r): no, the annotation is right (the model or the ranking is wrong);
- skip (key s or space): not sure; exported as "ignore".

Decisions are kept in the browser's localStorage, so a reload loses nothing (the same
candidate, i.e. the same sentence, region and annotation, keeps its decision on every page
that shows it). "Export" downloads them in the style of Prodigy's `db-out`: one JSON line
per decided candidate, its record exactly as in the ranking file plus
`"answer": "accept" | "reject" | "ignore"`. The error finder reads that file back
(`find-errors --reviewed FILE`) keyed by `meta.doc_id` and the span's `token_start` and
`token_end` (inclusive, as in Prodigy).

Each card shows every entity of the sentence in two rows, the current annotation and the
model's prediction, and marks the tokens where they differ. The sentence's entities come
from `meta.sentence_gold_spans` and `meta.sentence_predicted_spans` (Prodigy spans) when the
records have them, else from all the ranking's candidates in the same sentence (every gold
and predicted entity is in one). Entities are drawn here, not by displaCy, which writes
labels unescaped and cannot mark the differing tokens; its label colours are reused.
Cards are laid out lazily by the browser (CSS content-visibility), so thousands stay usable.
"""

import html
import json
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from spacy.displacy.render import DEFAULT_LABEL_COLORS

from ..annotation_errors.methods import METHODS
from ..annotation_errors.records import read_ranking_records
from .page_assets import SCRIPT, STYLE
from .record_checks import check_record

SentenceKey = Tuple[Optional[str], Optional[int]]  # meta.doc_id, meta.doc_index
Entities = Tuple[List[dict], List[dict]]  # gold and predicted Prodigy spans of a sentence

KINDS = {
    "wrong_type": "the model marks the same tokens with another label",
    "wrong_boundary": "the model's entity starts or ends elsewhere (or splits or joins entities)",
    "missing": "the model marks an entity where nothing is annotated",
    "spurious": "an annotated entity where the model marks nothing",
    "agreed": "the model agrees with the annotation; ranked only for its score",
}
ANSWER_KEYS = {"accept": "a", "reject": "r", "ignore": "s"}
_ANSWER_TEXT = {"accept": "wrong", "reject": "right", "ignore": "skip"}
_COLORS = {**DEFAULT_LABEL_COLORS, "PER": DEFAULT_LABEL_COLORS["PERSON"], "MISC": "#ffeb80", "O": "#e4e4e4"}
_PALETTE = ("#aa9cfc", "#7aecec", "#feca74", "#ff9561", "#bfeeb7", "#c887fb", "#9cc9cc", "#ff8197")


def read_ranking(path: Path, limit: int = 0) -> Tuple[List[dict], Dict[SentenceKey, Entities], int]:
    """The first `limit` records (0 = all) of a `find-errors` ranking, the entities of
    every sentence (gathered from the whole file) and the number of records in it."""
    records: List[dict] = []
    count = 0

    def checked() -> Iterable[dict]:
        nonlocal count
        for _, record in read_ranking_records(path, check_record):
            count += 1
            if not limit or len(records) < limit:
                records.append(record)
            yield record

    sentences = sentence_entities(checked())
    return records, sentences, count


def sentence_entities(records: Iterable[dict]) -> Dict[SentenceKey, Entities]:
    """The gold and predicted entities of each sentence, from its candidates' spans."""
    sentences: Dict[SentenceKey, Entities] = {}
    for record in records:
        meta = record["meta"]
        gold, predicted = sentences.setdefault((meta.get("doc_id"), meta.get("doc_index")), ([], []))
        for spans, into in ((meta.get("gold_spans", []), gold), (meta.get("suggested_spans", []), predicted)):
            into.extend(span for span in spans if span not in into)
    return sentences


def render_review_page(
    records: Sequence[dict],
    sentences: Optional[Dict[SentenceKey, Entities]] = None,
    title: str = "Annotation error candidates",
    export_name: str = "reviewed.jsonl",
) -> str:
    """The HTML page for `records` as `errors.review_record` writes them, in order.
    `sentences`: the entities of each sentence (see `read_ranking`); by default gathered
    from `records` themselves."""
    for number, record in enumerate(records, start=1):
        check_record(record, f"Record {number}")
    sentences = sentence_entities(records) if sentences is None else sentences
    cards = "\n".join(_card(i, record, sentences) for i, record in enumerate(records))
    # JSON in a script element must not end it: "<", ">" and "&" are written as \u escapes
    data = json.dumps(list(records), ensure_ascii=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title><style>{STYLE}</style>'
        f'</head><body data-export="{html.escape(export_name)}">{_toolbar(title, records)}{_legend(records)}'
        f'{_summary(records)}<main id="cards">{cards}</main>'
        f'<script type="application/json" id="records">{data}</script><script>{SCRIPT}</script></body></html>\n'
    )


def _toolbar(title: str, records: Sequence[dict]) -> str:
    kinds = _counts(record["meta"].get("kind", "?") for record in records)
    labels = _counts(label for record in records for label in _labels(record))
    answers = {"none": "undecided", "accept": "wrong (accepted)", "reject": "right (rejected)", "ignore": "skipped"}
    return (
        f'<header id="bar"><h1>{html.escape(title)}</h1><div class="controls">'
        f'<progress id="progress" max="{len(records)}" value="0"></progress> <span><b id="done">0</b> of '
        f'{len(records)} decided: <b id="n-accept">0</b> wrong, <b id="n-reject">0</b> right, <b id="n-ignore">0'
        f"</b> skipped</span>{_select('f-kind', 'kind', {k: f'{k} ({n})' for k, n in kinds.items()})}"
        f"{_select('f-label', 'label', {k: f'{k} ({n})' for k, n in labels.items()})}"
        f'{_select("f-answer", "decision", answers)}<span>showing <b id="shown">0</b></span>'
        '<button id="next">next undecided (n)</button><button id="export">export decisions</button>'
        '<button id="clear">clear decisions</button>'
        '<span id="warning" hidden>this browser does not keep the decisions: export them before closing</span>'
        "</div></header>"
    )


def _select(name: str, what: str, options: Dict[str, str]) -> str:
    items = "".join(f'<option value="{html.escape(v)}">{html.escape(text)}</option>' for v, text in options.items())
    return f'<label>{what} <select id="{name}"><option value="">all</option>{items}</select></label>'


def _ranks_high_when(method: str) -> str:
    return METHODS[method].ranks_high_when if method in METHODS else "its score is high"


def _legend(records: Sequence[dict]) -> str:
    kinds = "".join(f'<dt><span class="kind">{k}</span></dt><dd>{html.escape(v)}</dd>' for k, v in KINDS.items())
    methods = "".join(
        f"<dt>{html.escape(m)}</dt><dd>ranks high when {html.escape(_ranks_high_when(m))}</dd>"
        for m in sorted({str(record["meta"].get("method")) for record in records})
    )
    keys = ", ".join(f"<kbd>{key}</kbd> {_ANSWER_TEXT[answer]}" for answer, key in ANSWER_KEYS.items())
    return (
        '<details id="legend" open><summary>How to review</summary>'
        "<p><b>The question for every candidate: is the current annotation of the outlined region wrong?</b> "
        "<b>Accept</b> = yes, the annotation is wrong (an annotation error to fix); <b>reject</b> = no, the "
        f"annotation is right; <b>skip</b> = not sure. Keys: {keys} (or <kbd>space</kbd>), <kbd>u</kbd> undo, "
        "<kbd>j</kbd>/<kbd>&darr;</kbd> next, <kbd>k</kbd>/<kbd>&uarr;</kbd> previous, <kbd>n</kbd> next "
        "undecided. Decisions stay in this browser; <i>export decisions</i> writes them as JSONL (each "
        'candidate\'s record plus <code>"answer"</code>: accept, reject, or ignore for skipped), which '
        "<code>find-errors --reviewed</code> reads back.</p><p>Each card shows the sentence twice, its "
        "<b>annotation</b> now and the <b>model</b>'s prediction, every entity with its label. "
        '<span class="d">Underlined</span> tokens differ between the rows; the <span class="r">outlined</span> '
        f"tokens are the candidate region.</p><dl>{kinds}</dl><p>The <b>score</b> orders the candidates: "
        f"higher = more suspicious; compare scores only within one ranking.</p><dl>{methods}</dl>"
        "<p>Held-out evidence: the dev regions whose gold labels the candidate's labels help fit most "
        '(<span class="supports">supports</span>) and hurt most (<span class="opposes">opposes</span>), by '
        "cosine influence: labels that oppose clean dev labels are suspect.</p></details>"
    )


def _summary(records: Sequence[dict]) -> str:
    """Candidates by kind and by the labels they involve (annotated or predicted)."""
    labels = list(_counts(label for record in records for label in _labels(record)))
    rows = []
    for kind in _counts(record["meta"].get("kind", "?") for record in records):
        of_kind = [_labels(record) for record in records if record["meta"].get("kind", "?") == kind]
        counts = [(label, sum(label in involved for involved in of_kind) or "") for label in labels]
        cells = "".join(
            f'<td data-kind="{html.escape(kind)}" data-label="{html.escape(label)}">{n}</td>'
            for label, n in [*counts, ("", len(of_kind))]
        )
        rows.append(f'<tr><th><span class="kind">{html.escape(kind)}</span></th>{cells}</tr>')
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    return (
        f'<table id="summary"><caption>{len(records)} candidates by kind and label (annotated or predicted); '
        f"click a count to filter</caption><tr><th></th>{head}<th>all</th></tr>{''.join(rows)}</table>"
    )


def _counts(values: Iterable[str]) -> Dict[str, int]:
    """How often each value occurs: kinds in KINDS' order, anything else sorted after."""
    counts: Dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    order = {kind: i for i, kind in enumerate(KINDS)}
    return dict(sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def _labels(record: dict) -> List[str]:
    """The entity labels a candidate involves, annotated or suggested (the label filter's)."""
    meta = record["meta"]
    return sorted({meta.get("label", "O"), meta.get("suggested_label", "O")} - {"O"})


def _card(i: int, record: dict, sentences: Dict[SentenceKey, Entities]) -> str:
    esc = html.escape
    meta, region = record["meta"], record["spans"][0]
    gold, predicted = _sentence(record, sentences)
    gold_tags, predicted_tags = _tags(len(record["tokens"]), gold), _tags(len(record["tokens"]), predicted)
    differ = {t for t, (g, p) in enumerate(zip(gold_tags, predicted_tags)) if g != p}
    inside = (region["token_start"], region["token_end"])
    rank, kind, score = esc(str(meta.get("rank", i + 1))), esc(meta.get("kind", "?")), meta.get("score")
    score_text = f"{score:.4g}" if isinstance(score, (int, float)) else "?"
    source = f"{esc(str(meta['doc_id']))}, " if meta.get("doc_id") else ""
    rows = "".join(
        f'<div class="row"><span class="which">{which}</span><span>{_row(record, spans, differ, inside)}</span></div>'
        for which, spans in (("annotation", gold), ("model", predicted))
    )
    buttons = "".join(
        f'<button data-answer="{a}"><kbd>{k}</kbd> {_ANSWER_TEXT[a]}</button>' for a, k in ANSWER_KEYS.items()
    )
    return (
        f'<section class="candidate" id="rank-{rank}" data-i="{i}" tabindex="-1"><h2><span class="rank">#{rank}'
        f'</span> <span class="kind">{kind}</span> {_headline(record)}<span class="decision"></span></h2>'
        f'<p class="meta">score {score_text} by {esc(str(meta.get("method", "?")))}; {source}sentence '
        f'{esc(str(meta.get("doc_index")))}</p>{rows}<div class="answers">{buttons}</div>'
        f"{_influenced(meta.get('influenced', []))}</section>"
    )


def _headline(record: dict) -> str:
    """What the model says about the region, in words (escaped)."""
    meta = record["meta"]
    kind = meta.get("kind")
    gold = _describe(record, meta.get("gold_spans", []))
    predicted = _describe(record, meta.get("suggested_spans", []))
    if kind == "agreed":
        method = str(meta.get("method"))
        reason = METHODS[method].in_short if method in METHODS else "its score"
        return f"The model agrees with the annotation ({gold}); ranked for {html.escape(reason)}"
    if kind == "wrong_type":
        return f"Annotated {gold}; the model says {html.escape(meta.get('suggested_label', '?'))}"
    if kind == "missing":
        return f"Not annotated; the model marks {predicted}"
    if kind == "spurious":
        return f"Annotated {gold}; the model marks no entity here"
    return f"Annotated {gold or 'nothing'}; the model marks {predicted or 'nothing'}"


def _describe(record: dict, spans: Sequence[dict]) -> str:
    text = record["text"]
    return ", ".join(
        f"&ldquo;{html.escape(text[s['start'] : s['end']])}&rdquo; {html.escape(s['label'])}" for s in spans
    )


def _sentence(record: dict, sentences: Dict[SentenceKey, Entities]) -> Entities:
    """The sentence's gold and predicted entities, the candidate's own always among them."""
    meta = record["meta"]
    gathered = sentences.get((meta.get("doc_id"), meta.get("doc_index")), ([], []))
    rows = []
    for whole, known, own in (
        ("sentence_gold_spans", gathered[0], "gold_spans"),
        ("sentence_predicted_spans", gathered[1], "suggested_spans"),
    ):
        spans = list(meta[whole] if whole in meta else known)
        spans += [span for span in meta.get(own, []) if span not in spans]
        rows.append(sorted(spans, key=lambda s: (s["token_start"], s["token_end"])))
    return rows[0], rows[1]


def _tags(n_tokens: int, spans: Sequence[dict]) -> List[Optional[Tuple[str, bool]]]:
    """Per token: (label, first token of its entity?), None outside entities."""
    tags: List[Optional[Tuple[str, bool]]] = [None] * n_tokens
    for span in spans:
        for t in range(span["token_start"], min(span["token_end"] + 1, n_tokens)):
            tags[t] = (span["label"], t == span["token_start"])
    return tags


def _row(record: dict, spans: Sequence[dict], differ: Set[int], region: Tuple[int, int]) -> str:
    """The sentence with `spans` as labelled marks (a span overlapping an earlier one is
    left out), the differing tokens underlined and the region outlined (whole marks)."""
    tokens = record["tokens"]
    starts: Dict[int, dict] = {}
    covered = -1
    for span in spans:
        if span["token_start"] > covered:
            starts[span["token_start"]] = span
            covered = span["token_end"]
    chunks: List[Tuple[int, int, str]] = []  # first and last token, markup
    t = 0
    while t < len(tokens):
        mark = starts.get(t)
        last = min(mark["token_end"], len(tokens) - 1) if mark else t
        words = "".join(
            (
                f'<span class="d">{html.escape(tokens[u]["text"])}</span>'
                if u in differ
                else html.escape(tokens[u]["text"])
            )
            + (" " if tokens[u].get("ws") and u < last else "")
            for u in range(t, last + 1)
        )
        chunks.append((t, last, _mark(words, mark["label"]) if mark else words))
        t = last + 1
    inside = [i for i, (first, last, _) in enumerate(chunks) if first <= region[1] and last >= region[0]]
    parts = []
    for i, (_, last, words) in enumerate(chunks):
        space = " " if tokens[last].get("ws") else ""
        opens, closes = inside and i == inside[0], inside and i == inside[-1]
        parts.append(('<span class="r">' if opens else "") + words + ("</span>" if closes else "") + space)
    return "".join(parts)


def _mark(inner: str, label: str) -> str:
    """An entity: `inner` markup on displaCy's colour for `label` (else a fixed pick from
    a palette), the escaped label after it."""
    color = _COLORS.get(label) or _PALETTE[zlib.crc32(label.encode("utf8")) % len(_PALETTE)]
    return f'<mark class="ent" style="background:{color}">{inner}<span class="lbl">{html.escape(label)}</span></mark>'


def _influenced(items: List[dict]) -> str:
    esc = html.escape
    rows = []
    for item in sorted(items, key=lambda i: -abs(i["score"])):
        verdict = "model agrees" if item.get("correct") else f"model predicts {esc(str(item.get('predicted')))}"
        direction = "supports" if item["score"] > 0 else "opposes"
        rows.append(
            f'<li><span class="{direction}">{direction} {item["score"]:+.3f}</span> {esc(str(item.get("doc_id")))} '
            f"({verdict}): {esc(item.get('left', ''))} {_mark(esc(item['text']), item['label'])} "
            f"{esc(item.get('right', ''))}</li>"
        )
    summary = f"held-out evidence ({len(items)})"
    return f'<details class="influenced"><summary>{summary}</summary><ul>{"".join(rows)}</ul></details>' if rows else ""
