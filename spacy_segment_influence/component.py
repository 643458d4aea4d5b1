"""`segment_influence`: indexes the training corpus once, then explains every predicted
entity by the training spans that support and oppose it (DESIGN.md section 5)."""
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import minibatch
from tqdm import tqdm

from . import bridge, removal
from .bridge import LabelledBatch, Segment
from .corpus import read_docbin
from .curvature import ExactCurvature, IdentityCurvature, KFACStatistics
from .gradients import FactoredGradients, WindowLabels
from .index import DTYPES, SegmentIndex

CURVATURES = ("identity", "kfac", "exact")
# Docs whose CRF work (segment windows, K-FAC marginals) runs together: few large
# chain batches instead of many small ones, whose per-step overhead dominated.
_CHAIN_GROUP = 1024
GRANULARITIES = ("entities", "tokens")



def _get_doc_influences(doc: Doc) -> Optional[List[dict]]:
    raw = doc.user_data.get(("segment_influence", None, None))
    return None if raw is None else srsly.json_loads(raw)


def _set_doc_influences(doc: Doc, records: Optional[List[dict]]) -> None:
    doc.user_data[("segment_influence", None, None)] = srsly.json_dumps(records)


def _get_span_influences(span: Span) -> Optional[dict]:
    raw = span.doc.user_data.get(("segment_influence", span.start_char, span.end_char))
    return None if raw is None else srsly.json_loads(raw)


def _set_span_influences(span: Span, record: Optional[dict]) -> None:
    span.doc.user_data[("segment_influence", span.start_char, span.end_char)] = srsly.json_dumps(record)


# Stored as JSON in doc.user_data so records come back from DocBin(store_user_data=True)
# exactly as they went in (msgpack would turn their lists into tuples).
if not Doc.has_extension("influences"):
    Doc.set_extension("influences", getter=_get_doc_influences, setter=_set_doc_influences)
if not Span.has_extension("influences"):
    Span.set_extension("influences", getter=_get_span_influences, setter=_set_span_influences)


class IndexOutOfDateError(RuntimeError):
    """The pipeline's weights changed after its training corpus was indexed."""


@Language.factory(
    "segment_influence",
    requires=["doc.ents"],
    assigns=["doc._.influences", "span._.influences"],
    default_config={
        "ner": "crf_ner",
        "k": 5,
        "curvature": "kfac",
        "damping": 0.001,
        "normalize": True,
        "granularity": "entities",
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 64,
        "refine": False,
    },
)
def make_segment_influence(
    nlp: Language,
    name: str,
    ner: str,
    k: int,
    curvature: str,
    damping: float,
    normalize: bool,
    granularity: str,
    device: str,
    dtype: str,
    batch_size: int,
    refine: bool,
) -> "SegmentInfluence":
    return SegmentInfluence(
        nlp,
        name,
        ner=ner,
        k=k,
        curvature=curvature,
        damping=damping,
        normalize=normalize,
        granularity=granularity,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        refine=refine,
    )


class SegmentInfluence(Pipe):
    """Stores, for each predicted entity, its most influential training segments."""

    def __init__(
        self,
        nlp: Language,
        name: str = "segment_influence",
        *,
        ner: str = "crf_ner",
        k: int = 5,
        curvature: str = "kfac",
        damping: float = 0.001,
        normalize: bool = True,
        granularity: str = "entities",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 64,
        refine: bool = False,
    ) -> None:
        """`refine`: also report, per hit, the leverage-corrected change of the entity's loss
        when the segment's labels are removed (`removal`; needs curvature "exact")."""
        if curvature not in CURVATURES:
            raise ValueError(f"segment_influence: curvature must be one of {CURVATURES}, got {curvature!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"segment_influence: granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if k < 1:
            raise ValueError(f"segment_influence: k must be >= 1, got {k}")
        if dtype not in DTYPES:  # checked here, not after the whole corpus was processed
            raise ValueError(f"segment_influence: dtype must be one of {DTYPES}, got {dtype!r}")
        if refine and curvature != "exact":
            raise ValueError(f"segment_influence: refine needs curvature 'exact', got {curvature!r}")
        self.nlp = nlp
        self.name = name
        self.cfg = {
            "ner": ner,
            "k": k,
            "curvature": curvature,
            "damping": damping,
            "normalize": normalize,
            "granularity": granularity,
            "dtype": dtype,
            "batch_size": batch_size,
            "refine": refine,
        }
        self.device = device
        self._removal_steps: Optional[removal.RemovalSteps] = None
        self.index: Optional[SegmentIndex] = None
        self.fingerprint: Optional[str] = None

    @property
    def ner(self):
        bridge.upstream_components(self.nlp, self.cfg["ner"])
        return self.nlp.get_pipe(self.cfg["ner"])

    # -- indexing ------------------------------------------------------------------------
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        train_path: Optional[Union[str, Path]] = None,
        show_progress: bool = True,
    ) -> None:
        """Index the training corpus: `train_path` (a .spacy file) if given, else the
        reference docs of `get_examples()`."""
        if nlp is not None:
            self.nlp = nlp
        if train_path is not None:
            path = Path(train_path)
            if not path.exists():
                raise FileNotFoundError(f"segment_influence: training corpus {path} not found")
            docs = read_docbin(path, self.nlp.vocab)
        else:
            docs = [eg.reference for eg in get_examples()]
        if not docs:
            raise ValueError("segment_influence: the training corpus is empty")
        self.index = self._build_index(docs, show_progress)
        self.fingerprint = bridge.fingerprint(self.nlp, self.cfg["ner"])

    def _build_index(self, docs: Sequence[Doc], show_progress: bool) -> SegmentIndex:
        ner = self.ner
        keep_sentences = self.cfg["curvature"] == "exact"  # only the exact Hessian needs them all
        features: List[numpy.ndarray] = []
        tags: List[List[int]] = []
        statistics = KFACStatistics()
        grads: List[FactoredGradients] = []
        windows: List[WindowLabels] = []
        metadata: List[dict] = []
        progress = tqdm(total=len(docs), desc="Indexing training segments", unit="doc", disable=not show_progress)
        for first, batch_docs in _batches(docs, max(self.cfg["batch_size"], _CHAIN_GROUP)):
            batch = self._encode(batch_docs, progress)
            segments, meta = self._training_segments(batch_docs, first)
            grads.append(bridge.segment_gradients(ner, batch, segments))
            metadata.extend(meta)
            if self.cfg["curvature"] == "kfac":
                statistics.add(*bridge.token_marginals(ner, batch.features))
            if keep_sentences:
                features.extend(batch.features)
                tags.extend(batch.tags)
                windows.append(bridge.window_labels(batch, segments))
        progress.close()
        if not metadata:
            raise ValueError(f"segment_influence: no training segments found ({self.cfg['granularity']})")
        all_grads = FactoredGradients.concat(grads)
        curvature = self._fit_curvature(ner, LabelledBatch(features, tags), statistics, all_grads)
        # an exact index keeps the raw window features; with their labels, `removal` can refine
        labels = WindowLabels.concat(windows) if windows else None
        return SegmentIndex.build(all_grads, metadata, curvature, self.cfg["normalize"], self.cfg["dtype"], labels)

    def _encode(self, docs: Sequence[Doc], progress: tqdm) -> LabelledBatch:
        """Features and gold tags of `docs`, encoded batch by batch so that the progress
        bar moves with the encoder, the slow part."""
        features: List[numpy.ndarray] = []
        tags: List[List[int]] = []
        for _, batch_docs in _batches(docs, self.cfg["batch_size"]):
            batch = bridge.labelled_batch(self.nlp, self.cfg["ner"], batch_docs, self.cfg["batch_size"])
            features.extend(batch.features)
            tags.extend(batch.tags)
            progress.update(len(batch_docs))
        return LabelledBatch(features, tags)

    def _training_segments(self, docs: Sequence[Doc], first: int):
        segments, metadata = [], []
        labels = self.ner.labels
        for offset, doc in enumerate(docs):
            if self.cfg["granularity"] == "entities":
                spans = [ent for ent in doc.ents if ent.label_ in labels]
            else:
                spans = [doc[i : i + 1] for i in range(len(doc)) if doc[i].ent_iob != 0]
            for span in spans:
                segments.append(Segment(offset, span.start, span.end))
                metadata.append(_segment_record(doc, span, first + offset))
        return segments, metadata

    def _fit_curvature(self, ner, batch: LabelledBatch, statistics: KFACStatistics, grads: FactoredGradients):
        name, damping = self.cfg["curvature"], self.cfg["damping"]
        if name == "identity":
            return IdentityCurvature()
        if name == "kfac":
            return statistics.curvature(grads.dense, damping)
        return ExactCurvature(
            bridge.head_hessian(ner, batch), damping, ner.head.n_tags, ner.head.n_features + 1, batch.n_sentences
        )

    # -- querying ------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        return next(self.pipe([doc]))

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        for docs in minibatch(stream, size=batch_size):
            self.check_index()
            labels = self.ner.labels
            labellings = [[ent for ent in doc.ents if ent.label_ in labels] for doc in docs]
            queries = [(i, ent) for i, ents in enumerate(labellings) for ent in ents]
            features = bridge.head_features(self.ner, docs)
            records = self._query(docs, features, labellings, queries)
            per_doc: List[List[dict]] = [[] for _ in docs]
            for (i, ent), record in zip(queries, records):
                ent._.influences = {"supporters": record["supporters"], "opposers": record["opposers"]}
                per_doc[i].append(record)
            for doc, doc_records in zip(docs, per_doc):
                doc._.influences = doc_records
            yield from docs

    def explain(self, span: Span, k: Optional[int] = None, label: Optional[str] = None) -> dict:
        """Influences for any span of a processed doc. `label` is the labelling asked
        about (default: the span's label, else that of the predicted entity with the same
        boundaries, else "O"); "O" asks "why is this NOT an entity?". The doc's other
        predicted entities keep their labels."""
        self.check_index()
        doc = span.doc
        if label is None:
            predicted = {(ent.start, ent.end): ent.label_ for ent in doc.ents}
            label = span.label_ or predicted.get((span.start, span.end), "O")
        query = Span(doc, span.start, span.end, label="" if label == "O" else label)
        entities = [ent for ent in doc.ents if ent.end <= span.start or ent.start >= span.end]
        entities = sorted(entities + ([query] if query.label_ else []), key=lambda e: e.start)
        encoded = bridge.encode(self.nlp, [bridge.unannotated(doc)], self.cfg["ner"])
        features = bridge.head_features(self.ner, encoded)
        return self._query([doc], features, [entities], [(0, query)], k)[0]

    def _query(
        self,
        docs: Sequence[Doc],
        features: List[numpy.ndarray],
        labellings: List[List[Span]],
        queries: List[Tuple[int, Span]],
        k: Optional[int] = None,
    ) -> List[dict]:
        """Top-k segments for each (sentence index, span) query, sentence i labelled
        with the entities labellings[i]."""
        if not queries:
            return []
        ner = self.ner
        tags = [bridge.tag_ids(ner, doc, ents) for doc, ents in zip(docs, labellings)]
        segments = [Segment(i, span.start, span.end) for i, span in queries]
        batch = LabelledBatch(features, tags)
        grads = bridge.segment_gradients(ner, batch, segments)
        top = self.index.top_k(grads, k=k or self.cfg["k"], device=self.device)
        records = []
        for (_, span), segment, result in zip(queries, segments, top):
            hits = {
                "supporters": [self._hit(j, s) for j, s in result.supporters],
                "opposers": [self._hit(j, s) for j, s in result.opposers],
            }
            if self.cfg["refine"]:
                self._refine(batch, segment, [*result.supporters, *result.opposers], hits)
            query = {"start": span.start, "end": span.end, "label": span.label_ or "O", "text": span.text}
            records.append({**query, **hits})
        return records

    def _hit(self, segment_id: int, score: float) -> dict:
        return {**self.index.metadata[segment_id], "score": float(score)}

    def _refine(self, batch: LabelledBatch, query: Segment, found: List[Tuple[int, float]], hits: dict) -> None:
        """Add "refined" to each hit: the change of the query's loss (nats) when the hit's
        labels are removed, by a leverage-corrected Newton step evaluated exactly
        (`removal`); positive = it supported the prediction, like "score"."""
        if self._removal_steps is None or self._removal_steps.index is not self.index:
            self._removal_steps = removal.RemovalSteps(self.ner, self.index)
        steps = [self._removal_steps(j) for j, _ in found]
        changes = removal.loss_changes(self.ner, batch, query, self._removal_steps.theta, steps)
        for hit, change in zip([*hits["supporters"], *hits["opposers"]], changes):
            hit["refined"] = float(change)

    def check_index(self) -> None:
        """Raise a clear error when there is no index, or it is out of date with the
        pipeline's weights."""
        if self.index is None:
            raise ValueError(
                f"segment_influence '{self.name}' has no index: call "
                "nlp.get_pipe('segment_influence').initialize(..., train_path=TRAIN.spacy) "
                "or use `segment-influence index`"
            )
        current = bridge.fingerprint(self.nlp, self.cfg["ner"])
        if current != self.fingerprint:
            raise IndexOutOfDateError(
                f"segment_influence '{self.name}': the weights of '{self.cfg['ner']}' or its "
                "encoder changed after the training corpus was indexed; influence scores would "
                "be wrong. Re-index (initialize again or `segment-influence index`)."
            )

    # -- serialization -------------------------------------------------------------------
    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.index is not None:
            self.index.to_disk(path / "index")
        srsly.write_json(path / "cfg", {**self.cfg, "fingerprint": self.fingerprint})

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "SegmentInfluence":
        path = Path(path)
        cfg = srsly.read_json(path / "cfg")
        self.fingerprint = cfg.pop("fingerprint")
        self.cfg.update(cfg)
        self.index = SegmentIndex.from_disk(path / "index") if (path / "index").exists() else None
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        index = self.index.to_bytes() if self.index is not None else None
        return srsly.msgpack_dumps({"cfg": self.cfg, "fingerprint": self.fingerprint, "index": index})

    def from_bytes(self, data: bytes, *, exclude: Iterable[str] = tuple()) -> "SegmentInfluence":
        msg = srsly.msgpack_loads(data)
        self.cfg.update(msg["cfg"])
        self.fingerprint = msg["fingerprint"]
        self.index = SegmentIndex.from_bytes(msg["index"]) if msg["index"] is not None else None
        return self


def _batches(docs: Sequence[Doc], size: int):
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
