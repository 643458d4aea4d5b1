"""What every curvature is: the `Curvature` interface (fit from training statistics, prepare
the index's and the queries' gradients, serialize), the statistics gathered while an index
is built, and the prepared queries the search takes. The curvatures themselves are in
`curvature` (identity and the registry), `kfac` and `exact_curvature`."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Dict, Tuple, Union

import numpy as np
import torch

from ..exceptions import ConfigError
from ..ner.crf import one_thread
from .gradients import FactoredGradients

if TYPE_CHECKING:
    from ..ner.bridge import LabelledBatch
    from ..ner.tagger import CRFEntityRecognizer


@dataclass
class PreconditionedQueries:
    """Queries multiplied densely by H^-1, for curvatures that cannot be factored.

    weights: [Q, C, E] emission block of H^-1 g_q.
    dense: [Q, D] remaining block of H^-1 g_q.
    sq_norms: [Q] g_q^T H^-1 g_q.
    """

    weights: np.ndarray
    dense: np.ndarray
    sq_norms: np.ndarray


@dataclass
class FactoredQueries:
    """Queries whose emission factors are prepared like the index's, so the
    score stays factored: sum_{t, u} (h_t . h_u)(r_t . r_u) + x_s . grads.dense.

    grads: the prepared factors, dense block already multiplied by its H^-1.
    sq_norms: [Q] g_q^T H^-1 g_q.
    """

    grads: FactoredGradients
    sq_norms: np.ndarray

    def to_dense(self) -> np.ndarray:
        """[Q, P]: the vectors whose plain inner product with the stored
        segments' flattened gradients is the score (for baselines and tests)."""
        return self.grads.to_dense()


Queries = Union[FactoredQueries, PreconditionedQueries]


class TrainingStatistics:
    """What a curvature gathers from the training sentences while an index is built,
    one batch at a time (nothing, for curvatures that need none)."""

    def add(self, ner: "CRFEntityRecognizer", batch: "LabelledBatch") -> None:
        """Take in one batch of labelled training sentences."""

    def merge(self, other: "TrainingStatistics") -> None:
        """Take in another accumulator's sentences (a shard's, in a distributed build):
        statistics are sums over sentences, so any split of a corpus merges exactly."""


class Curvature(ABC):
    """How H^-1 enters the score g_q^T H^-1 g_s.

    `prepare_index` maps training gradients to what the index stores (never
    touching the dense block) and `prepare_queries` maps query gradients so
    that the score is the plain inner product of the two.
    """

    name: ClassVar[str]
    # whether an index keeps what `removal` needs to refine its hits (window labels)
    refinable: ClassVar[bool] = False

    @classmethod
    def statistics(cls) -> TrainingStatistics:
        """An empty accumulator of what `fit` needs of the training sentences."""
        return TrainingStatistics()

    @classmethod
    @abstractmethod
    def fit(
        cls,
        ner: "CRFEntityRecognizer",
        statistics: TrainingStatistics,
        grads: FactoredGradients,
        damping: float,
    ) -> "Curvature":
        """The curvature of `ner`'s head from the training sentences' `statistics` (as
        returned by `statistics()`, every training batch added) and the training
        segments' gradients `grads`, with `damping`."""

    @abstractmethod
    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients: ...

    @abstractmethod
    def prepare_queries(self, grads: FactoredGradients) -> Queries: ...

    @abstractmethod
    def index_sq_norms(self, stored: FactoredGradients) -> np.ndarray:
        """g_s^T H^-1 g_s for gradients as returned by prepare_index."""

    @abstractmethod
    def to_state(self) -> Tuple[dict, Dict[str, np.ndarray]]:
        """JSON-able config (including "name") and arrays to persist."""

    @classmethod
    @abstractmethod
    def from_state(cls, config: dict, arrays: Dict[str, np.ndarray]) -> "Curvature": ...


def _inverse_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """M^-power of a symmetric positive definite matrix. torch on one thread: numpy's
    multi-threaded eigh took 3.5 s instead of 25 ms for 323 x 323 on a busy 2-core box."""
    symmetric = torch.as_tensor((matrix + matrix.T) / 2, dtype=torch.float64)
    with one_thread():
        values, vectors = torch.linalg.eigh(symmetric)
    if float(values.min()) <= 0:
        raise ConfigError("A damped curvature factor is not positive definite: raise the damping")
    return ((vectors * values.pow(-power)) @ vectors.T).numpy()
