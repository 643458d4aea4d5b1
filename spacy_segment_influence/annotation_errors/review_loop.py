"""Learn from review decisions (DESIGN.md section 6, issue 12): re-rank the candidates a
reviewer has not seen yet from the ones they accepted (the annotation is wrong) or
rejected (it is right).

Real annotation errors are mostly systematic: one convention applied wrongly in many
places (sports clubs tagged with their city's LOC, a division name tagged MISC). A
confirmed error's gradient points the way its siblings' do, so the candidates nearest to
it by gradient cosine (in the index's curvature metric, the same search `explain` runs)
move up, and the neighbours of a rejected one move down. How much each signal counts is
learned from the decisions themselves: a logistic regression of the decision on the
static score (its -log tail probability), the similarity to the nearest accepted and the
similarity to the nearest rejected candidate, with a Gaussian prior centred on
`PRIOR_WEIGHTS` so that a handful of decisions (or decisions of one kind only) still give
a sensible ranking. ActiveAED (Weber & Plank, Findings of ACL 2023) shows that a
detector which learns from each round of human decisions finds more errors per review
than a static ranking; this is that idea with the influence index as the memory.
"""

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy

from ..corpus import read_jsonl_records
from ..exceptions import ConfigError, CorpusFormatError
from .finder import ErrorFinder
from .methods import neg_log_tail
from .metrics import ranked_regions

Region = Tuple[str, int, int]  # sentence id, token start, token end (exclusive)
SIMILARITIES = ("gradient", "features")
# intercept, static score, nearest accepted, nearest rejected
PRIOR_WEIGHTS = numpy.array([0.0, 1.0, 3.0, -3.0])
ANSWERS = {"accept": True, "reject": False}


def read_decisions(path: Path, texts: Optional[Mapping[str, str]] = None) -> Dict[Region, bool]:
    """The decisions of a reviewed `find-errors` ranking (Prodigy's `db-out` or the review
    page's export): region -> True for "accept" (the annotation is wrong), False for
    "reject". Records answered "ignore" (or not answered) are skipped; a decision repeated
    for one region counts once. CorpusFormatError naming the line for an answer other than
    accept, reject or ignore, for contradicting decisions on one region, for a record whose
    text differs from `texts[sentence id]` (decisions on another corpus), and for a file
    without any answer (a ranking passed as decisions)."""
    numbered = list(read_jsonl_records(Path(path)))
    regions = ranked_regions(record for _, record in numbered)
    decisions: Dict[Region, bool] = {}
    first_line: Dict[Region, int] = {}
    answered = 0
    for (line, record), region in zip(numbered, regions):
        answer = record.get("answer")
        if answer is None:
            continue
        if answer not in (*ANSWERS, "ignore"):
            raise CorpusFormatError(f"{path}:{line}: 'answer' must be accept, reject or ignore, got {answer!r}")
        answered += 1
        if answer == "ignore":
            continue
        if texts is not None and region[0] in texts and record.get("text") != texts[region[0]]:
            raise CorpusFormatError(
                f"{path}:{line}: its text differs from sentence {region[0]!r} of the training corpus: "
                "decisions on another corpus, or on another version of it?"
            )
        if decisions.get(region, ANSWERS[answer]) != ANSWERS[answer]:
            raise CorpusFormatError(
                f"{path}:{line}: {answer} contradicts line {first_line[region]} on the same region "
                f"({region[0]!r}, tokens {region[1]}-{region[2] - 1}); keep one decision per region"
            )
        decisions[region] = ANSWERS[answer]
        first_line.setdefault(region, line)
    if not answered:
        raise CorpusFormatError(
            f"{path}: no record has an answer (accept, reject or ignore): pass the review page's export "
            "or Prodigy's db-out, not a ranking"
        )
    return decisions


class ReviewLoop:
    """The candidates of an `ErrorFinder` with the similarities the review loop uses."""

    def __init__(self, finder: ErrorFinder, similarity: str = "gradient", l2: float = 0.1) -> None:
        """
        finder: scores the candidates; its model (trained on all the data) gives the
            gradients and encoder features the similarities use.
        similarity: "gradient" (cosine of the candidates' segment gradients in the
            curvature metric) or "features" (cosine of the mean encoder features over the
            candidate's tokens, the plain nearest-neighbour baseline).
        l2: precision of the Gaussian prior on the weights around `PRIOR_WEIGHTS`.
        """
        if similarity not in SIMILARITIES:
            raise ConfigError(f"Unknown similarity {similarity!r}: use one of {', '.join(SIMILARITIES)}")
        self.finder = finder
        self.similarity = similarity
        self.l2 = l2
        self.regions: List[Region] = [
            (finder.docs[c.doc_index].user_data.get("id", str(c.doc_index)), c.start, c.end) for c in finder.candidates
        ]
        self._position = {region: i for i, region in enumerate(self.regions)}
        self._features: Optional[numpy.ndarray] = None

    def positions(self, decisions: Dict[Region, bool]) -> Tuple[numpy.ndarray, numpy.ndarray, int]:
        """Candidate positions of the decided regions, their decisions, and how many
        decided regions are not candidates (a retrained model finds other regions)."""
        known = [(self._position[r], d) for r, d in decisions.items() if r in self._position]
        indices = numpy.array([i for i, _ in known], dtype=numpy.int64)
        labels = numpy.array([d for _, d in known], dtype=bool)
        return indices, labels, len(decisions) - len(known)

    def similarities(self, indices: numpy.ndarray) -> numpy.ndarray:
        """Cosine similarity [C, len(indices)] of every candidate to the given ones."""
        if self.similarity == "gradient":
            return self.finder.train_index.scores(self.finder.grads.take(indices)).T
        if self._features is None:
            self._features = mean_features(self.finder)
        return self._features @ self._features[indices].T

    def rerank(self, static: numpy.ndarray, indices: numpy.ndarray, labels: numpy.ndarray) -> numpy.ndarray:
        """New scores of every candidate (higher = more likely wrong) given the decisions
        `labels` (True = accepted) on candidates `indices`."""
        design = self.design(static, indices, labels)
        weights = _fit_logistic(design[indices], labels.astype(numpy.float64), PRIOR_WEIGHTS, self.l2)
        return design @ weights

    def design(self, static: numpy.ndarray, indices: numpy.ndarray, labels: numpy.ndarray) -> numpy.ndarray:
        """Per candidate: 1, the static score's -log tail probability, and the cosine to
        the nearest accepted and to the nearest rejected candidate (0 when there is none;
        a decided candidate is not its own neighbour)."""
        n = len(static)
        columns = [numpy.ones(n), neg_log_tail(numpy.asarray(static, dtype=numpy.float64))]
        for chosen in (indices[labels], indices[~labels]):
            if len(chosen) == 0:
                columns.append(numpy.zeros(n))
                continue
            similarity = self.similarities(chosen)
            similarity[chosen, numpy.arange(len(chosen))] = -numpy.inf
            nearest = similarity.max(axis=1)
            columns.append(numpy.where(numpy.isfinite(nearest), nearest, 0.0))
        return numpy.stack(columns, axis=1)


def mean_features(finder: ErrorFinder) -> numpy.ndarray:
    """The mean encoder features over each candidate's tokens, as unit rows [C, width]."""
    features = finder.train.batch.features
    means = numpy.stack(
        [numpy.asarray(features[c.doc_index][c.start : c.end]).mean(axis=0) for c in finder.candidates]
    ).astype(numpy.float64)
    return means / numpy.maximum(numpy.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _fit_logistic(x: numpy.ndarray, y: numpy.ndarray, prior: numpy.ndarray, l2: float) -> numpy.ndarray:
    """MAP weights of a logistic regression with a Gaussian prior N(prior, 1/l2) (a weak
    one, 1e-2, on the intercept, which stays finite when every decision is alike), by
    Newton's method with step halving on the (convex) penalised negative log-likelihood;
    the prior alone without data."""
    penalty = numpy.full(len(prior), l2)
    penalty[0] = 1e-2

    def objective(w: numpy.ndarray) -> float:
        logits = x @ w
        return float(numpy.sum(numpy.logaddexp(0.0, logits) - y * logits) + 0.5 * penalty @ (w - prior) ** 2)

    weights = prior.astype(numpy.float64).copy()
    current = objective(weights)
    for _ in range(100):
        p = 0.5 * (1.0 + numpy.tanh(0.5 * (x @ weights)))  # the logistic function, without overflow
        gradient = x.T @ (p - y) + penalty * (weights - prior)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + numpy.diag(penalty)
        step = numpy.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6 and objective(weights - scale * step) > current:
            scale /= 2
        weights = weights - scale * step
        previous, current = current, objective(weights)
        if previous - current < 1e-10:
            break
    return weights
