"""The review's outputs: the training corpus with the accepted fixes, and the decisions as
Prodigy-style JSONL (the records `find-errors` wrote, each with its `answer`), which
`find-errors --reviewed` and Prodigy's `db-in` read."""

import copy
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import srsly
from spacy.tokens import Doc, DocBin, Span

from ..exceptions import DataError
from ..storage.atomic import write_atomic
from .store import Entity, ReviewStore, iter_decided


def apply_decisions(docs: Sequence[Doc], store: ReviewStore, remove: bool = False) -> Tuple[List[Doc], Dict[str, int]]:
    """Copies of `docs` with each accepted candidate's region annotated as the reviewer
    said (its gold entities replaced by the corrected ones); with `remove`, the sentences
    with an accepted candidate are left out instead. Also returns counts of what changed.
    DataError when a decision's sentence is not in `docs` (another corpus)."""
    fixes: Dict[int, List[Tuple[int, int, List[Entity]]]] = {}
    for candidate, decision in iter_decided(store):
        record, index = candidate.record, candidate.doc_index
        if not 0 <= index < len(docs) or docs[index].text != record["text"]:
            raise DataError(
                f"{store.path}: candidate {candidate.id}'s sentence is not sentence {index} of the corpus: "
                "decisions made on another corpus?"
            )
        if decision.answer == "accept":
            span = record["spans"][0]
            fixes.setdefault(index, []).append((span["token_start"], span["token_end"] + 1, decision.entities or []))
    out: List[Doc] = []
    for i, doc in enumerate(docs):
        if i not in fixes:
            out.append(doc)
        elif not remove:
            out.append(_fixed(doc, fixes[i]))
    counts = {"fixed regions": sum(map(len, fixes.values())), "changed sentences": len(fixes), "sentences": len(out)}
    return out, counts


def _fixed(doc: Doc, fixes: List[Tuple[int, int, List[Entity]]]) -> Doc:
    """A copy of `doc` whose entities touching each fixed region, or the corrected
    entities (a fix may widen a span beyond its region), are replaced by the corrected
    ones; tokens left unannotated (missing) stay so. Two regions fixed to the same
    entity add it once; DataError when their fixes overlap otherwise."""
    fixed = copy.deepcopy(doc)
    added = sorted(set(entity for _, _, entities in fixes for entity in entities))
    for (start, end, label), (next_start, next_end, next_label) in zip(added, added[1:]):
        if next_start < end:
            raise DataError(
                f"Sentence {doc.user_data.get('id', doc.text[:40])!r}: the accepted fixes {doc[start:end].text!r} "
                f"({label}) and {doc[next_start:next_end].text!r} ({next_label}) overlap: undo one of them"
            )
    covered = [(start, end) for start, end, _ in fixes] + [(start, end) for start, end, _ in added]
    kept = [ent for ent in fixed.ents if not any(ent.start < end and start < ent.end for start, end in covered)]
    spans = [Span(fixed, start, end, label=label) for start, end, label in added]
    missing = [fixed[t.i : t.i + 1] for t in fixed if t.ent_iob_ == "" and not any(s <= t.i < e for s, e in covered)]
    fixed.set_ents(kept + spans, missing=missing, default="outside")
    return fixed


def write_corpus(docs: Sequence[Doc], path: Path) -> None:
    """`docs` as a .spacy file, all or nothing."""
    write_atomic(path, DocBin(docs=docs, store_user_data=True).to_bytes())


def decision_records(store: ReviewStore) -> List[dict]:
    """The decided candidates' review records with their answer (accept: the label is
    wrong; reject: it is right; ignore: skipped), and for accepted ones the corrected
    entities (meta.corrected_spans, Prodigy spans)."""
    out = []
    for candidate, decision in iter_decided(store):
        record = copy.deepcopy(candidate.record)
        record["answer"] = decision.answer
        record["meta"].pop("why", None)
        record["meta"]["action"] = decision.action
        if decision.entities is not None:
            tokens = record["tokens"]
            record["meta"]["corrected_spans"] = [
                {
                    "start": tokens[s]["start"],
                    "end": tokens[e - 1]["end"],
                    "token_start": s,
                    "token_end": e - 1,
                    "label": label,
                }
                for s, e, label in decision.entities
            ]
        out.append(record)
    return out


def decisions_jsonl(store: ReviewStore) -> str:
    return "".join(srsly.json_dumps(record) + "\n" for record in decision_records(store))
