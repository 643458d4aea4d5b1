"""Rank training annotations by how likely they are wrong, and score a ranking against
corrected labels (DESIGN.md section 6).

Candidates are regions of training sentences where an annotation error could sit: every
gold entity, and every place where the model's prediction disagrees with gold. Each is
scored by one method, higher = more suspicious:

- `influence`: how much the candidate's gold labels raise the held-out (dev) loss,
  combined with how badly the model fits them (see `ErrorFinder.influence`).
- `self-influence`: g^T H^-1 g of the candidate's segment loss (Koh & Liang 2017,
  "Understanding Black-box Predictions via Influence Functions"; Pruthi et al. 2020,
  "Estimating Training Data Influence by Tracing Gradient Descent", use self-influence
  to find mislabelled examples).
- `loss`: the segment loss -log p(y_S | y_outside, x) under the gold labels.
- `margin`: the model's preference for another tag over the gold one, on the worst token
  (the "normalized margin" of Northcutt, Athalye & Mueller 2021, "Pervasive Label
  Errors in Test Sets Destabilize Machine Learning Benchmarks").
- `confidence`: minus the self-confidence p(gold tag) of the worst token (Northcutt,
  Jiang & Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels";
  min-pooled over tokens as in Wang & Mueller 2022, "Detecting Label Errors in Token
  Classification Data").
- `random`: a seeded shuffle, the floor every method must clear.

`ErrorFinder` scores with the model trained on the whole corpus (in-sample), which has
memorised most of its training labels, wrong ones included. `CrossFitFinder` scores each
document with a fold model that did not train on it (cross-fitting, from `split_folds`);
its `influence` combines the full model's held-out harm with the out-of-fold loss.
"""
import math
import random
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import numpy
import srsly
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from . import bridge
from .bridge import LabelledBatch, Segment
from .component import SegmentInfluence
from .curvature import Curvature, IdentityCurvature, KFACCurvature
from .gradients import FactoredGradients
from .index import SegmentIndex

METHODS = ("influence", "self-influence", "loss", "margin", "confidence", "random")
CURVATURES = ("identity", "kfac")
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


class _Annotated(NamedTuple):
    """Gold docs, the head's view of them (with gold tags), and their candidates."""

    docs: List[Doc]
    batch: LabelledBatch
    candidates: List[Candidate]


def _annotate(
    nlp: Language,
    ner_name: str,
    docs: Sequence[Doc],
    batch_size: int = 256,
    regions: Optional[Sequence[Candidate]] = None,
) -> _Annotated:
    """`regions`: score these candidates (found by another model) instead of the ones
    this model's predictions give."""
    ner = nlp.get_pipe(ner_name)
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
    return _Annotated(list(docs), batch, candidates)


def _segments(candidates: Sequence[Candidate]) -> List[Segment]:
    return [Segment(c.doc_index, c.start, c.end) for c in candidates]


class ErrorFinder:
    """The candidates of a training corpus and everything their scores share, computed
    once, so that all methods can be compared in one run."""

    def __init__(
        self,
        nlp: Language,
        train_docs: Sequence[Doc],
        dev_docs: Optional[Sequence[Doc]] = None,
        *,
        ner: str = "crf_ner",
        curvature: str = "kfac",
        damping: float = 0.001,
        seed: int = 0,
        candidates: Optional[Sequence[Candidate]] = None,
    ) -> None:
        """`candidates`: score these regions of `train_docs` (e.g. the ones another model
        found) instead of finding them from this model's predictions."""
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got {curvature!r}")
        self.nlp = nlp
        self.ner_name = ner
        self.ner = nlp.get_pipe(ner)
        self.seed = seed
        self.train = _annotate(nlp, ner, train_docs, regions=candidates)
        if not self.train.candidates:
            raise ValueError("No candidates: the training docs have no gold or predicted entities")
        self.dev = _annotate(nlp, ner, dev_docs) if dev_docs else None
        self.grads = bridge.segment_gradients(self.ner, self.train.batch, _segments(self.train.candidates))
        self.curvature = self._curvature(curvature, damping)
        self._index = SegmentIndex.build(self.grads, self.train.candidates, self.curvature, normalize=True)

    @property
    def candidates(self) -> List[Candidate]:
        return self.train.candidates

    @property
    def docs(self) -> List[Doc]:
        """The training docs the candidates' `doc_index` points into."""
        return self.train.docs

    def _curvature(self, name: str, damping: float) -> Curvature:
        """The indexed pipeline's curvature when there is one (scores then match
        `explain`), else the identity or K-FAC fitted on the training tokens."""
        indexed = (p for _, p in self.nlp.pipeline if isinstance(p, SegmentInfluence) and p.index is not None)
        component = next((p for p in indexed if p.cfg["ner"] == self.ner_name), None)
        if component is not None:
            component.check_index()
            return component.index.curvature
        if name == "identity":
            return IdentityCurvature()
        h, marginals = bridge.token_marginals(self.ner, self.train.batch.features)
        return KFACCurvature.fit(h, marginals, self.grads.dense, damping)

    def scores(self, method: str) -> numpy.ndarray:
        """One score per candidate, higher = more likely wrong."""
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}")
        if method == "influence":
            return self.influence()
        if method == "self-influence":
            return self._index.norms.astype("float64") ** 2
        if method == "loss":
            return self.losses()
        if method == "random":
            return numpy.random.default_rng(self.seed).random(len(self.candidates))
        return -self._worst_token(method)

    def losses(self) -> numpy.ndarray:
        """Segment losses -log p(y_S | y_outside, x) under the gold labels."""
        return bridge.segment_losses(self.ner, self.train.batch, _segments(self.candidates))

    def _worst_token(self, method: str) -> numpy.ndarray:
        """Per candidate, the lowest p(gold tag) (confidence) or p(gold) - max p(other)
        (margin) over its tokens, from the model's unclamped marginals."""
        features = self.train.batch.features
        _, marginals = bridge.token_marginals(self.ner, features)
        starts = numpy.concatenate([[0], numpy.cumsum([len(x) for x in features])])
        out = numpy.empty(len(self.candidates))
        for i, c in enumerate(self.candidates):
            q = marginals[starts[c.doc_index] + c.start : starts[c.doc_index] + c.end].astype("float64")
            gold = numpy.asarray(self.train.batch.tags[c.doc_index][c.start : c.end])
            p_gold = q[numpy.arange(len(gold)), gold]
            if method == "margin":
                q[numpy.arange(len(gold)), gold] = -numpy.inf
                p_gold = p_gold - q.max(axis=1)
            out[i] = p_gold.min()
        return out

    # -- held-out influence --------------------------------------------------------------
    @cached_property
    def dev_grads(self) -> FactoredGradients:
        """The held-out queries: dev regions (gold entities and the model's disagreements
        with them), each under its dev gold labels."""
        if self.dev is None:
            raise ValueError("Influence on held-out predictions needs dev docs (--dev DEV.spacy)")
        return bridge.segment_gradients(self.ner, self.dev.batch, _segments(self.dev.candidates))

    @cached_property
    def dev_index(self) -> SegmentIndex:
        return SegmentIndex.build(self.dev_grads, self.dev.candidates, self.curvature, normalize=True)

    def harm(self) -> numpy.ndarray:
        """-g_dev^T H^-1 g_c, g_dev the gradient of the total held-out loss (all dev
        regions, under their dev gold labels): how much upweighting the candidate's
        labels would raise the held-out loss (I_up,loss of Koh & Liang 2017, eq. 2). Linear in
        the queries, so they are summed into one preconditioned direction first."""
        return -self._index.total_influence(self.dev_grads)

    def influence(self) -> numpy.ndarray:
        """Held-out harm and the candidate's own segment loss, combined by Fisher's method
        (Fisher 1925, "Statistical Methods for Research Workers") on their empirical tail
        probabilities: -log p_harm - log p_loss. Harm alone finds
        labels that spread to held-out predictions (systematic errors) but misses odd
        one-off labels the dev set has no neighbours for; the loss finds those. Measured
        against each signal alone and other combinations in bench/find_errors.py."""
        return _neg_log_tail(self.harm()) + _neg_log_tail(self.losses())

    def influenced(self, k: int = 3) -> List[List[dict]]:
        """Per candidate, the k dev regions it supports most (score > 0) and the k it
        opposes most (score < 0), by cosine-normalised influence, as review records."""
        results = self.dev_index.top_k(self.grads, k=k)
        return [[_held_out_record(self.dev, j, s) for j, s in r.supporters + r.opposers] for r in results]


def _neg_log_tail(scores: numpy.ndarray) -> numpy.ndarray:
    """-log of each score's empirical upper-tail probability (the best scores 1/n)."""
    tail = numpy.empty(len(scores))
    tail[numpy.argsort(-scores, kind="stable")] = numpy.arange(1, len(scores) + 1) / len(scores)
    return -numpy.log(tail)


def _held_out_record(dev: _Annotated, index: int, score: float, window: int = 8) -> dict:
    candidate = dev.candidates[index]
    doc = dev.docs[candidate.doc_index]
    return {
        "doc_id": doc.user_data.get("id"),
        "text": doc[candidate.start : candidate.end].text,
        "left": doc[max(0, candidate.start - window) : candidate.start].text,
        "right": doc[candidate.end : candidate.end + window].text,
        "label": candidate.label,
        "predicted": candidate.suggested,
        "correct": candidate.kind == "agreed",
        "score": float(score),
    }


# -- cross-fitting ------------------------------------------------------------------------
def split_folds(docs: Sequence[Doc], n_folds: int = 2, seed: int = 0) -> List[List[int]]:
    """Indices of `docs` in `n_folds` folds of whole documents (sentences sharing the
    `user_data["id"]` prefix, see `document_of`; a sentence without an id is its own
    document), by a seeded shuffle of the documents. Sentences of one document share
    names and topics, so splitting them would leak their labels across folds."""
    if n_folds < 2:
        raise ValueError(f"Cross-fitting needs at least 2 folds, got {n_folds}")
    keys = [document_of(doc.user_data["id"]) if "id" in doc.user_data else f"#{i}" for i, doc in enumerate(docs)]
    documents = list(dict.fromkeys(keys))
    if len(documents) < n_folds:
        raise ValueError(f"{len(documents)} documents can't fill {n_folds} folds")
    random.Random(seed).shuffle(documents)
    bounds = [k * len(documents) // n_folds for k in range(n_folds + 1)]
    fold_of = {d: k for k in range(n_folds) for d in documents[bounds[k] : bounds[k + 1]]}
    return [[i for i, key in enumerate(keys) if fold_of[key] == k] for k in range(n_folds)]


def write_folds(docs: Sequence[Doc], out_dir: Path, n_folds: int = 2, seed: int = 0) -> List[Path]:
    """Write out_dir/train_<k>.spacy, every doc of `docs` except fold k's (`split_folds`),
    for training the model that will score fold k. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, held_out in enumerate(split_folds(docs, n_folds, seed)):
        skip = set(held_out)
        paths.append(out_dir / f"train_{k}.spacy")
        DocBin(docs=[doc for i, doc in enumerate(docs) if i not in skip], store_user_data=True).to_disk(paths[-1])
    return paths


def held_out_indices(train_docs: Sequence[Doc], fold_train_docs: Sequence[Sequence[Doc]]) -> List[List[int]]:
    """Per fold model (given the corpus it was trained on), the indices of the training
    docs it did not see, matched by `user_data["id"]` (else by text). Every training doc
    must be unseen by exactly one fold model."""
    def key(doc: Doc) -> str:
        return doc.user_data.get("id") or doc.text

    seen = [{key(doc) for doc in docs} for docs in fold_train_docs]
    held_out: List[List[int]] = [[] for _ in seen]
    for i, doc in enumerate(train_docs):
        unseen_by = [k for k, keys in enumerate(seen) if key(doc) not in keys]
        if len(unseen_by) != 1:
            raise ValueError(
                f"Training doc {key(doc)[:60]!r} is missing from the training data of {len(unseen_by)} fold models, "
                "not exactly 1: train each fold model on all folds but one (see `split-folds`)"
            )
        held_out[unseen_by[0]].append(i)
    return held_out


class CrossFitFinder:
    """Cross-fitted (out-of-fold) scores, as cleanlab computes its predicted
    probabilities (Northcutt, Jiang & Chuang 2021): each training doc is annotated and
    scored by a fold model that was not trained on it. A model that trained on a label
    has mostly memorised it, so its loss, margin, confidence and gradient there are near
    zero whether the label is right or wrong; a model that never saw the doc still tells
    them apart.

    The candidates are the fold models' (gold entities and their disagreements with
    gold); `loss`, `margin`, `confidence` and `self-influence` are the fold models'.
    `influence` combines, by Fisher's method as `ErrorFinder.influence` does, the
    out-of-fold loss with the held-out harm of `model`, the model trained on all the
    data: the harm asks how much a label the model *learned* raises the held-out loss,
    which only a model that trained on it can answer (measured in bench/find_errors.py:
    the fold models' own harm, `fold_harm`, ranks worse than the full model's on all
    three corpora).

    `folds`: (fold model, indices of the `train_docs` it did not see) per fold, e.g. from
    `split_folds` or `held_out_indices`; every doc must be held out by exactly one fold.
    Same interface as `ErrorFinder`."""

    def __init__(
        self,
        folds: Sequence[Tuple[Language, Sequence[int]]],
        train_docs: Sequence[Doc],
        dev_docs: Optional[Sequence[Doc]] = None,
        *,
        model: Optional[Language] = None,
        seed: int = 0,
        **options,
    ) -> None:
        covered = sorted(i for _, indices in folds for i in indices)
        if covered != list(range(len(train_docs))):
            raise ValueError("The folds' held-out docs must cover every training doc exactly once")
        self.docs = list(train_docs)
        self.dev_docs = dev_docs
        self.model = model
        self.seed = seed
        self.options = options
        self.finders: List[ErrorFinder] = []
        candidates: List[Candidate] = []
        for nlp, indices in folds:
            if not indices:
                continue
            finder = ErrorFinder(nlp, [train_docs[i] for i in indices], dev_docs, seed=seed, **options)
            self.finders.append(finder)
            candidates += [replace(c, doc_index=indices[c.doc_index]) for c in finder.candidates]
        # candidates in corpus order, whichever fold found them
        self._order = sorted(range(len(candidates)), key=lambda i: (candidates[i].doc_index, candidates[i].start))
        self.candidates = [candidates[i] for i in self._order]
        self.dev = self.finders[0].dev

    def _gather(self, per_fold: Iterable[Sequence]) -> list:
        pooled = [x for part in per_fold for x in part]
        return [pooled[i] for i in self._order]

    @cached_property
    def full(self) -> ErrorFinder:
        """The candidates scored by `model`, the model trained on all the data."""
        if self.model is None:
            raise ValueError("Cross-fitted influence needs the model trained on all the data (model=...)")
        finder = ErrorFinder(
            self.model, self.docs, self.dev_docs, seed=self.seed, candidates=self.candidates, **self.options
        )
        if len(finder.candidates) != len(self.candidates):
            raise ValueError("The full model's annotation scheme leaves some cross-fitted candidates unannotated")
        return finder

    def scores(self, method: str) -> numpy.ndarray:
        """One score per candidate, higher = more likely wrong."""
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}")
        if method == "influence":
            return self.influence()
        if method == "random":
            return numpy.random.default_rng(self.seed).random(len(self.candidates))
        return numpy.asarray(self._gather(f.scores(method) for f in self.finders))

    def losses(self) -> numpy.ndarray:
        """Out-of-fold segment losses."""
        return numpy.asarray(self._gather(f.losses() for f in self.finders))

    def harm(self) -> numpy.ndarray:
        """The held-out harm of the full model's labels (`ErrorFinder.harm`)."""
        return self.full.harm()

    def fold_harm(self) -> numpy.ndarray:
        """The held-out harm of adding each candidate's labels to its fold model's
        training data (-g_dev^T H^-1 g_c at the fold model), ranked within its fold
        (-log tail) so that the fold models' scales don't mix. A diagnostic."""
        return numpy.asarray(self._gather(_neg_log_tail(f.harm()) for f in self.finders))

    def influence(self) -> numpy.ndarray:
        """-log p_harm - log p_loss (Fisher's method): the full model's held-out harm and
        the out-of-fold loss."""
        return _neg_log_tail(self.harm()) + _neg_log_tail(self.losses())

    def influenced(self, k: int = 3) -> List[List[dict]]:
        """Per candidate, the held-out regions its labels support and oppose most, by the
        full model when there is one (as its harm is), else by its fold model."""
        if self.model is not None:
            return self.full.influenced(k)
        return self._gather(f.influenced(k) for f in self.finders)


# -- review records ----------------------------------------------------------------------
def rank(finder: Union[ErrorFinder, "CrossFitFinder"], method: str, k: int = 3) -> List[dict]:
    """Prodigy-style review records of all candidates, most suspicious first. With dev
    docs, each names the k held-out regions it supports and the k it opposes most."""
    scores = finder.scores(method)
    influenced = finder.influenced(k) if finder.dev is not None and k > 0 else None
    order = numpy.argsort(-scores, kind="stable")
    return [
        review_record(
            finder.docs[finder.candidates[i].doc_index],
            finder.candidates[i],
            {"score": float(scores[i]), "method": method, "rank": position + 1},
            influenced[i] if influenced is not None else [],
        )
        for position, i in enumerate(order)
    ]


def review_record(doc: Doc, candidate: Candidate, ranking: dict, influenced: List[dict]) -> dict:
    """One candidate as a Prodigy task: the sentence, its tokens, and the candidate region
    as a span with its current label ("O" if not annotated); the model's suggestion and
    the evidence go in meta. Token ends are inclusive, as in Prodigy."""
    return {
        "text": doc.text,
        "tokens": [
            {"text": t.text, "start": t.idx, "end": t.idx + len(t), "id": t.i, "ws": bool(t.whitespace_)} for t in doc
        ],
        "spans": [_prodigy_span(doc, (candidate.start, candidate.end, candidate.label))],
        "meta": {
            "doc_id": doc.user_data.get("id"),
            "doc_index": candidate.doc_index,
            **ranking,
            "kind": candidate.kind,
            "label": candidate.label,
            "suggested_label": candidate.suggested,
            "gold_spans": [_prodigy_span(doc, e) for e in candidate.gold],
            "suggested_spans": [_prodigy_span(doc, e) for e in candidate.predicted],
            "influenced": influenced,
        },
    }


def _prodigy_span(doc: Doc, entity: Entity) -> dict:
    start, end, label = entity
    span = doc[start:end]
    return {"start": span.start_char, "end": span.end_char, "token_start": start, "token_end": end - 1, "label": label}


# -- evaluation against corrected labels -------------------------------------------------
def read_tags(path: Path) -> Dict[str, List[str]]:
    """Sentence id -> BIO tags of a JSONL corpus."""
    return {record["id"]: record["ner_tags"] for record in srsly.read_jsonl(path)}


def document_of(sentence_id: str) -> str:
    """`conll_train_12_3` -> `conll_train_12`: sentence ids end in `_<sentence>`."""
    return sentence_id.rsplit("_", 1)[0]


def changed_tokens(original: Dict[str, List[str]], corrected: Dict[str, List[str]]) -> Dict[str, Set[int]]:
    """Sentence id -> positions whose tag differs between the two labellings."""
    if original.keys() != corrected.keys():
        missing = sorted(original.keys() ^ corrected.keys())
        raise ValueError(f"The original and corrected files have different sentence ids (e.g. {missing[0]!r})")
    changed = {}
    for sentence_id, tags in original.items():
        if len(tags) != len(corrected[sentence_id]):
            raise ValueError(f"Sentence {sentence_id!r} has a different number of tokens in the corrected file")
        diff = {i for i, (a, b) in enumerate(zip(tags, corrected[sentence_id])) if a != b}
        if diff:
            changed[sentence_id] = diff
    return changed


def evaluate_ranking(
    ranked: Sequence[Tuple[str, int, int]], original: Dict[str, List[str]], corrected: Dict[str, List[str]]
) -> Dict[str, float]:
    """Metrics of a ranking of (sentence id, token start, token end exclusive) regions,
    most suspicious first. A region is an error when any of its tokens' tags differ
    between `original` and `corrected`."""
    changed = changed_tokens(original, corrected)
    unknown = next((sid for sid, _, _ in ranked if sid not in original), None)
    if unknown is not None:
        raise ValueError(f"Ranked sentence {unknown!r} is not in the original file")
    is_error = [any(t in changed.get(sid, ()) for t in range(start, end)) for sid, start, end in ranked]
    documents = list(dict.fromkeys(document_of(sid) for sid in original))
    error_docs = {document_of(sid) for sid in changed}
    ranked_docs = list(dict.fromkeys(document_of(sid) for sid, _, _ in ranked))
    doc_order = ranked_docs + [d for d in documents if d not in set(ranked_docs)]
    metrics = {
        "n_candidates": len(ranked),
        "n_error_candidates": int(sum(is_error)),
        "ap": average_precision(is_error),
        "p@100": sum(is_error[:100]) / 100,
        **{f"recall@{p}%": recall_at(is_error, math.ceil(len(ranked) * p / 100)) for p in (1, 5, 10)},
        "n_docs": len(documents),
        "n_error_docs": len(error_docs),
        "n_error_docs_with_candidates": len(error_docs & {document_of(sid) for sid, _, _ in ranked}),
    }
    doc_hits = [d in error_docs for d in doc_order]
    for k in (100, 200, 400):
        metrics[f"doc_recall@{k}"] = recall_at(doc_hits, k)
    metrics["doc_auc"] = recall_auc(doc_hits)
    return metrics


def average_precision(is_error: Sequence[bool]) -> float:
    """Mean over the errors of the precision at their rank (0 without errors)."""
    hits = numpy.asarray(is_error, dtype=bool)
    if not hits.any():
        return 0.0
    precision = numpy.cumsum(hits) / numpy.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def recall_at(is_error: Sequence[bool], k: int) -> float:
    """Share of all errors among the first k."""
    total = sum(is_error)
    return sum(is_error[:k]) / total if total else 0.0


def recall_auc(is_error: Sequence[bool]) -> float:
    """Area under recall@k against k / n for k = 1..n: 1 puts every error first, about
    0.5 is a random order (the paper's document-level AUC)."""
    hits = numpy.asarray(is_error, dtype=bool)
    if not hits.any():
        return 0.0
    return float((numpy.cumsum(hits) / hits.sum()).mean())


def ranked_regions(records: Iterable[dict]) -> List[Tuple[str, int, int]]:
    """(sentence id, token start, token end exclusive) of review records, in file order."""
    out = []
    for line, record in enumerate(records, start=1):
        sentence_id = record.get("meta", {}).get("doc_id")
        if sentence_id is None or not record.get("spans"):
            raise ValueError(f"Ranking line {line} has no meta.doc_id or no span: was it written by find-errors?")
        span = record["spans"][0]
        out.append((sentence_id, span["token_start"], span["token_end"] + 1))
    return out
