"""A self-contained HTML page for reviewing ranked annotation-error candidates: each
candidate's sentence rendered with displaCy, once with the current annotation and once
with the model's suggestion, with its score and the held-out labels it supports and opposes most.
The page needs no network: displaCy's entity markup carries its own inline styles."""
import html
from typing import List, Sequence

from spacy import displacy

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
.candidate { border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
.candidate h2 { font-size: 1.05em; margin: 0.3em 0; }
.meta { color: #666; font-size: 0.9em; }
.row { display: flex; align-items: baseline; gap: 1em; }
.row > .which { width: 6em; flex: none; color: #666; font-size: 0.85em; }
.influenced { font-size: 0.9em; }
.supports { color: #1a7f37; } .opposes { color: #b42318; }
"""
# "O" marks a region the annotation leaves out; the four CoNLL types keep displaCy's colours.
_COLORS = {"O": "#e0e0e0"}


def render_report(records: Sequence[dict], title: str = "Annotation error candidates") -> str:
    """The HTML page for review records as `errors.review_record` writes them, in order."""
    for number, record in enumerate(records, start=1):
        if not record.get("spans") or "meta" not in record or "text" not in record:
            raise ValueError(f"Record {number} has no text, spans or meta: was it written by find-errors?")
    sections = "\n".join(_candidate_html(record) for record in records)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">{len(records)} candidates, most suspicious first.</p>"
        f"{sections}</body></html>\n"
    )


def _candidate_html(record: dict) -> str:
    meta = record["meta"]
    span = record["spans"][0]
    heading = (
        f"#{meta.get('rank', '?')} &middot; {html.escape(meta.get('kind', ''))} &middot; "
        f"{html.escape(span['label'])} &rarr; {html.escape(meta.get('suggested_label', '?'))}"
    )
    details = (
        f"score {meta.get('score', float('nan')):.4g} ({html.escape(str(meta.get('method')))}) &middot; "
        f"{html.escape(str(meta.get('doc_id')))} (doc {meta.get('doc_index')})"
    )
    current = _entities(record["text"], [span])
    suggested = _entities(record["text"], meta.get("suggested_spans", []))
    return (
        f"<section class=\"candidate\" id=\"rank-{meta.get('rank', '')}\"><h2>{heading}</h2>"
        f"<p class=\"meta\">{details}</p>"
        f"<div class=\"row\"><span class=\"which\">annotated</span>{current}</div>"
        f"<div class=\"row\"><span class=\"which\">model</span>{suggested}</div>"
        f"{_influenced_html(meta.get('influenced', []))}</section>"
    )


def _influenced_html(items: List[dict]) -> str:
    if not items:
        return ""
    rows = []
    for item in sorted(items, key=lambda i: -abs(i["score"])):
        text = f"{item['left']} {item['text']} {item['right']}".strip()
        start = len(item["left"]) + 1 if item["left"] else 0
        markup = _entities(text, [{"start": start, "end": start + len(item["text"]), "label": item["label"]}])
        verdict = "model agrees" if item["correct"] else f"model predicts {html.escape(item['predicted'])}"
        direction = "supports" if item["score"] > 0 else "opposes"
        rows.append(
            f"<li><span class=\"{direction}\">{direction} {item['score']:+.3f}</span> "
            f"{html.escape(str(item['doc_id']))} ({verdict}){markup}</li>"
        )
    heading = "Held-out (dev) labels it supports (+) and opposes (-) most, by cosine influence:"
    return f"<div class=\"influenced\">{heading}<ul>{''.join(rows)}</ul></div>"


def _entities(text: str, spans: Sequence[dict]) -> str:
    """displaCy markup of `text` with `spans` ({start, end, label} in characters); "O"
    spans are shown too, so that an unannotated region stays visible."""
    ents = [{"start": s["start"], "end": s["end"], "label": s["label"]} for s in spans]
    return displacy.render(
        {"text": text, "ents": ents, "title": None},
        style="ent",
        manual=True,
        page=False,
        minify=True,
        options={"colors": _COLORS},
    )
