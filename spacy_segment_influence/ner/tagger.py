"""`crf_ner`: a trainable spaCy NER component with a linear-chain CRF head.

Unlike spaCy's transition-based `ner`, it has a proper probability over tag sequences,
which is what segment influence differentiates (DESIGN.md section 3).
"""

import warnings
from itertools import islice
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, cast

import torch
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, Span
from spacy.training import Example, biluo_tags_to_spans, biluo_to_iob, iob_to_biluo, validate_get_examples
from spacy.training.iob_utils import tags_to_entities
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate, torch2xp, xp2torch
from thinc.types import Floats2d

from ..exceptions import ConfigError, MisalignedEntityWarning, PipelineError
from . import crf
from .entity_scores import Entity, ScoredEntity, score_entities, set_entity_scores
from .head import CRFHead, torch_head

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-segment-influence.CRFTagger.v1"
nO = null

[model.tok2vec]
@architectures = "spacy.HashEmbedCNN.v2"
pretrained_vectors = null
width = 96
depth = 4
embed_size = 2000
window_size = 1
maxout_pieces = 3
subword_features = true
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]
SCHEMES = {"BILUO": "BILU", "BIO": "BI"}


@Language.factory(
    "crf_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc.spans"],
    default_config={
        "model": DEFAULT_MODEL,
        "scheme": "BILUO",
        "scores_key": "ent_scores",
        "candidate_threshold": None,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_crf_ner(
    nlp: Language,
    name: str,
    model: Model,
    scheme: str,
    scores_key: Optional[str],
    candidate_threshold: Optional[float],
    scorer: Optional[Callable],
) -> "CRFEntityRecognizer":
    return CRFEntityRecognizer(
        nlp.vocab,
        model,
        name,
        scheme=scheme,
        scores_key=scores_key,
        candidate_threshold=candidate_threshold,
        scorer=scorer,
    )


class DocPrediction(NamedTuple):
    """The Viterbi tags of a doc and the spans scored for `doc.spans[scores_key]`."""

    tag_ids: List[int]
    scored: List[ScoredEntity]


class CRFEntityRecognizer(TrainablePipe):
    """Named entity recognition by a linear-chain CRF over BILUO or BIO tags."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "crf_ner",
        *,
        scheme: str = "BILUO",
        scores_key: Optional[str] = "ent_scores",
        candidate_threshold: Optional[float] = None,
        scorer: Optional[Callable] = None,
    ) -> None:
        """scores_key: doc.spans key for each predicted entity's exact probability under
        the CRF (attrs["scores"], as spancat); None skips the forward-backward.
        candidate_threshold: also store every other span and label at least this probable.
        """
        scheme = scheme.upper()
        if scheme not in SCHEMES:
            raise ConfigError(f"crf_ner: unknown tag scheme {scheme!r}; use 'BILUO' or 'BIO'")
        if candidate_threshold is not None and not 0.0 < candidate_threshold <= 1.0:
            raise ConfigError(f"crf_ner: candidate_threshold must lie in (0, 1], got {candidate_threshold}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.scores_key = scores_key
        self.candidate_threshold = candidate_threshold
        self.cfg: Dict = {"labels": [], "scheme": scheme}
        self._update_constraints()
        self._warned_misaligned = False

    # -- labels and tags -------------------------------------------------------------
    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def scheme(self) -> str:
        return self.cfg["scheme"]

    @property
    def tags(self) -> List[str]:
        """Tag inventory, "O" first, then each label's prefixes (B, I, L, U or B, I)."""
        prefixes = SCHEMES[self.scheme]
        return ["O"] + [f"{p}-{label}" for label in self.labels for p in prefixes]

    @property
    def temperature(self) -> float:
        """Divides the CRF's scores when it reports probabilities (1: the trained model's
        own; `calibration.calibrate` fits it on held-out data). Viterbi ignores it."""
        return float(self.cfg.get("temperature", 1.0))

    @property
    def constraints(self) -> crf.TagConstraints:
        return self._constraints

    def _update_constraints(self) -> None:
        """Rebuilt whenever the labels change, never lazily on first use: tensors first
        built inside a torch.func transform (the Hessian's) escape its level when
        cached, and the next transform crashes inside torch."""
        self._constraints = crf.tag_constraints(self.tags, self.scheme)

    def add_label(self, label: str) -> int:
        if not isinstance(label, str) or not label or "-" in label:
            raise ConfigError(f"crf_ner {self.name!r}: invalid entity label {label!r}")
        if label in self.labels:
            return 0
        if self.head.n_tags:
            raise PipelineError(
                f"crf_ner '{self.name}': cannot add label {label!r} after the model was sized; "
                "pass all labels before nlp.initialize()"
            )
        self.cfg["labels"] = sorted([*self.labels, label])
        self._update_constraints()
        return 1

    @property
    def head(self) -> CRFHead:
        return torch_head(self.model)

    # -- initialization ------------------------------------------------------------------
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        validate_get_examples(get_examples, "CRFEntityRecognizer.initialize")
        found = labels if labels is not None else {ent.label_ for eg in get_examples() for ent in eg.reference.ents}
        for label in sorted(found):
            self.add_label(label)
        if not self.labels:
            raise PipelineError(f"crf_ner {self.name!r}: no entity labels found in the training data")
        head = self.model.get_ref("head")
        head.set_dim("nO", len(self.tags), force=True)
        tok2vec = self.model.get_ref("tok2vec")
        if tok2vec.has_dim("nO") and tok2vec.get_dim("nO"):
            head.set_dim("nI", tok2vec.get_dim("nO"), force=True)
        doc_sample = [eg.reference for eg in islice(get_examples(), 10)]
        self.model.initialize(X=doc_sample)

    # -- prediction ----------------------------------------------------------------------
    def chain_scores(self, emissions: Sequence[torch.Tensor]) -> crf.ChainScores:
        """Pad per-doc [n, C] emissions (all n >= 1) into a batch with the head's CRF scores."""
        head = self.head
        return crf.ChainScores(
            torch.nn.utils.rnn.pad_sequence(list(emissions), batch_first=True),
            torch.tensor([len(e) for e in emissions], device=emissions[0].device),
            head.transitions,
            head.start,
            head.end,
        )

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        docs = list(docs)
        if not any(len(doc) for doc in docs):
            return [DocPrediction([], []) for _ in docs]
        emissions = self.model.predict(docs)
        with torch.no_grad(), crf.one_thread():
            chain = self.chain_scores([xp2torch(e) for e, doc in zip(emissions, docs) if len(doc)])
            paths = crf.viterbi(chain, self.constraints)
            scored = self.score_entities(chain, [self.entities_from_tag_ids(p) for p in paths])
        predictions = iter(map(DocPrediction, paths, scored))
        return [next(predictions) if len(doc) else DocPrediction([], []) for doc in docs]

    def score_entities(self, chain: crf.ChainScores, entities: Sequence[Sequence[Entity]]) -> List[List[ScoredEntity]]:
        """The entities of each sentence of `chain` with their probabilities (and the
        candidates above `candidate_threshold`); nothing without a `scores_key`."""
        if self.scores_key is None:
            return [[] for _ in entities]
        chain = crf.tempered(chain, self.temperature)
        return score_entities(chain, self.constraints, self.tags, self.scheme, entities, self.candidate_threshold)

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocPrediction]) -> None:
        for doc, prediction in zip(docs, predictions):
            doc.ents = self.spans_from_tag_ids(doc, prediction.tag_ids)
            if self.scores_key is not None:
                set_entity_scores(doc, self.scores_key, prediction.scored)

    def entities_from_tag_ids(self, ids: Sequence[int]) -> List[Entity]:
        """(start, end, label) of the entities a tag path encodes."""
        tags = [self.tags[i] for i in ids]
        if self.scheme == "BIO":
            tags = iob_to_biluo(tags)
        return [(start, end + 1, label) for label, start, end in tags_to_entities(tags)]

    def spans_from_tag_ids(self, doc: Doc, ids: Sequence[int]) -> List[Span]:
        tags = [self.tags[i] for i in ids]
        if self.scheme == "BIO":
            tags = iob_to_biluo(tags)
        return biluo_tags_to_spans(doc, tags)

    # -- training ------------------------------------------------------------------------
    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        self._validate_update(examples)
        if not any(len(eg.predicted) for eg in examples):
            return losses
        set_dropout_rate(self.model, drop)
        emissions, backprop = self.model.begin_update([eg.predicted for eg in examples])
        loss, d_emissions = self.get_loss(examples, emissions)
        backprop(d_emissions)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def _validate_update(self, examples: List[Example]) -> None:
        if not self.labels:
            raise PipelineError(f"crf_ner {self.name!r} was not initialized: call nlp.initialize()")
        for eg in examples:
            if not isinstance(eg, Example):
                raise TypeError(f"crf_ner.update expects Example objects, got {type(eg).__name__}")

    def get_loss(self, examples: Iterable[Example], scores: List[Floats2d]) -> Tuple[float, List[Floats2d]]:
        """CRF negative log-likelihood summed over docs (unknown gold tags marginalise),
        and its gradient with respect to each doc's emission scores."""
        examples = list(examples)
        d_scores = [self.model.ops.alloc2f(*s.shape) for s in scores]
        rows = [i for i, eg in enumerate(examples) if len(eg.predicted)]
        if not rows:
            return 0.0, d_scores
        emissions = [xp2torch(scores[i], requires_grad=True) for i in rows]
        gold = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(self.gold_tag_ids(examples[i])) for i in rows],
            batch_first=True,
            padding_value=-1,
        )
        with crf.one_thread():
            loss = crf.nll(self.chain_scores(emissions), gold, self.constraints).sum()
            loss.backward()  # also leaves d(loss)/d(transitions, start, end) on the head
        for i, tensor in zip(rows, emissions):
            assert tensor.grad is not None
            d_scores[i] = cast(Floats2d, torch2xp(tensor.grad))
        return float(loss.item()), d_scores

    def gold_tag_ids(self, example: Example) -> List[int]:
        """Gold tag id per predicted token; -1 where the gold tag is unknown (missing
        annotation, or an entity that doesn't align with the predicted tokens) so the CRF
        marginalises it. The first misaligned entity is reported once, by doc and span."""
        tag_index = {tag: i for i, tag in enumerate(self.tags)}
        if not self._warned_misaligned:
            self._warn_misaligned(example)
        ids = []
        tags = example.get_aligned_ner()  # BILUO; None or "-" where unknown
        if self.scheme == "BIO":
            tags = biluo_to_iob(tags)
        for tag in tags:
            if tag is None or tag == "-":
                ids.append(-1)
                continue
            if tag not in tag_index:
                raise PipelineError(
                    f"crf_ner {self.name!r}: doc {_doc_name(example)} has an entity "
                    f"label {tag.split('-', 1)[-1]!r} unknown to the model (labels: "
                    f"{', '.join(self.labels)}); add it with add_label before training"
                )
            ids.append(tag_index[tag])
        return ids

    def _warn_misaligned(self, example: Example) -> None:
        for ent in example.reference.ents:
            if example.predicted.char_span(ent.start_char, ent.end_char) is None:
                warnings.warn(_misaligned_message(example, ent), MisalignedEntityWarning, stacklevel=2)
                self._warned_misaligned = True
                return

    def finish_update(self, sgd: Optimizer) -> None:
        self.model.finish_update(sgd)

    # -- serialization -------------------------------------------------------------------
    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()):
        super().from_bytes(bytes_data, exclude=exclude)
        self._update_constraints()
        return self

    def from_disk(self, path, *, exclude=tuple()):
        super().from_disk(path, exclude=exclude)
        self._update_constraints()
        return self


def _doc_name(example: Example) -> str:
    """The doc's id (user_data["id"], as `convert` sets it) or the start of its text."""
    for doc in (example.reference, example.predicted):
        if doc.user_data.get("id") is not None:
            return repr(doc.user_data["id"])
    text = example.reference.text
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def _misaligned_message(example: Example, ent: Span) -> str:
    return (
        f"Entity {ent.text!r} ({ent.label_}, chars {ent.start_char}-{ent.end_char}) in doc "
        f"{_doc_name(example)} does not align with the predicted tokenization; "
        "its tags are treated as unknown (spaCy's W030). Fix the offsets, or train with gold tokens "
        "([corpora.train] gold_preproc = true). Further misalignments are not reported."
    )
