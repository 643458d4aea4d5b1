"""`segment_influence`: indexes the training corpus once, then explains every predicted
entity by the training spans that support and oppose it (DESIGN.md section 5)."""

from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
)

import numpy
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example
from spacy.util import minibatch
from tqdm import tqdm

from ..corpus import read_docbin
from ..exceptions import (
    ConfigError,
    DataError,
    IndexFormatError,
    IndexMissingError,
    IndexOutOfDateError,
)
from ..influence import removal
from ..influence.curvature import CurvatureName
from ..influence.encoder_influence import EncoderExplainer
from ..influence.gradients import FactoredGradients
from ..influence.index import IndexDtype, SegmentIndex
from ..influence.index_build import build_shard, fit_index
from ..influence.segments import Segment, segment_gradients
from ..influence.surrogate import agreement, fit_surrogate, predicted_entities, surrogate_from_bytes, surrogate_to_bytes
from ..ner import bridge
from ..ner.bridge import LabelledBatch
from ..ner.entity_scores import ScoredEntity, set_entity_scores
from ..ner.known_labels import check_known_labels
from ..ner.tagger import CRFEntityRecognizer
from . import extensions  # noqa: F401  (registers doc._.influences and span._.influences)
from .queries import entity_probabilities, labelled_query
from .serialization import SerializedComponent
from .settings import SETTINGS, Granularity, Layers, check_k, check_settings


class SegmentInfluence(SerializedComponent, Pipe):
    """Stores, for each predicted entity, its most influential training segments
    (`doc._.influences`, `span._.influences`); `explain` asks about any span."""

    def __init__(
        self,
        nlp: Language,
        name: str = "segment_influence",
        *,
        ner: Optional[str] = None,
        k: int = 5,
        curvature: CurvatureName = "kfac",
        damping: float = 0.001,
        normalize: bool = True,
        granularity: Granularity = "entities",
        device: str = "cpu",
        dtype: IndexDtype = "float32",
        batch_size: int = 64,
        refine: bool = False,
        layers: Layers = "head",
        inits: int = 4,
    ) -> None:
        """
        nlp: the pipeline, which must hold the NER component named `ner`.
        name: the component's name.
        ner: the NER component whose predictions are explained: a `crf_ner`, or any
            component whose token features can be read (spaCy's `ner`), explained through
            a CRF surrogate fitted when the corpus is indexed. Default: the pipeline's
            crf_ner, else its spaCy `ner` (`bridge.default_ner`).
        k: supporters and opposers stored per predicted entity.
        curvature: how H^-1 enters the score: "identity", "kfac" (Kronecker-factored,
            fast search) or "exact" (the damped head Hessian; small heads, for `refine`).
        damping: added to the curvature.
        normalize: cosine-normalise scores, so a training entity ranks itself first.
        granularity: the segments indexed: "entities" (gold spans) or "tokens" (every token).
        device: torch device for search, e.g. "cpu" or "cuda:0".
        dtype: storage precision of the index: "float16", "float32" or "float64".
        batch_size: docs encoded at a time while indexing.
        refine: also report, per hit, the leverage-corrected change of the entity's loss
            when the segment's labels are removed (`removal`; needs curvature "exact").
        layers: "head" (CRF head, trained weights) or "embeddings" (encoder rows, initial weights).
        inits: with layers "embeddings", the initialisations the scores sum over.
        """
        settings: Dict[str, Any] = {"k": k, "curvature": curvature, "damping": damping, "normalize": normalize}
        settings.update(granularity=granularity, dtype=dtype, batch_size=batch_size, refine=refine)
        settings.update(layers=layers, inits=inits)
        check_settings(**{key: settings[key] for key in SETTINGS})
        self.nlp = nlp
        self.name = name
        self.cfg: Dict[str, Any] = {"ner": ner if ner is not None else bridge.default_ner(nlp), **settings}
        self.device = device
        self._removal_steps: Optional[removal.RemovalSteps] = None
        self.index: Optional[SegmentIndex] = None
        self.fingerprint: Optional[str] = None
        self._surrogate: Optional[CRFEntityRecognizer] = None
        self._surrogate_bytes: Optional[bytes] = None  # built on first use, once the pipeline is loaded
        self._encoder: Optional[EncoderExplainer] = None  # layers = "embeddings"

    @property
    def ner(self) -> CRFEntityRecognizer:
        """The CRF head explained: the crf_ner component `ner`, or the CRF surrogate
        fitted for it when it has no CRF (spaCy's `ner`; `surrogate.py`)."""
        surrogate = self.surrogate
        return surrogate if surrogate is not None else bridge.crf_component(self.nlp, self.cfg["ner"])

    @property
    def surrogate(self) -> Optional[CRFEntityRecognizer]:
        if self._surrogate is None and self._surrogate_bytes is not None:
            self._surrogate = surrogate_from_bytes(self.nlp, self.cfg["ner"], self._surrogate_bytes)
        return self._surrogate

    @property
    def explainer(self) -> Optional[EncoderExplainer]:
        """With layers = "embeddings", what `explain` searches: the initial pipelines, the
        query gradients (`query_gradients`) and the index of the training segments'
        gradients (`explainer.index`); None with layers = "head" (see `index`)."""
        return self._encoder

    # -- indexing ------------------------------------------------------------------------
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        train_path: Optional[Union[str, Path]] = None,
        dev_path: Optional[Union[str, Path]] = None,
        show_progress: bool = True,
        ray_address: Optional[str] = None,
        ray_workers: Optional[int] = None,
    ) -> None:
        """Index the training corpus: `train_path` (a .spacy file) if given, else the
        reference docs of `get_examples()`. With `ray_address` (a Ray cluster's address,
        or "local" to start one here), `ray_workers` Ray actors encode it (`distributed`).
        When `ner` is not a crf_ner component, first fit a CRF surrogate on its frozen
        features (L2 = `damping`) and, with `dev_path`, report how far it agrees with the
        component (`surrogate_agreement` in the cfg)."""
        if nlp is not None:
            self.nlp = nlp
        if train_path is not None:
            docs = read_docbin(Path(train_path), self.nlp.vocab)
        else:
            docs = [eg.reference for eg in get_examples()]
        if not docs:
            raise DataError(f"segment_influence {self.name!r}: the training corpus is empty")
        self._surrogate, self._surrogate_bytes = None, None
        bridge.upstream_components(self.nlp, self.cfg["ner"])  # a clear error when it is missing
        if not isinstance(self.nlp.get_pipe(self.cfg["ner"]), CRFEntityRecognizer):
            if ray_address is not None:
                raise ConfigError("Indexing through a CRF surrogate runs in one process: leave out --ray")
            self._fit_surrogate(docs, dev_path, show_progress)
        check_known_labels(docs, self.ner.labels, str(train_path or "the training examples"))
        if self.cfg["layers"] == "embeddings" and (self.surrogate is not None or ray_address is not None):
            raise ConfigError("layers 'embeddings' needs a crf_ner pipeline indexed in one process (no --ray)")
        self.index = self._build_index(docs, show_progress, ray_address, ray_workers)
        self._encoder = self._build_encoder(docs, train_path) if self.cfg["layers"] == "embeddings" else None
        self.fingerprint = bridge.fingerprint(self.nlp, self.cfg["ner"])

    def _build_encoder(self, docs: Sequence[Doc], train_path: Optional[Union[str, Path]]) -> EncoderExplainer:
        """The embedding-row gradients of the indexed segments at the pipeline's initial
        weights, which `spacy train` rebuilds from its config (and the training corpus)."""
        import tempfile

        from ..training import training_config

        assert self.index is not None
        segments = [Segment(m["doc_index"], m["start"], m["end"]) for m in self.index.metadata]
        config = training_config(self.nlp.config)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(train_path) if train_path is not None else Path(tmp) / "train.spacy"
            if train_path is None:
                DocBin(docs=docs).to_disk(path)
            return EncoderExplainer.build(config, path, self.cfg["ner"], docs, segments, self.cfg["inits"])

    def _fit_surrogate(self, docs: Sequence[Doc], dev_path: Optional[Union[str, Path]], show_progress: bool) -> None:
        name, batch_size = self.cfg["ner"], self.cfg["batch_size"]
        self._surrogate = fit_surrogate(
            self.nlp, name, docs, l2=self.cfg["damping"], batch_size=batch_size, show_progress=show_progress
        )
        self._surrogate_bytes = surrogate_to_bytes(self._surrogate)
        self.cfg["surrogate_agreement"] = None
        if dev_path is not None:
            found = agreement(self.nlp, name, self._surrogate, read_docbin(Path(dev_path), self.nlp.vocab))
            self.cfg["surrogate_agreement"] = found
            if show_progress:
                print(f"CRF surrogate of {name!r}: " + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))

    def _build_index(
        self, docs: Sequence[Doc], show_progress: bool, ray_address: Optional[str], ray_workers: Optional[int]
    ) -> SegmentIndex:
        if ray_address is not None:
            from ..scale.distributed import build_shards

            shard = build_shards(self.nlp, self.cfg, docs, ray_address, ray_workers, show_progress=show_progress)
        else:
            progress = tqdm(total=len(docs), desc="Indexing training segments", unit="doc", disable=not show_progress)
            with progress:
                shard = build_shard(self.nlp, self.cfg, docs, progress=progress.update, ner=self.ner)
        return fit_index(self.nlp, self.cfg, shard, self.name, ner=self.ner)

    # -- querying ------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        return next(self.pipe([doc]))

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        for batch_number, docs in enumerate(minibatch(stream, size=batch_size)):
            if batch_number == 0:  # digesting every weight costs 0.1-0.4 s for MiniLM: once per call
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
            if self.surrogate is not None:
                self._mark_surrogate(docs, features, per_doc)
            for doc, doc_records in zip(docs, per_doc):
                doc._.influences = doc_records
            yield from docs

    def _mark_surrogate(self, docs: Sequence[Doc], features: List[numpy.ndarray], records: List[List[dict]]) -> None:
        """Flag the pipeline's entities the surrogate would not predict itself
        (`surrogate_agrees`), and store each one's probability under the surrogate where
        crf_ner stores its own (doc.spans[scores_key])."""
        surrogate = self.ner
        for doc, own, doc_records in zip(docs, predicted_entities(surrogate, features), records):
            for record in doc_records:
                record["surrogate_agrees"] = (record["start"], record["end"], record["label"]) in own
            scored = [ScoredEntity(r["start"], r["end"], r["label"], r["probability"]) for r in doc_records]
            set_entity_scores(doc, cast(str, surrogate.scores_key), scored)

    def explain(self, span: Span, k: Optional[int] = None, label: Optional[str] = None) -> dict:
        """Influences for any span of a processed doc. `label` is the labelling asked
        about (default: the span's label, else that of the predicted entity with the same
        boundaries, else "O"); "O" asks "why is this NOT an entity?". The doc's other
        predicted entities keep their labels."""
        if k is not None:
            check_k(k, "segment_influence.explain")
        if len(span) == 0:
            raise DataError(f"segment_influence.explain: the span at token {span.start} is empty; ask about >= 1 token")
        self.check_index()
        query, entities = labelled_query(span, label)
        features = self._encoded_features([span.doc])
        return self._query([span.doc], features, [entities], [(0, query)], k)[0]

    def query_gradients(
        self, spans: Sequence[Span], label: Union[None, str, Sequence[Optional[str]]] = None
    ) -> FactoredGradients:
        """The query gradients `explain` searches the index with, one per span (labelled
        as `explain` labels it; `label` one for all spans or one per span), for searching
        elsewhere: a `ShardedIndex`, or an index of another corpus built with the same
        settings."""
        self.check_index()
        labels = [label] * len(spans) if label is None or isinstance(label, str) else list(label)
        if len(labels) != len(spans):
            raise ConfigError(f"segment_influence: {len(spans)} spans but {len(labels)} labels")
        for span in spans:
            if len(span) == 0:
                raise DataError(f"segment_influence.query_gradients: the span at token {span.start} is empty")
        labelled = [labelled_query(span, one) for span, one in zip(spans, labels)]
        features = self._encoded_features([span.doc for span in spans])
        tags = [bridge.tag_ids(self.ner, span.doc, entities) for span, (_, entities) in zip(spans, labelled)]
        segments = [Segment(i, query.start, query.end) for i, (query, _) in enumerate(labelled)]
        return segment_gradients(self.ner, LabelledBatch(features, tags), segments)

    def _encoded_features(self, docs: Sequence[Doc]) -> List[numpy.ndarray]:
        """The head's features of docs, re-encoded without their annotation."""
        encoded = bridge.encode(self.nlp, [bridge.unannotated(doc) for doc in docs], self.cfg["ner"])
        return bridge.head_features(self.ner, encoded)

    def scores(self, spans: Sequence[Span], labels: Optional[Sequence[Optional[str]]] = None) -> numpy.ndarray:
        """[len(spans), n_segments]: each span's score against every indexed training
        segment, the numbers `explain` ranks (cosine if `normalize`); segment j is
        described by `self.index.metadata[j]` (doc_index, start, end, label, ...): for a
        metric of your own over the whole index, e.g. the LDS (`lds.py`). Spans are
        labelled as in `explain` (`labels`: one per span)."""
        index = self.check_index()
        if not spans:
            return numpy.zeros((0, len(index)))
        if self._encoder is not None:
            labelled = [labelled_query(span, None if labels is None else labels[i]) for i, span in enumerate(spans)]
            segments = [Segment(i, query.start, query.end) for i, (query, _) in enumerate(labelled)]
            return self._encoder.scores([span.doc for span in spans], [ents for _, ents in labelled], segments)
        return index.scores(self.query_gradients(spans, labels), device=self.device)

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
        assert self.index is not None  # the callers checked it
        if self._encoder is not None:
            top = self._encoder.top_k(docs, labellings, segments, k or self.cfg["k"])
        else:
            top = self.index.top_k(segment_gradients(ner, batch, segments), k=k or self.cfg["k"], device=self.device)
        probabilities = entity_probabilities(ner, features, queries)
        records = []
        for (_, span), segment, result, probability in zip(queries, segments, top, probabilities):
            hits = {
                "supporters": [self._hit(j, s) for j, s in result.supporters],
                "opposers": [self._hit(j, s) for j, s in result.opposers],
            }
            if self.cfg["refine"]:
                self._refine(batch, segment, [*result.supporters, *result.opposers], hits)
            query = {"start": span.start, "end": span.end, "label": span.label_ or "O", "text": span.text}
            query["probability"] = probability
            records.append({**query, **hits})
        return records

    def _hit(self, segment_id: int, score: float) -> dict:
        assert self.index is not None
        return {**self.index.metadata[segment_id], "score": float(score)}

    def _refine(self, batch: LabelledBatch, query: Segment, found: List[Tuple[int, float]], hits: dict) -> None:
        """Add "refined" to each hit: the change of the query's loss (nats) when the hit's
        labels are removed, by a leverage-corrected Newton step evaluated exactly
        (`removal`); positive = it supported the prediction, like "score"."""
        assert self.index is not None
        if self._removal_steps is None or self._removal_steps.index is not self.index:
            self._removal_steps = removal.RemovalSteps(self.ner, self.index)
        steps = [self._removal_steps(j) for j, _ in found]
        changes = removal.loss_changes(self.ner, batch, query, self._removal_steps.theta, steps)
        for hit, change in zip([*hits["supporters"], *hits["opposers"]], changes):
            hit["refined"] = float(change)

    def check_index(self) -> SegmentIndex:
        """The index; a clear error when there is none, or it is out of date with the
        pipeline's weights."""
        if self.index is None:
            raise IndexMissingError(
                f"segment_influence {self.name!r} has no index: call "
                "nlp.get_pipe('segment_influence').initialize(..., train_path=TRAIN.spacy) "
                "or use `segment-influence index`"
            )
        if not str(self.fingerprint).startswith(f"{bridge.FINGERPRINT_SCHEME}:"):
            raise IndexFormatError(
                f"segment_influence {self.name!r}: the index was written by an older version, whose "
                "weight fingerprint this version cannot check; re-index (`segment-influence index`)"
            )
        if bridge.fingerprint(self.nlp, self.cfg["ner"]) != self.fingerprint:
            raise IndexOutOfDateError(
                f"segment_influence {self.name!r}: the weights of {self.cfg['ner']!r} or its encoder "
                "differ from those the training corpus was indexed with (they changed after indexing: "
                "further training, an edit, or files from another pipeline or run); influence scores "
                "would be wrong. Re-index (initialize again or `segment-influence index`)."
            )
        return self.index
