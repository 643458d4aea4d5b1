"""Plain-text rendering of influence records for the terminal."""
from spacy.tokens import Doc


def format_influences(doc: Doc, width: int = 100) -> str:
    """A readable table: each predicted entity, then its supporters (+) and opposers (-)
    with score (and, when refined, the estimated loss change on removal), label, training
    doc and context."""
    name = doc.user_data.get("id")
    lines = [f"== {name + ': ' if name else ''}{_clip(doc.text, width)}"]
    records = doc._.influences or []
    if not records:
        lines.append("   (no entities predicted)")
    for record in records:
        lines.append(f"   {record['text']!r} {record['label']} [tokens {record['start']}-{record['end']}]")
        for sign, key in (("+", "supporters"), ("-", "opposers")):
            for hit in record[key]:
                source = hit["doc_id"] if hit["doc_id"] is not None else f"#{hit['doc_index']}"
                refined = f" ({hit['refined']:+.3f} nats)" if "refined" in hit else ""
                lines.append(
                    f"     {sign} {hit['score']:+.3f}{refined} {hit['label']:<6} {source:<22} "
                    f"{_clip(hit['context'], width - 40 - len(refined))}"
                )
            if not record[key]:
                lines.append(f"     {sign} (no {key})")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
