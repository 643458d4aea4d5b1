"""K-FAC: the emission block's curvature as a Kronecker product of the features' and the
tag marginals' second moments (Martens & Grosse 2015, "Optimizing Neural Networks with
Kronecker-factored Approximate Curvature"), whitening both sides so that search stays the
factored product; the dense block's whole inverse goes to the query."""

from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np
import torch

from ..exceptions import ConfigError, DataError
from ..ner.crf import one_thread
from .gradients import FactoredGradients

if TYPE_CHECKING:
    from ..ner.bridge import LabelledBatch
    from ..ner.tagger import CRFEntityRecognizer

from .curvature_base import Curvature, FactoredQueries, Queries, TrainingStatistics, _inverse_power


class KFACCurvature(Curvature):
    """Kronecker-factored curvature (Martens & Grosse 2015, "Optimizing Neural
    Networks with Kronecker-factored Approximate Curvature").

    Emission block: (B + sqrt(d) I) (x) (A + sqrt(d) I) in numpy.kron order for
    the row-major [C, E] layout, since vec(r h^T) = kron(r, h) and
    (B (x) A) kron(r, h) = kron(B r, A h). A = E[h h^T] over training tokens and
    B = E[r r^T] with r drawn from the model, which per token is
    diag(q) - q q^T for marginals q. Dense block: E[x x^T] + d I over segments.
    The emission block is applied by whitening both sides, so search stays the
    factored product; the dense block's inverse goes to the queries.
    """

    name = "kfac"

    def __init__(self, a: np.ndarray, b: np.ndarray, dense_cov: np.ndarray, damping: float):
        if damping <= 0:
            raise ConfigError(f"The kfac curvature needs damping > 0 (got {damping}): B is singular, its rows sum to 0")
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.dense_cov = np.asarray(dense_cov, dtype=np.float64)
        self.damping = float(damping)
        root = np.sqrt(self.damping)
        self._a_white = _inverse_power(self.a + root * np.eye(len(self.a)), 0.5)
        self._b_white = _inverse_power(self.b + root * np.eye(len(self.b)), 0.5)
        self._dense_inverse = _inverse_power(self.dense_cov + self.damping * np.eye(len(self.dense_cov)), 1.0)

    @classmethod
    def statistics(cls) -> "KFACStatistics":
        return KFACStatistics()

    @classmethod
    def fit(
        cls, ner: "CRFEntityRecognizer", statistics: TrainingStatistics, grads: FactoredGradients, damping: float
    ) -> "KFACCurvature":
        assert isinstance(statistics, KFACStatistics)
        return statistics.curvature(grads.dense, damping)

    @classmethod
    def from_tokens(cls, h: np.ndarray, marginals: np.ndarray, dense: np.ndarray, damping: float) -> "KFACCurvature":
        """Estimate the factors from training token features [N, E], token
        marginals [N, C] and per-segment dense gradients [S, D]."""
        statistics = KFACStatistics()
        statistics.add_tokens(h, marginals)
        return statistics.curvature(dense, damping)

    def _whiten(self, grads: FactoredGradients, dense: np.ndarray) -> FactoredGradients:
        return FactoredGradients(
            grads.h.astype(np.float64) @ self._a_white, grads.r.astype(np.float64) @ self._b_white, grads.offsets, dense
        )

    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients:
        return self._whiten(grads, grads.dense)

    def prepare_queries(self, grads: FactoredGradients) -> Queries:
        dense = grads.dense.astype(np.float64)
        solved = dense @ self._dense_inverse
        whitened = self._whiten(grads, solved)
        return FactoredQueries(whitened, whitened.emission_squared_norms() + np.einsum("qd,qd->q", dense, solved))

    def index_sq_norms(self, stored: FactoredGradients) -> np.ndarray:
        dense = stored.dense.astype(np.float64)
        return stored.emission_squared_norms() + np.einsum("sd,sd->s", dense @ self._dense_inverse, dense)

    def to_state(self) -> Tuple[dict, Dict[str, np.ndarray]]:
        config = {"name": self.name, "damping": self.damping}
        return config, {"a": self.a, "b": self.b, "dense_cov": self.dense_cov}

    @classmethod
    def from_state(cls, config: dict, arrays: Dict[str, np.ndarray]) -> "KFACCurvature":
        return cls(arrays["a"], arrays["b"], arrays["dense_cov"], config["damping"])


class KFACStatistics(TrainingStatistics):
    """Running sums of K-FAC's token factors, so an index build never holds every
    training token's features at once: A = mean h h^T, B = mean (diag(q) - q q^T)."""

    def __init__(self) -> None:
        self.n_tokens = 0
        self.hh: Optional[np.ndarray] = None
        self.qq: Optional[np.ndarray] = None

    def add(self, ner: "CRFEntityRecognizer", batch: "LabelledBatch") -> None:
        from .segments import token_marginals

        self.add_tokens(*token_marginals(ner, batch.features))

    def add_tokens(self, h: np.ndarray, marginals: np.ndarray) -> None:
        """Token features [N, E + 1] and marginals [N, C]. In torch on one thread: numpy's
        threaded BLAS crawled on a busy machine."""
        features = torch.as_tensor(np.asarray(h), dtype=torch.float64)
        q = torch.as_tensor(np.asarray(marginals), dtype=torch.float64)
        with one_thread():
            hh = (features.T @ features).numpy()
            qq = (torch.diag(q.sum(dim=0)) - q.T @ q).numpy()
        self._add_sums(hh, qq, len(features))

    def merge(self, other: TrainingStatistics) -> None:
        assert isinstance(other, KFACStatistics)
        if other.hh is not None and other.qq is not None:
            self._add_sums(other.hh, other.qq, other.n_tokens)

    def _add_sums(self, hh: np.ndarray, qq: np.ndarray, n_tokens: int) -> None:
        self.hh = hh if self.hh is None else self.hh + hh
        self.qq = qq if self.qq is None else self.qq + qq
        self.n_tokens += n_tokens

    def curvature(self, dense: np.ndarray, damping: float) -> KFACCurvature:
        if self.hh is None or self.qq is None or len(dense) == 0:
            raise DataError("The kfac curvature needs at least one training token and segment")
        x = torch.as_tensor(np.asarray(dense), dtype=torch.float64)
        with one_thread():
            dense_cov = (x.T @ x / len(x)).numpy()
        return KFACCurvature(self.hh / self.n_tokens, self.qq / self.n_tokens, dense_cov, damping)
