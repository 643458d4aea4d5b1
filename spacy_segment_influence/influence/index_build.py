"""The index build as map and reduce: a shard of training docs becomes an `IndexShard`
(its segments' gradients and records, and its share of the curvature statistics);
shards merge exactly, by concatenation and sums; one merged shard is fitted into a
`SegmentIndex`.

A single-process build is one shard over the whole corpus; a distributed build
(`distributed`) computes shards on several workers and merges them on the driver, so
both run the same code and build the same index.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc, Span

from ..exceptions import DataError
from ..ner import bridge
from ..ner.bridge import LabelledBatch, labelled_batch
from ..ner.tagger import CRFEntityRecognizer
from .curvature import TrainingStatistics, curvature_class
from .gradients import FactoredGradients, WindowLabels
from .index import SegmentIndex
from .segments import Segment, segment_gradients, window_labels

# Docs whose CRF work (segment windows, K-FAC marginals) runs together: few large
# chain batches instead of many small ones, whose per-step overhead dominated.
CHAIN_GROUP = 1024


@dataclass
class IndexShard:
    """What a run of consecutive training docs contributes to an index.

    grads: the segments' raw (not curvature-prepared) gradients, in doc order.
    metadata: one record per segment; `doc_index` counts from the corpus' first doc.
    windows: the segments' window labels (refinable curvatures only).
    statistics: the curvature's statistics of the shard's sentences.
    """

    grads: Optional[FactoredGradients]
    metadata: List[dict]
    windows: Optional[WindowLabels]
    statistics: TrainingStatistics

    @staticmethod
    def merge(shards: Sequence["IndexShard"]) -> "IndexShard":
        """The shard of the shards' docs taken in this order: the same segments, records
        and statistics as one pass over them (the first shard's statistics take in the
        others')."""
        if not shards:
            raise ValueError("merge needs at least one shard")
        grads = [s.grads for s in shards if s.grads is not None]
        windows = [s.windows for s in shards if s.windows is not None]
        statistics = shards[0].statistics
        for shard in shards[1:]:
            statistics.merge(shard.statistics)
        return IndexShard(
            FactoredGradients.concat(grads) if grads else None,
            [record for s in shards for record in s.metadata],
            WindowLabels.concat(windows) if windows else None,
            statistics,
        )


def build_shard(
    nlp: Language,
    settings: Dict[str, Any],
    docs: Sequence[Doc],
    first: int = 0,
    progress: Callable[[int], Any] = lambda n: None,
    ner: Optional[CRFEntityRecognizer] = None,
) -> IndexShard:
    """The shard of `docs`, the corpus' docs first:first + len(docs), under the
    `segment_influence` settings (`ner`, `granularity`, `curvature`, `batch_size`);
    `progress(n)` is called as every n docs are encoded. `ner`: the CRF to index with
    (a surrogate of a built-in ner), default the pipeline's crf_ner named in settings."""
    ner = ner if ner is not None else bridge.crf_component(nlp, settings["ner"])
    curvature_type = curvature_class(settings["curvature"])
    statistics = curvature_type.statistics()
    grads: List[FactoredGradients] = []
    windows: List[WindowLabels] = []
    metadata: List[dict] = []
    for offset, group in _batches(docs, max(settings["batch_size"], CHAIN_GROUP)):
        batch = _encode(nlp, settings, group, progress, ner)
        segments, records = training_segments(ner.labels, settings["granularity"], group, first + offset)
        if segments:
            grads.append(segment_gradients(ner, batch, segments))
            if curvature_type.refinable:
                windows.append(window_labels(batch, segments))
        metadata.extend(records)
        statistics.add(ner, batch)
    return IndexShard(
        FactoredGradients.concat(grads) if grads else None,
        metadata,
        WindowLabels.concat(windows) if windows else None,
        statistics,
    )


def fit_index(
    nlp: Language,
    settings: Dict[str, Any],
    shard: IndexShard,
    name: str,
    ner: Optional[CRFEntityRecognizer] = None,
) -> SegmentIndex:
    """The index of a (merged) shard: fit the curvature on its statistics, then prepare
    and store its gradients."""
    if shard.grads is None:
        raise DataError(
            f"segment_influence {name!r}: no training segments found (granularity {settings['granularity']!r})"
        )
    ner = ner if ner is not None else bridge.crf_component(nlp, settings["ner"])
    curvature = curvature_class(settings["curvature"]).fit(ner, shard.statistics, shard.grads, settings["damping"])
    # an exact index keeps the raw window features; with their labels, `removal` can refine
    return SegmentIndex.build(
        shard.grads, shard.metadata, curvature, settings["normalize"], settings["dtype"], shard.windows
    )


def _encode(
    nlp: Language,
    settings: Dict[str, Any],
    docs: Sequence[Doc],
    progress: Callable[[int], Any],
    ner: CRFEntityRecognizer,
) -> LabelledBatch:
    """Features and gold tags of `docs`, encoded batch by batch so that progress moves
    with the encoder, the slow part."""
    features: List[numpy.ndarray] = []
    tags: List[List[int]] = []
    for _, batch_docs in _batches(docs, settings["batch_size"]):
        batch = labelled_batch(nlp, settings["ner"], batch_docs, settings["batch_size"], ner=ner)
        features.extend(batch.features)
        tags.extend(batch.tags)
        progress(len(batch_docs))
    return LabelledBatch(features, tags)


def training_segments(
    labels: Sequence[str], granularity: str, docs: Sequence[Doc], first: int
) -> Tuple[List[Segment], List[dict]]:
    """The segments indexed in `docs` (the corpus' docs from `first` on) and their records."""
    segments, metadata = [], []
    for offset, doc in enumerate(docs):
        if granularity == "entities":
            spans = [ent for ent in doc.ents if ent.label_ in labels]
        else:
            # each annotated token, labelled as its gold tag is (outside the labels: "O")
            spans = [
                Span(doc, i, i + 1, label=doc[i].ent_type_ if doc[i].ent_type_ in labels else "")
                for i in range(len(doc))
                if doc[i].ent_iob != 0
            ]
        for span in spans:
            segments.append(Segment(offset, span.start, span.end))
            metadata.append(_segment_record(doc, span, first + offset))
    return segments, metadata


def _batches(docs: Sequence[Doc], size: int) -> Iterator[Tuple[int, Sequence[Doc]]]:
    for first in range(0, len(docs), size):
        yield first, docs[first : first + size]


def _segment_record(doc: Doc, span: Span, doc_index: int, window: int = 10) -> dict:
    left = doc[max(0, span.start - window) : span.start].text
    right = doc[span.end : span.end + window].text
    return {
        "doc_id": doc.user_data.get("id") if doc.user_data else None,
        "doc_index": doc_index,
        "start": span.start,
        "end": span.end,
        "label": span.label_ or "O",
        "text": span.text,
        "context": " ".join(part for part in (left, f"[{span.text}]", right) if part),
    }
