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
    Literal,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
    get_args,
)

import numpy
import srsly
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example
from spacy.util import minibatch
from tqdm import tqdm

from . import bridge, checksums, removal
from .corpus import read_docbin
from .curvature import CURVATURES, CurvatureName, curvature_class
from .encoder_influence import EncoderExplainer
from .entity_scores import Entity, ScoredEntity, probabilities_from_features, set_entity_scores
from .exceptions import (
    ConfigError,
    DataError,
    IndexCorruptError,
    IndexFormatError,
    IndexMissingError,
    IndexOutOfDateError,
)
from .gradients import FactoredGradients
from .index import DTYPES, IndexDtype, QueryResult, SegmentIndex
from .index_build import build_shard, fit_index
from .known_labels import check_known_labels
from .segments import LabelledBatch, Segment, segment_gradients
from .surrogate import agreement, fit_surrogate, predicted_entities, surrogate_from_bytes, surrogate_to_bytes
from .tagger import CRFEntityRecognizer

Granularity = Literal["entities", "tokens"]
_GRANULARITIES = get_args(Granularity)
# which parameters the gradients are taken over: the CRF head at the trained weights, or the
# encoder's hash-embedding rows at the initial weights (`encoder_influence`; BENCHMARKS.md "LDS")
Layers = Literal["head", "embeddings"]
_LAYERS = get_args(Layers)


def _user_data(doc: Doc) -> Dict[Any, Any]:
    """doc.user_data, whose keys for extensions are tuples (spaCy's own convention)."""
    return cast(Dict[Any, Any], doc.user_data)


def _get_doc_influences(doc: Doc) -> Optional[List[dict]]:
    raw = _user_data(doc).get(("segment_influence", None, None))
    return None if raw is None else srsly.json_loads(raw)


def _set_doc_influences(doc: Doc, records: Optional[List[dict]]) -> None:
    _user_data(doc)[("segment_influence", None, None)] = srsly.json_dumps(records)


def _get_span_influences(span: Span) -> Optional[dict]:
    raw = _user_data(span.doc).get(("segment_influence", span.start_char, span.end_char))
    return None if raw is None else srsly.json_loads(raw)


def _set_span_influences(span: Span, record: Optional[dict]) -> None:
    _user_data(span.doc)[("segment_influence", span.start_char, span.end_char)] = srsly.json_dumps(record)


# Stored as JSON in doc.user_data so records come back from DocBin(store_user_data=True)
# exactly as they went in (msgpack would turn their lists into tuples).
if not Doc.has_extension("influences"):
    Doc.set_extension("influences", getter=_get_doc_influences, setter=_set_doc_influences)
if not Span.has_extension("influences"):
    Span.set_extension("influences", getter=_get_span_influences, setter=_set_span_influences)


@Language.factory(
    "segment_influence",
    requires=["doc.ents"],
    assigns=["doc._.influences", "span._.influences"],
    default_config={
        "ner": None,
        "k": 5,
        "curvature": "kfac",
        "damping": 0.001,
        "normalize": True,
        "granularity": "entities",
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 64,
        "refine": False,
        "layers": "head",
        "inits": 4,
    },
)
def make_segment_influence(
    nlp: Language,
    name: str,
    ner: Optional[str],
    k: int,
    curvature: CurvatureName,
    damping: float,
    normalize: bool,
    granularity: Granularity,
    device: str,
    dtype: IndexDtype,
    batch_size: int,
    refine: bool,
    layers: str,
    inits: int,
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
        layers=cast(Layers, layers),  # a str here, so that check_settings words the error
        inits=inits,
    )


# More supporters and opposers per entity than a reader can use; a larger k is a typo
K_MAX = 1000


def check_k(k: Any, where: str) -> None:
    """ConfigError unless k is an integer in 1..K_MAX (1.5, "5", True and 100000 are not)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= K_MAX:
        raise ConfigError(f"{where}: k must be an integer from 1 to {K_MAX}, got {k!r}")


def check_settings(
    *, curvature: str, granularity: str, k: int, dtype: str, refine: bool, layers: str = "head", inits: int = 4
) -> None:
    """ConfigError for settings `segment_influence` does not accept, before any work is done
    (spaCy's own validation of a config's Literal values gives a less readable message)."""
    if curvature not in CURVATURES:
        raise ConfigError(f"segment_influence: curvature must be one of {tuple(CURVATURES)}, got {curvature!r}")
    if granularity not in _GRANULARITIES:
        raise ConfigError(f"segment_influence: granularity must be one of {_GRANULARITIES}, got {granularity!r}")
    check_k(k, "segment_influence")
    if dtype not in DTYPES:
        raise ConfigError(f"segment_influence: dtype must be one of {DTYPES}, got {dtype!r}")
    if refine and not curvature_class(curvature).refinable:
        raise ConfigError(f"segment_influence: refine needs curvature 'exact', got {curvature!r}")
    if layers not in _LAYERS:
        raise ConfigError(f"segment_influence: layers must be one of {_LAYERS}, got {layers!r}")
    if layers == "embeddings" and (refine or granularity != "entities"):
        raise ConfigError("segment_influence: layers 'embeddings' indexes gold entities and has no refine")
    if not isinstance(inits, int) or isinstance(inits, bool) or inits < 1:
        raise ConfigError(f"segment_influence: inits must be an integer of at least 1, got {inits!r}")


# The types of the component's settings, as its factory declares them; checked when a
# stored cfg is loaded (it is data, not code spaCy validated).
_CFG_TYPES: Dict[str, Tuple[type, ...]] = {
    "ner": (str,),
    "k": (int,),
    "curvature": (str,),
    "damping": (int, float),
    "normalize": (bool,),
    "granularity": (str,),
    "dtype": (str,),
    "batch_size": (int,),
    "refine": (bool,),
    "layers": (str,),
    "inits": (int,),
}


SETTINGS = ("curvature", "granularity", "k", "dtype", "refine", "layers", "inits")


def check_cfg(cfg: Dict[str, Any], where: str) -> None:
    """IndexCorruptError naming `where` when a stored cfg has a setting of the wrong type or
    value (`k = "5"`, `dtype = "float33"`, `k = 0`)."""
    for key, types in _CFG_TYPES.items():
        value = cfg.get(key)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise IndexCorruptError(f"{where}: {key} = {value!r} is not a {types[0].__name__}; re-index")
    if cfg["batch_size"] < 1 or cfg["damping"] < 0:
        raise IndexCorruptError(f"{where}: batch_size must be >= 1 and damping >= 0; re-index")
    try:
        check_settings(**{key: cfg[key] for key in SETTINGS})
    except ConfigError as err:
        raise IndexCorruptError(f"{where}: {err}; re-index") from None


class SegmentInfluence(Pipe):
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
        curvature: how H^-1 enters the score (`curvature.CURVATURES`): "identity",
            "kfac" (Kronecker-factored, fast search) or "exact" (the damped Hessian of the
            head; small heads, needed by `refine`).
        damping: added to the curvature.
        normalize: cosine-normalise scores, so a training entity ranks itself first.
        granularity: the training segments indexed: "entities" (gold entity spans) or
            "tokens" (every annotated token).
        device: torch device for search, e.g. "cpu" or "cuda:0".
        dtype: storage precision of the index: "float16", "float32" or "float64".
        batch_size: docs encoded at a time while indexing.
        refine: also report, per hit, the leverage-corrected change of the entity's loss
            when the segment's labels are removed (`removal`; needs curvature "exact").
        layers: what the gradients are taken of: "head" (the CRF head at the trained
            weights) or "embeddings" (a tok2vec's embedding rows at its initialisations).
        inits: with layers "embeddings", the initialisations the scores sum over.
        """
        check_settings(
            curvature=curvature, granularity=granularity, k=k, dtype=dtype, refine=refine, layers=layers, inits=inits
        )
        self.nlp = nlp
        self.name = name
        self.cfg: Dict[str, Any] = {
            "ner": ner if ner is not None else bridge.default_ner(nlp),
            "k": k,
            "curvature": curvature,
            "damping": damping,
            "normalize": normalize,
            "granularity": granularity,
            "dtype": dtype,
            "batch_size": batch_size,
            "refine": refine,
            "layers": layers,
            "inits": inits,
        }
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

        from .annotation_errors.fold_training import training_config

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
            from .distributed import build_shards

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
        query, entities = _labelled_query(span, label)
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
        labelled = [_labelled_query(span, one) for span, one in zip(spans, labels)]
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
            labelled = [_labelled_query(span, None if labels is None else labels[i]) for i, span in enumerate(spans)]
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
            top = top_k_of(self._encoder.scores(docs, labellings, segments), k or self.cfg["k"])
        else:
            top = self.index.top_k(segment_gradients(ner, batch, segments), k=k or self.cfg["k"], device=self.device)
        probabilities = _entity_probabilities(ner, features, queries)
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

    # -- serialization -------------------------------------------------------------------
    # Two fields, as spaCy pipes name theirs for `exclude`: "cfg" (settings and the weights'
    # fingerprint) and "index" (the stored gradients, the large part).
    # One manifest (`checksums.json`) digests cfg (which holds the fingerprint), surrogate and
    # the index's own manifest (which digests every index file): files from two writes or
    # two runs do not load together.
    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        written = []
        if self.index is not None and "index" not in exclude:
            self.index.to_disk(path / "index")
            written.append(f"index/{checksums.MANIFEST}")
        if self._surrogate_bytes is not None and "index" not in exclude:
            (path / "surrogate").write_bytes(self._surrogate_bytes)
            written.append("surrogate")
        if self._encoder is not None and "index" not in exclude:
            (path / "embeddings").write_bytes(self._encoder.to_bytes())
            written.append("embeddings")
        if "cfg" not in exclude:
            srsly.write_json(path / "cfg", {**self.cfg, "fingerprint": self.fingerprint})
            written.append("cfg")
        checksums.write_manifest(path, written)

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "SegmentInfluence":
        path = Path(path)
        if not (path / checksums.MANIFEST).exists():
            raise IndexFormatError(
                f"{path}: written by an older version, without the checksums that tie its cfg and index "
                "together; re-index (`segment-influence index`)"
            )
        checksums.verify(path)
        if "cfg" not in exclude:
            cfg = checksums.read_json(path / "cfg")
            if not isinstance(cfg, dict) or "fingerprint" not in cfg:
                raise IndexCorruptError(f"{path / 'cfg'}: not a segment_influence cfg; re-index")
            self.fingerprint = cfg.pop("fingerprint")
            check_cfg({**self.cfg, **cfg}, str(path / "cfg"))
            self.cfg.update(cfg)
        if "index" not in exclude:
            self.index = SegmentIndex.from_disk(path / "index") if (path / "index").exists() else None
            self._surrogate = None
            self._surrogate_bytes = (path / "surrogate").read_bytes() if (path / "surrogate").exists() else None
            stored = path / "embeddings"
            self._encoder = EncoderExplainer.from_bytes(stored.read_bytes()) if stored.exists() else None
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        msg: dict = {}
        if "cfg" not in exclude:
            msg.update(cfg=self.cfg, fingerprint=self.fingerprint)
        if "index" not in exclude:
            msg["index"] = self.index.to_bytes() if self.index is not None else None
            msg["surrogate"] = self._surrogate_bytes
            msg["embeddings"] = self._encoder.to_bytes() if self._encoder is not None else None
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, data: bytes, *, exclude: Iterable[str] = tuple()) -> "SegmentInfluence":
        msg = srsly.msgpack_loads(data)
        if "cfg" not in exclude and "cfg" in msg:
            check_cfg({**self.cfg, **msg["cfg"]}, f"segment_influence {self.name!r}: the serialized cfg")
            self.cfg.update(msg["cfg"])
            self.fingerprint = msg["fingerprint"]
        if "index" not in exclude and "index" in msg:
            self.index = SegmentIndex.from_bytes(msg["index"]) if msg["index"] is not None else None
            self._surrogate, self._surrogate_bytes = None, msg.get("surrogate")
            stored = msg.get("embeddings")
            self._encoder = EncoderExplainer.from_bytes(stored) if stored is not None else None
        return self


def top_k_of(scores: numpy.ndarray, k: int) -> List[QueryResult]:
    """The k most supporting (positive, best first) and k most opposing (negative, most
    negative first) segments of each row of a full score matrix [Q, S]."""
    results = []
    for row in scores:
        order = numpy.argsort(-row, kind="stable")
        top, bottom = order[:k], order[::-1][:k]
        results.append(
            QueryResult(
                [(int(j), float(row[j])) for j in top if row[j] > 0],
                [(int(j), float(row[j])) for j in bottom if row[j] < 0],
            )
        )
    return results


def _labelled_query(span: Span, label: Optional[str]) -> Tuple[Span, List[Span]]:
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


def _entity_probabilities(
    ner: CRFEntityRecognizer, features: List[numpy.ndarray], queries: List[Tuple[int, Span]]
) -> List[float]:
    """The CRF's probability of each queried span with its label ("O": no entity there)."""
    entities: List[List[Entity]] = [[] for _ in features]
    for i, span in queries:
        entities[i].append((span.start, span.end, span.label_ or "O"))
    found = [iter(probs) for probs in probabilities_from_features(ner, features, entities)]
    return [next(found[i]) for i, _ in queries]
