"""What a query to `segment_influence` is made of: the span labelled as asked with its
doc's other entities, and the CRF's probability of it."""

from typing import List, Optional, Tuple

import numpy
from spacy.tokens import Span

from ..ner.entity_scores import Entity, probabilities_from_features
from ..ner.tagger import CRFEntityRecognizer


def labelled_query(span: Span, label: Optional[str]) -> Tuple[Span, List[Span]]:
    """The span labelled as asked (default: its own label, else that of the predicted
    entity with the same boundaries, else "O"), and its doc's entities with it in place of
    those it overlaps."""
    doc = span.doc
    if label is None:
        predicted = {(ent.start, ent.end): ent.label_ for ent in doc.ents}
        label = span.label_ or predicted.get((span.start, span.end), "O")
    query = Span(doc, span.start, span.end, label="" if label == "O" else label)
    entities = [ent for ent in doc.ents if ent.end <= span.start or ent.start >= span.end]
    return query, sorted(entities + ([query] if query.label_ else []), key=lambda e: e.start)


def entity_probabilities(
    ner: CRFEntityRecognizer, features: List[numpy.ndarray], queries: List[Tuple[int, Span]]
) -> List[float]:
    """The CRF's probability of each queried span with its label ("O": no entity there)."""
    entities: List[List[Entity]] = [[] for _ in features]
    for i, span in queries:
        entities[i].append((span.start, span.end, span.label_ or "O"))
    found = [iter(probs) for probs in probabilities_from_features(ner, features, entities)]
    return [next(found[i]) for i, _ in queries]
