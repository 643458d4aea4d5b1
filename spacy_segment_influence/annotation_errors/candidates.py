"""Candidates for annotation errors: regions of training sentences where an error could
sit (every gold entity, and every place where the model's prediction disagrees with gold),
and the head's view of a corpus they are scored on."""

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.tokens import Doc

from ..influence.segments import Segment
from ..ner import bridge
from ..ner.bridge import LabelledBatch
from ..ner.tagger import CRFEntityRecognizer

Entity = Tuple[int, int, str]  # token start, token end (exclusive), label


@dataclass(frozen=True)
class Candidate:
    """Tokens [start, end) of training sentence `doc_index`, with the gold and predicted
    entities inside. `kind` names the annotation error the prediction suggests:
    agreed (none), wrong_type, wrong_boundary, missing (predicted, not annotated) or
    spurious (annotated, not predicted)."""

    doc_index: int
    start: int
    end: int
    kind: str
    gold: Tuple[Entity, ...]
    predicted: Tuple[Entity, ...]

    @property
    def label(self) -> str:
        """The current (gold) label of the region; "O" when nothing is annotated."""
        return self.gold[0][2] if self.gold else "O"

    @property
    def suggested(self) -> str:
        """The model's label for the region; "O" when it predicts no entity."""
        return self.predicted[0][2] if self.predicted else "O"


def find_candidates(doc_index: int, gold: Sequence[Entity], predicted: Sequence[Entity]) -> List[Candidate]:
    """One candidate per group of overlapping gold and predicted entities, covering the
    group's tokens, so that a boundary disagreement is reviewed once, as a whole."""
    spans = sorted([(s, e, label, True) for s, e, label in gold] + [(s, e, label, False) for s, e, label in predicted])
    groups: List[List[Tuple[int, int, str, bool]]] = []
    for span in spans:
        if groups and span[0] < max(end for _, end, _, _ in groups[-1]):
            groups[-1].append(span)
        else:
            groups.append([span])
    return [_candidate(doc_index, group) for group in groups]


def _candidate(doc_index: int, group: List[Tuple[int, int, str, bool]]) -> Candidate:
    gold = tuple((s, e, label) for s, e, label, is_gold in group if is_gold)
    predicted = tuple((s, e, label) for s, e, label, is_gold in group if not is_gold)
    start = min(s for s, _, _, _ in group)
    end = max(e for _, e, _, _ in group)
    return Candidate(doc_index, start, end, _kind(gold, predicted), gold, predicted)


def _kind(gold: Tuple[Entity, ...], predicted: Tuple[Entity, ...]) -> str:
    if not predicted:
        return "spurious"
    if not gold:
        return "missing"
    if len(gold) == len(predicted) == 1 and gold[0][:2] == predicted[0][:2]:
        return "agreed" if gold == predicted else "wrong_type"
    return "wrong_boundary"


class Annotated(NamedTuple):
    """Gold docs, the head's view of them (with gold tags), and their candidates."""

    docs: List[Doc]
    batch: LabelledBatch
    candidates: List[Candidate]


def explaining_crf(nlp: Language, ner_name: str) -> CRFEntityRecognizer:
    """The CRF whose gradients score `ner_name`'s candidates: the crf_ner itself, or for a
    built-in ner the CRF surrogate an indexed `segment_influence` fitted for it."""
    from ..influence.surrogate import indexed_surrogate

    if ner_name not in nlp.pipe_names:
        return bridge.crf_component(nlp, ner_name)  # the error that names the components
    return indexed_surrogate(nlp, ner_name) or bridge.crf_component(nlp, ner_name)


def annotate(
    nlp: Language,
    ner_name: str,
    docs: Sequence[Doc],
    batch_size: int = 256,
    regions: Optional[Sequence[Candidate]] = None,
) -> Annotated:
    """`regions`: score these candidates (found by another model) instead of the ones
    this model's predictions give."""
    ner = explaining_crf(nlp, ner_name)
    names = [*bridge.upstream_components(nlp, ner_name), ner_name]
    with nlp.select_pipes(enable=names):
        processed = list(nlp.pipe((bridge.unannotated(doc) for doc in docs), batch_size=batch_size))
    predicted = [[(ent.start, ent.end, ent.label_) for ent in doc.ents] for doc in processed]
    gold = [[(ent.start, ent.end, ent.label_) for ent in doc.ents if ent.label_ in ner.labels] for doc in docs]
    batch = LabelledBatch(bridge.head_features(ner, processed), [bridge.gold_tags(ner, doc) for doc in docs])
    if regions is None:
        regions = [c for i, (g, p) in enumerate(zip(gold, predicted)) for c in find_candidates(i, g, p)]
    # tokens without annotation can't be mislabelled
    candidates = [c for c in regions if min(batch.tags[c.doc_index][c.start : c.end]) >= 0]
    return Annotated(list(docs), batch, candidates)


def segments_of(candidates: Sequence[Candidate]) -> List[Segment]:
    """The candidates' regions as segments of their sentences."""
    return [Segment(c.doc_index, c.start, c.end) for c in candidates]
