"""The error-finding methods, each defined once: a `Method` in `METHODS` says when it ranks a
candidate high (read by `find-errors --help` and the review page) and how it scores any
`Finder` from the signals every finder provides (an in-sample `ErrorFinder`, a
`SeedEnsemble`, a cross-fitted `CrossFitFinder`), as spaCy's registered suggesters score
any doc. Importing it imports neither spaCy nor torch (`--help` reads it)."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Protocol, Sequence

import numpy

from ..exceptions import ConfigError

if TYPE_CHECKING:
    from .candidates import Annotated, Candidate


class Finder(Protocol):
    """What every error finder answers, one value per candidate (higher: more likely wrong
    for `losses`, `harm`, `consistency`, `self_influence`; lower for `worst_token`)."""

    seed: int  # of the random baseline
    dev: Optional["Annotated"]  # the held-out docs, their candidates and features

    @property
    def candidates(self) -> Sequence["Candidate"]: ...

    def losses(self) -> numpy.ndarray: ...

    def harm(self) -> numpy.ndarray: ...

    def consistency(self) -> numpy.ndarray: ...

    def self_influence(self) -> numpy.ndarray: ...

    def worst_token(self, kind: str) -> numpy.ndarray: ...

    def influenced(self, k: int = 3) -> List[List[dict]]: ...

    def scores(self, method: str) -> numpy.ndarray: ...


@dataclass(frozen=True)
class Method:
    """One way to rank candidates: `ranks_high_when` (one line, for --help and the review
    page's legend), `in_short` (the review page's card), whether it needs held-out docs,
    and its score of a finder."""

    name: str
    ranks_high_when: str
    in_short: str
    needs_dev: bool
    score: Callable[[Finder], numpy.ndarray]


METHODS: Dict[str, Method] = {}


def method(name: str, ranks_high_when: str, in_short: str, needs_dev: bool = False) -> Callable:
    """Register the decorated function (finder -> scores) as the method `name`."""

    def register(score: Callable[[Finder], numpy.ndarray]) -> Callable[[Finder], numpy.ndarray]:
        METHODS[name] = Method(name, ranks_high_when, in_short, needs_dev, score)
        return score

    return register


def score(finder: Finder, name: str) -> numpy.ndarray:
    """`finder`'s score of every candidate under the method `name` (higher: more likely wrong)."""
    if name not in METHODS:
        raise ConfigError(f"Unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name].score(finder)


def neg_log_tail(scores: numpy.ndarray) -> numpy.ndarray:
    """-log of each score's empirical upper-tail probability P(S >= s) (the best score
    1/n). Tied scores share the larger tail, so that a signal that can't tell candidates
    apart (a surface form seen once) adds nothing for them, whatever their order."""
    ordered = numpy.sort(scores)
    at_least = len(scores) - numpy.searchsorted(ordered, scores, side="left")
    return -numpy.log(at_least / len(scores))


def fisher(*scores: numpy.ndarray) -> numpy.ndarray:
    """Fisher's method (Fisher 1925, "Statistical Methods for Research Workers") on the
    scores' empirical tail probabilities: the sum of their -log tails. A candidate some
    signal can't tell from most others (a tail near 1) gets nothing from it."""
    return numpy.sum([neg_log_tail(s) for s in scores], axis=0)


@method(
    "combined",
    "the model's evidence (held-out harm and a poor fit) and the corpus' (the same strings "
    "labelled otherwise elsewhere) together: -log p(harm) - log p(loss) - log p(consistency)",
    "model and corpus evidence",
    needs_dev=True,
)
def _combined(finder: Finder) -> numpy.ndarray:
    return fisher(finder.harm(), finder.losses(), finder.consistency())


@method(
    "influence",
    "its labels raise the loss of held-out (dev) predictions and the model fits them badly: "
    "-log p(harm) - log p(loss), each p the share of candidates scoring higher",
    "held-out harm and a poor fit",
    needs_dev=True,
)
def _influence(finder: Finder) -> numpy.ndarray:
    """Held-out harm and the candidate's own segment loss, combined by Fisher's method on
    their empirical tail probabilities. Harm alone finds labels that spread to held-out
    predictions (systematic errors) but misses odd one-off labels the dev set has no
    neighbours for; the loss finds those (measured in bench/find_errors.py)."""
    return fisher(finder.harm(), finder.losses())


@method(
    "consistency",
    "the rest of the corpus labels the same strings otherwise: the share of their other "
    "occurrences with another label (or none), shrunk for rare strings",
    "inconsistent labelling of its strings",
)
def _consistency(finder: Finder) -> numpy.ndarray:
    return finder.consistency()


@method("self-influence", "its labels pull the model unusually hard (g^T H^-1 g of its own loss)", "self-influence")
def _self_influence(finder: Finder) -> numpy.ndarray:
    return finder.self_influence()


@method("loss", "the model fits its labels badly (-log p(labels | rest of the sentence))", "a poor fit")
def _loss(finder: Finder) -> numpy.ndarray:
    return finder.losses()


@method("margin", "the model prefers another tag over the annotated one (on the worst token)", "a low margin")
def _margin(finder: Finder) -> numpy.ndarray:
    return -finder.worst_token("margin")


@method("confidence", "the model gives the annotated tag a low probability (on the worst token)", "low confidence")
def _confidence(finder: Finder) -> numpy.ndarray:
    return -finder.worst_token("confidence")


@method("random", "a random order, the baseline every method must beat", "chance (random order)")
def _random(finder: Finder) -> numpy.ndarray:
    return numpy.random.default_rng(finder.seed).random(len(finder.candidates))
