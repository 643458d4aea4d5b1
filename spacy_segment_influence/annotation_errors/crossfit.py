"""Cross-fitting (DESIGN.md section 6): split a training corpus into folds of whole
documents, train one model per fold on the other folds, and score each document with the
fold model that did not train on it (`CrossFitFinder`)."""

import random
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from ..exceptions import ConfigError, DataError
from ..storage.atomic import write_atomic
from .candidates import Candidate
from .finder import ErrorFinder
from .methods import neg_log_tail, score
from .surface_forms import disagreement


def document_of(sentence_id: str) -> str:
    """`conll_train_12_3` -> `conll_train_12`: sentence ids end in `_<sentence>`."""
    return sentence_id.rsplit("_", 1)[0]


def split_folds(docs: Sequence[Doc], n_folds: int = 2, seed: int = 0) -> List[List[int]]:
    """Indices of `docs` in `n_folds` folds of whole documents (sentences sharing the
    `user_data["id"]` prefix, see `document_of`; a sentence without an id is its own
    document), by a seeded shuffle of the documents. Sentences of one document share
    names and topics, so splitting them would leak their labels across folds."""
    if n_folds < 2:
        raise ConfigError(f"Cross-fitting needs at least 2 folds, got {n_folds}")
    keys = [document_of(doc.user_data["id"]) if "id" in doc.user_data else f"#{i}" for i, doc in enumerate(docs)]
    documents = list(dict.fromkeys(keys))
    if len(documents) < n_folds:
        raise DataError(f"{len(documents)} documents can't fill {n_folds} folds")
    random.Random(seed).shuffle(documents)
    bounds = [k * len(documents) // n_folds for k in range(n_folds + 1)]
    fold_of = {d: k for k in range(n_folds) for d in documents[bounds[k] : bounds[k + 1]]}
    return [[i for i, key in enumerate(keys) if fold_of[key] == k] for k in range(n_folds)]


def fold_corpus(docs: Sequence[Doc], held_out: Sequence[int]) -> DocBin:
    """The training corpus of the model that scores fold `held_out`: every other doc,
    user_data (ids) kept."""
    skip = set(held_out)
    return DocBin(docs=[doc for i, doc in enumerate(docs) if i not in skip], store_user_data=True)


def write_folds(docs: Sequence[Doc], out_dir: Path, n_folds: int = 2, seed: int = 0) -> List[Path]:
    """Write out_dir/train_<k>.spacy, every doc of `docs` except fold k's (`split_folds`),
    for training the model that will score fold k. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, held_out in enumerate(split_folds(docs, n_folds, seed)):
        paths.append(out_dir / f"train_{k}.spacy")
        write_atomic(paths[-1], fold_corpus(docs, held_out).to_bytes())
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
            raise DataError(
                f"Training doc {key(doc)[:60]!r} is missing from the training data of {len(unseen_by)} fold models, "
                "not exactly 1: train each fold model on all folds but one (see `split-folds`)"
            )
        held_out[unseen_by[0]].append(i)
    return held_out


class SeedEnsemble:
    """One fold's models trained with different seeds, scoring the candidates the first of
    them found: every score is the models' mean (as nessie's ensembles average their
    members' scores; Klie et al. 2023)."""

    def __init__(self, finders: Sequence[ErrorFinder]) -> None:
        self.finders = list(finders)
        self.dev = self.finders[0].dev
        self.seed = self.finders[0].seed

    @property
    def candidates(self) -> List[Candidate]:
        return self.finders[0].candidates

    def scores(self, method: str) -> numpy.ndarray:
        return numpy.mean([f.scores(method) for f in self.finders], axis=0)

    def self_influence(self) -> numpy.ndarray:
        return numpy.mean([f.self_influence() for f in self.finders], axis=0)

    def worst_token(self, kind: str) -> numpy.ndarray:
        return numpy.mean([f.worst_token(kind) for f in self.finders], axis=0)

    def consistency(self) -> numpy.ndarray:
        return self.finders[0].consistency()

    def losses(self) -> numpy.ndarray:
        return numpy.mean([f.losses() for f in self.finders], axis=0)

    def harm(self) -> numpy.ndarray:
        return numpy.mean([f.harm() for f in self.finders], axis=0)

    def influenced(self, k: int = 3) -> List[List[dict]]:
        return self.finders[0].influenced(k)


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

    Same interface as `ErrorFinder`."""

    def __init__(
        self,
        folds: Sequence[Tuple[Union[Language, Sequence[Language]], Sequence[int]]],
        train_docs: Sequence[Doc],
        dev_docs: Optional[Sequence[Doc]] = None,
        *,
        model: Optional[Language] = None,
        seed: int = 0,
        ner: str = "crf_ner",
        curvature: str = "kfac",
        damping: float = 0.001,
    ) -> None:
        """
        folds: (fold model, indices of the `train_docs` it did not see) per fold, e.g.
            from `split_folds` or `held_out_indices`; every doc must be held out by
            exactly one fold. Several models for one fold (trained with different
            seeds) make an ensemble: the first finds the fold's candidates, every one
            scores them, and their scores are averaged.
        train_docs: the training corpus whose annotations are checked.
        dev_docs: held-out docs with trusted labels (for `influence` and `influenced`).
        model: the model trained on all of `train_docs`, whose held-out harm `influence`
            uses.
        seed: the seed of the `random` baseline.
        ner, curvature, damping: as for `ErrorFinder`, for every model.
        """
        covered = sorted(i for _, indices in folds for i in indices)
        if covered != list(range(len(train_docs))):
            raise DataError("The folds' held-out docs must cover every training doc exactly once")
        self.docs = list(train_docs)
        self.dev_docs = dev_docs
        self.model = model
        self.seed = seed
        self.ner, self.curvature_name, self.damping = ner, curvature, damping
        self.finders: List[Union[ErrorFinder, SeedEnsemble]] = []
        candidates: List[Candidate] = []
        for models, indices in folds:
            if not indices:
                continue
            first, *others = [models] if isinstance(models, Language) else list(models)
            docs = [train_docs[i] for i in indices]
            own = self._finder(first, docs)
            finder = SeedEnsemble([own] + [self._finder(m, docs, own.candidates) for m in others]) if others else own
            self.finders.append(finder)
            candidates += [replace(c, doc_index=indices[c.doc_index]) for c in finder.candidates]
        # candidates in corpus order, whichever fold found them
        self._order = sorted(range(len(candidates)), key=lambda i: (candidates[i].doc_index, candidates[i].start))
        self.candidates = [candidates[i] for i in self._order]
        self.dev = self.finders[0].dev
        self.n_models = sum(1 if isinstance(m, Language) else len(m) for m, _ in folds)

    def _finder(
        self, nlp: Language, docs: Sequence[Doc], candidates: Optional[Sequence[Candidate]] = None
    ) -> ErrorFinder:
        return ErrorFinder(
            nlp,
            docs,
            self.dev_docs,
            ner=self.ner,
            curvature=self.curvature_name,
            damping=self.damping,
            seed=self.seed,
            candidates=candidates,
        )

    def _gather(self, per_fold: Iterable[Iterable[Any]]) -> List[Any]:
        pooled = [x for part in per_fold for x in part]
        return [pooled[i] for i in self._order]

    @cached_property
    def full(self) -> ErrorFinder:
        """The candidates scored by `model`, the model trained on all the data."""
        if self.model is None:
            raise ConfigError("Cross-fitted influence needs the model trained on all the data (model=...)")
        finder = self._finder(self.model, self.docs, self.candidates)
        if len(finder.candidates) != len(self.candidates):
            raise DataError("The full model's annotation scheme leaves some cross-fitted candidates unannotated")
        return finder

    def scores(self, method: str) -> numpy.ndarray:
        """One score per candidate, higher = more likely wrong (`methods.METHODS`)."""
        return score(self, method)

    def self_influence(self) -> numpy.ndarray:
        """Out-of-fold self-influence."""
        return numpy.asarray(self._gather(f.self_influence() for f in self.finders))

    def worst_token(self, kind: str) -> numpy.ndarray:
        """Out-of-fold worst-token margin or confidence."""
        return numpy.asarray(self._gather(f.worst_token(kind) for f in self.finders))

    def consistency(self) -> numpy.ndarray:
        """How differently the whole training corpus (every fold) labels each candidate's
        strings."""
        return disagreement(self.docs, self.candidates)

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
        return numpy.asarray(self._gather(neg_log_tail(f.harm()) for f in self.finders))

    def influenced(self, k: int = 3) -> List[List[dict]]:
        """Per candidate, the held-out regions its labels support and oppose most, by the
        full model when there is one (as its harm is), else by its fold model."""
        if self.model is not None:
            return self.full.influenced(k)
        return self._gather(f.influenced(k) for f in self.finders)
