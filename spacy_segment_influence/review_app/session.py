"""The review as the app runs it: the next card, an answer (to one candidate or to its
pattern's group), undo; the queue re-ranked from the decisions after each.

Re-ranking is `ReviewLoop`'s (annotation_errors/review_loop.py) with feature similarity:
the candidates nearest to the accepted ones by mean encoder features move up, those
nearest to the rejected ones move down, weighted by a logistic regression on the
decisions so far. On all of CoNLL train it found 2.38x the static ranking's errors in 250
reviews, gradient similarity 1.68x (BENCHMARKS.md, "Review loop"), so features it is.
It runs after every `RERANK_EVERY`-th decision: re-ranking after each single one measured
far worse without group answers on CoNLL (17 errors in 500 decisions against 112 for every
10th; BENCHMARKS.md, "Review app").
"""

import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy

from ..annotation_errors import ReviewLoop
from ..annotation_errors.methods import neg_log_tail
from ..exceptions import ConfigError
from .prepare import members
from .store import Candidate, Decision, Entity, ReviewStore

EXAMPLES = 8  # group members listed on a card
RERANK_EVERY = 10


class FeatureLoop(ReviewLoop):
    """`ReviewLoop`'s re-ranking over stored unit feature rows (no model needed). Its
    design matrix is kept up to date one decision at a time: each new decision costs one
    similarity column, however many came before (a group answer decides hundreds)."""

    def __init__(self, features: numpy.ndarray, l2: float = 0.1) -> None:
        self.similarity, self.l2, self._unit = "features", l2, features
        self._folded: Dict[int, bool] = {}
        self._nearest = {label: numpy.full(len(features), -numpy.inf) for label in (True, False)}

    def similarities(self, indices: numpy.ndarray) -> numpy.ndarray:
        return self._unit @ self._unit[indices].T

    def design(self, static: numpy.ndarray, indices: numpy.ndarray, labels: numpy.ndarray) -> numpy.ndarray:
        """`ReviewLoop.design`, from the nearest decided neighbours found so far and the
        decisions added since (all again when one was taken back or changed)."""
        decided = dict(zip(indices.tolist(), labels.tolist()))
        if any(decided.get(i) != label for i, label in self._folded.items()):
            self._folded = {}
            self._nearest = {label: numpy.full(len(self._unit), -numpy.inf) for label in (True, False)}
        for label in (True, False):
            new = numpy.array(
                [i for i, d in decided.items() if d == label and i not in self._folded], dtype=numpy.int64
            )
            for chunk in numpy.array_split(new, max(1, len(new) // 256)) if len(new) else ():
                similarity = self._unit @ self._unit[chunk].T
                similarity[chunk, numpy.arange(len(chunk))] = -numpy.inf  # a decided one is not its own neighbour
                numpy.maximum(self._nearest[label], similarity.max(axis=1), out=self._nearest[label])
            self._folded.update(dict.fromkeys(new.tolist(), label))
        tail = neg_log_tail(numpy.asarray(static, dtype=numpy.float64))
        nearest = [
            numpy.where(numpy.isfinite(self._nearest[label]), self._nearest[label], 0.0) for label in (True, False)
        ]
        return numpy.stack([numpy.ones(len(static)), tail, *nearest], axis=1)


class ReviewSession:
    """The candidates of a review database, their current order, and the answers."""

    def __init__(self, store: ReviewStore, learn: bool = True, rerank_every: int = RERANK_EVERY) -> None:
        """learn: re-rank from the decisions; rerank_every: after every N-th decision
        (accept or reject) only, and after an undo."""
        if rerank_every < 1:
            raise ConfigError(f"rerank_every must be at least 1, got {rerank_every}")
        self.store = store
        self.rerank_every = rerank_every
        self.candidates: List[Candidate] = store.candidates()
        self.labels: List[str] = list(store.info("labels") or [])
        self.groups = members([c.pattern for c in self.candidates])
        self.loop = FeatureLoop(store.array("features")) if learn else None
        self.static = -numpy.arange(len(self.candidates), dtype=numpy.float64)
        self._lock = threading.Lock()
        self._ranked_with = 0  # decisions (accept or reject) the scores were re-ranked from
        self.scores = self._rerank(store.decisions())

    def _rerank(self, decisions: Dict[int, Decision], force: bool = True) -> numpy.ndarray:
        decided = [(c, d.answer == "accept") for c, d in sorted(decisions.items()) if d.answer != "ignore"]
        if not force and len(decided) < self._ranked_with + self.rerank_every:
            return self.scores
        self._ranked_with = len(decided)
        if self.loop is None or not decided:
            return self.static.copy()
        indices = numpy.array([c for c, _ in decided], dtype=numpy.int64)
        return self.loop.rerank(self.static, indices, numpy.array([a for _, a in decided], dtype=bool))

    def card(self, candidate: Optional[int] = None) -> dict:
        """The card of `candidate`, else of the most suspicious undecided one; with
        done=True when every candidate is decided."""
        decisions = self.store.decisions()
        if candidate is None:
            open_ = numpy.ones(len(self.candidates), dtype=bool)
            open_[list(decisions)] = False
            if not open_.any():
                return {"done": True, "last_action": self.store.last_action(), "progress": self._progress(decisions)}
            candidate = int(numpy.flatnonzero(open_)[numpy.argmax(self.scores[open_])])
        record = self.candidates[candidate].record
        meta = record["meta"]
        group = [m for m in self.groups[self.candidates[candidate].pattern] if m != candidate and m not in decisions]
        return {
            "done": False,
            "id": candidate,
            "tokens": [[t["text"], t["ws"]] for t in record["tokens"]],
            "region": [record["spans"][0]["token_start"], record["spans"][0]["token_end"] + 1],
            "gold": _entities(meta["gold_spans"]),
            "suggested": _entities(meta["suggested_spans"]),
            "label": meta["label"],
            "suggested_label": meta["suggested_label"],
            "kind": meta["kind"],
            "static_rank": candidate + 1,
            "why": meta.get("why", {}),
            "influenced": meta.get("influenced", []),
            "group": {"count": len(group), "examples": [self._example(m) for m in group[:EXAMPLES]]},
            "labels": self.labels,
            "last_action": self.store.last_action(),
            "progress": self._progress(decisions),
        }

    def answer(
        self,
        candidate: int,
        answer: str,
        label: Optional[str] = None,
        span: Optional[Tuple[int, int]] = None,
        group: bool = False,
    ) -> dict:
        """Store one answer (`label`/`span`: a fix of an accepted candidate; `group`: the
        same decision for the undecided candidates of its pattern), re-rank, and return
        the next card."""
        self._check(candidate)
        answers = {candidate: (answer, self._entities(candidate, answer, label, span))}
        if group and answer != "ignore":
            target = label if label is not None else self.candidates[candidate].record["meta"]["suggested_label"]
            for member in self.groups[self.candidates[candidate].pattern]:
                if member != candidate:
                    answers[member] = (answer, self._relabelled(member, target) if answer == "accept" else None)
        with self._lock:
            self.store.answer(answers, candidate)
            self.scores = self._rerank(self.store.decisions(), force=False)
        return self.card()

    def undo(self, action: int) -> dict:
        """Take back the latest action; returns its card again."""
        with self._lock:
            candidate = self.store.undo(action)
            self.scores = self._rerank(self.store.decisions())
        return self.card(candidate)

    def _check(self, candidate: int) -> None:
        if not 0 <= candidate < len(self.candidates):
            raise ConfigError(f"No candidate {candidate}: the review has {len(self.candidates)}")

    def _entities(
        self, candidate: int, answer: str, label: Optional[str], span: Optional[Tuple[int, int]]
    ) -> Optional[List[Entity]]:
        """The region's corrected entities: the model's suggestion for a plain accept,
        the chosen label (and boundaries) for a fix, none for reject and skip."""
        if answer != "accept":
            if label is not None or span is not None:
                raise ConfigError("A label or span fixes an accepted candidate: answer accept")
            return None
        meta = self.candidates[candidate].record["meta"]
        if label is None:
            return [(s, e, lab) for s, e, lab in _entities(meta["suggested_spans"])]
        if label != "O" and label not in self.labels:
            raise ConfigError(f"Unknown label {label!r}: use O or one of {', '.join(self.labels)}")
        if span is None:
            return self._relabelled(candidate, label)
        start, end = span
        if not 0 <= start < end <= len(self.candidates[candidate].record["tokens"]):
            raise ConfigError(f"Span {start}-{end} is not inside the sentence")
        return [] if label == "O" else [(start, end, label)]

    def _relabelled(self, candidate: int, label: str) -> List[Entity]:
        """The candidate's gold entities with its main span relabelled (removed for O)."""
        meta = self.candidates[candidate].record["meta"]
        gold = _entities(meta["gold_spans"])
        main = (gold or _entities(meta["suggested_spans"]))[0]
        kept = [e for e in gold if e[:2] != main[:2]]
        return kept + ([] if label == "O" else [(main[0], main[1], label)])

    def _example(self, member: int) -> dict:
        record = self.candidates[member].record
        meta = record["meta"]
        start, end, _ = (_entities(meta["gold_spans"]) or _entities(meta["suggested_spans"]))[0]
        words = [t["text"] + (" " if t["ws"] else "") for t in record["tokens"]]
        return {
            "left": "".join(words[max(0, start - 8) : start]).strip(),
            "text": "".join(words[start:end]).strip(),
            "right": "".join(words[end : end + 8]).strip(),
            "suggested_label": meta["suggested_label"],
        }

    def _progress(self, decisions: Dict[int, Decision]) -> dict:
        counts = {answer: 0 for answer in ("accept", "reject", "ignore")}
        for decision in decisions.values():
            counts[decision.answer] += 1
        return {"total": len(self.candidates), "decided": len(decisions), **counts}


def _entities(spans: Sequence[dict]) -> List[Entity]:
    """Prodigy spans (inclusive token ends) as (start, end exclusive, label)."""
    return [(s["token_start"], s["token_end"] + 1, s["label"]) for s in spans]
