"""How the inverse curvature H^-1 enters the influence score g_q^T H^-1 g_s.

Influence of a training segment s on a query q is g_q^T H^-1 g_s (Koh & Liang
2017, "Understanding Black-box Predictions via Influence Functions"; for
segments, Jain et al. 2022, "Influence Functions for Sequence Tagging Models").
Each curvature splits H^-1 between the stored training gradients and the
queries so that search stays an inner product. The dense block (transitions,
start, end) of a training segment is left as it is, so the index can store it
sparsely (a segment touches ~20 of the C^2 + 2C entries); queries carry that
block's whole share of H^-1.

`CURVATURES` is the one registry of curvatures, by name: the `segment_influence` config,
the error finder and the index's storage all look names up there. Each curvature says
what it needs of the training sentences (`statistics`, gathered batch by batch while an
index is built) and fits itself from that, the training segments' gradients and the
damping (`fit`), so a new curvature is one class registered here.
"""

from typing import TYPE_CHECKING, Dict, Literal, Tuple, Type

import numpy as np

from ..exceptions import ConfigError
from .gradients import FactoredGradients

if TYPE_CHECKING:
    from ..ner.tagger import CRFEntityRecognizer

from .curvature_base import (
    Curvature,
    FactoredQueries,
    PreconditionedQueries,
    Queries,
    TrainingStatistics,
)
from .exact_curvature import ExactCurvature, HessianStatistics
from .kfac import KFACCurvature, KFACStatistics

__all__ = [
    "CURVATURES",
    "Curvature",
    "CurvatureName",
    "ExactCurvature",
    "FactoredQueries",
    "HessianStatistics",
    "IdentityCurvature",
    "KFACCurvature",
    "KFACStatistics",
    "PreconditionedQueries",
    "Queries",
    "TrainingStatistics",
    "curvature_class",
]

CurvatureName = Literal["identity", "kfac", "exact"]


class IdentityCurvature(Curvature):
    """H = I: influence is the plain gradient inner product."""

    name = "identity"

    @classmethod
    def fit(
        cls, ner: "CRFEntityRecognizer", statistics: TrainingStatistics, grads: FactoredGradients, damping: float
    ) -> "IdentityCurvature":
        return cls()

    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients:
        return grads

    def prepare_queries(self, grads: FactoredGradients) -> Queries:
        return FactoredQueries(grads, grads.squared_norms())

    def index_sq_norms(self, stored: FactoredGradients) -> np.ndarray:
        return stored.squared_norms()

    def to_state(self) -> Tuple[dict, Dict[str, np.ndarray]]:
        return {"name": self.name}, {}

    @classmethod
    def from_state(cls, config: dict, arrays: Dict[str, np.ndarray]) -> "IdentityCurvature":
        return cls()


CURVATURES: Dict[str, Type[Curvature]] = {cls.name: cls for cls in (IdentityCurvature, KFACCurvature, ExactCurvature)}


def curvature_class(name: str) -> Type[Curvature]:
    """The registered curvature called `name`."""
    if name not in CURVATURES:
        raise ConfigError(f"Unknown curvature {name!r}: use one of {', '.join(CURVATURES)}")
    return CURVATURES[name]
