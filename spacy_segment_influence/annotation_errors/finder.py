"""Score annotation-error candidates (`candidates.py`) with the model trained on the whole
corpus (DESIGN.md section 6). Each method gives one score per candidate, higher = more
suspicious:

- `combined` (the default of `find-errors`): the model's evidence (held-out harm and loss,
  as `influence`) and the corpus' own (`consistency`), the three by Fisher's method.
- `influence`: how much the candidate's gold labels raise the held-out (dev) loss,
  combined with how badly the model fits them (see `ErrorFinder.influence`).
- `consistency`: how differently the rest of the corpus labels the same strings
  (`surface_forms.disagreement`); model-free.
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

`ErrorFinder` scores in-sample, with a model that has memorised most of its training
labels, wrong ones included; `crossfit.CrossFitFinder` scores each document with a fold
model that did not train on it.
"""

from functools import cached_property
from typing import List, Optional, Sequence, Type

import numpy
from spacy.language import Language
from spacy.tokens import Doc

from ..exceptions import ConfigError, DataError
from ..influence.curvature import Curvature, curvature_class
from ..influence.gradients import FactoredGradients
from ..influence.index import SegmentIndex
from ..influence.segments import segment_gradients, segment_losses, token_marginals
from ..ner.known_labels import check_known_labels
from ..pipeline.component import SegmentInfluence
from .candidates import Annotated, Candidate, annotate, explaining_crf, segments_of
from .methods import score
from .surface_forms import disagreement


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
        """
        nlp: the trained pipeline (with the `crf_ner` component `ner`, or a built-in ner
            that an indexed `segment_influence` explains through its CRF surrogate); if it also holds
            an indexed `segment_influence` component for `ner`, that index's curvature is
            used, so scores match its explanations.
        train_docs: the training corpus whose annotations are checked (gold entities).
        dev_docs: held-out docs with trusted labels; `influence` (the held-out harm) and
            `influenced` need them.
        ner: the name of the `crf_ner` component.
        curvature: a registered curvature (`curvature.CURVATURES`) fitted on the training
            tokens when the pipeline has no index.
        damping: that curvature's damping.
        seed: the seed of the `random` baseline.
        candidates: score these regions of `train_docs` (e.g. the ones another model
            found) instead of finding them from this model's predictions.
        """
        curvature_type = curvature_class(curvature)
        self.nlp = nlp
        self.ner_name = ner
        self.ner = explaining_crf(nlp, ner)
        self.seed = seed
        check_known_labels(train_docs, self.ner.labels, "the training corpus")
        if dev_docs:
            check_known_labels(dev_docs, self.ner.labels, "the held-out corpus")
        self.train = annotate(nlp, ner, train_docs, regions=candidates)
        if not self.train.candidates:
            raise DataError("No candidates: the training docs have no gold or predicted entities")
        self.dev = annotate(nlp, ner, dev_docs) if dev_docs else None
        self.grads = segment_gradients(self.ner, self.train.batch, segments_of(self.train.candidates))
        self.curvature = self._curvature(curvature_type, damping)
        # the candidates, searchable by cosine like `explain` searches the index
        self.train_index = SegmentIndex.build(self.grads, self.train.candidates, self.curvature, normalize=True)

    @property
    def candidates(self) -> List[Candidate]:
        return self.train.candidates

    @property
    def docs(self) -> List[Doc]:
        """The training docs the candidates' `doc_index` points into."""
        return self.train.docs

    def _curvature(self, curvature_type: Type[Curvature], damping: float) -> Curvature:
        """The indexed pipeline's curvature when there is one (scores then match
        `explain`), else `curvature_type` fitted on the training sentences."""
        indexed = (p for _, p in self.nlp.pipeline if isinstance(p, SegmentInfluence) and p.index is not None)
        component = next((p for p in indexed if p.cfg["ner"] == self.ner_name), None)
        if component is not None:
            return component.check_index().curvature
        statistics = curvature_type.statistics()
        statistics.add(self.ner, self.train.batch)
        return curvature_type.fit(self.ner, statistics, self.grads, damping)

    def scores(self, method: str) -> numpy.ndarray:
        """One score per candidate, higher = more likely wrong (`methods.METHODS`)."""
        return score(self, method)

    def self_influence(self) -> numpy.ndarray:
        """g^T H^-1 g of each candidate's own segment loss (its squared index norm)."""
        return self.train_index.norms.astype("float64") ** 2

    def consistency(self) -> numpy.ndarray:
        """How differently the rest of the training corpus labels each candidate's strings."""
        return disagreement(self.docs, self.candidates)

    def losses(self) -> numpy.ndarray:
        """Segment losses -log p(y_S | y_outside, x) under the gold labels."""
        return segment_losses(self.ner, self.train.batch, segments_of(self.candidates))

    def worst_token(self, kind: str) -> numpy.ndarray:
        """Per candidate, the lowest p(gold tag) (confidence) or p(gold) - max p(other)
        (margin) over its tokens, from the model's unclamped marginals."""
        features = self.train.batch.features
        _, marginals = token_marginals(self.ner, features)
        starts = numpy.concatenate([[0], numpy.cumsum([len(x) for x in features])])
        out = numpy.empty(len(self.candidates))
        for i, c in enumerate(self.candidates):
            q = marginals[starts[c.doc_index] + c.start : starts[c.doc_index] + c.end].astype("float64")
            gold = numpy.asarray(self.train.batch.tags[c.doc_index][c.start : c.end])
            p_gold = q[numpy.arange(len(gold)), gold]
            if kind == "margin":
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
            raise ConfigError("Influence on held-out predictions needs dev docs (--dev DEV.spacy)")
        return segment_gradients(self.ner, self.dev.batch, segments_of(self.dev.candidates))

    @cached_property
    def dev_index(self) -> SegmentIndex:
        """The held-out queries, searchable like the training index."""
        assert self.dev is not None  # dev_grads raised otherwise
        return SegmentIndex.build(self.dev_grads, self.dev.candidates, self.curvature, normalize=True)

    def harm(self) -> numpy.ndarray:
        """-g_dev^T H^-1 g_c, g_dev the gradient of the total held-out loss (all dev
        regions, under their dev gold labels): how much upweighting the candidate's
        labels would raise the held-out loss (I_up,loss of Koh & Liang 2017, eq. 2). Linear in
        the queries, so they are summed into one preconditioned direction first."""
        return -self.train_index.total_influence(self.dev_grads)

    def influenced(self, k: int = 3) -> List[List[dict]]:
        """Per candidate, the k dev regions it supports most (score > 0) and the k it
        opposes most (score < 0), by cosine-normalised influence, as review records."""
        results = self.dev_index.top_k(self.grads, k=k)
        assert self.dev is not None
        return [[_held_out_record(self.dev, j, s) for j, s in r.supporters + r.opposers] for r in results]


def _held_out_record(dev: Annotated, index: int, score: float, window: int = 8) -> dict:
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
