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
damping (`fit`), so a new curvature is one class here.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Dict, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch

from ..exceptions import ConfigError, DataError
from ..ner.crf import one_thread
from ..ner.layout import HeadLayout
from .gradients import FactoredGradients

if TYPE_CHECKING:
    from ..ner.tagger import CRFEntityRecognizer
    from .segments import LabelledBatch

CurvatureName = Literal["identity", "kfac", "exact"]

# Elements per dense [segments, P] block when exact norms are computed in chunks.
_NORM_CHUNK_ELEMENTS = 2**20


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


class ExactCurvature(Curvature):
    """H = hessian + damping I over all P = C * E + D head parameters: the ground
    truth for small heads. It does not factor, so queries are preconditioned
    densely (H^-1 g_q) and the index keeps the raw factors. It is kept, and saved, as
    its eigendecomposition: a saved index loads without factorising H again (minutes
    for a MiniLM head), its eigenvectors memory-mapped until a query reads them."""

    name = "exact"
    refinable = True

    def __init__(self, hessian: np.ndarray, damping: float, n_tags: int, width: int, n_sentences: Optional[int] = None):
        """`hessian`: of the mean sentence loss over `n_sentences` training sentences (the
        number `removal.removal_step` needs to weigh one segment against the rest), in the
        `HeadLayout` order with an emission block [`n_tags`, `width`]."""
        hessian = np.asarray(hessian, dtype=np.float64)
        n_params = hessian.shape[0]
        if hessian.shape != (n_params, n_params):
            raise ValueError(f"hessian must be square, got {hessian.shape}")
        values, vectors = np.linalg.eigh((hessian + hessian.T) / 2 + float(damping) * np.eye(n_params))
        self._set_eigen(values, vectors, damping, n_tags, width, n_sentences)

    @classmethod
    def from_eigen(
        cls,
        values: np.ndarray,
        vectors: np.ndarray,
        damping: float,
        n_tags: int,
        width: int,
        n_sentences: Optional[int] = None,
    ) -> "ExactCurvature":
        """From the eigenvalues [P] and eigenvectors [P, P] (columns) of hessian + damping I,
        as `to_state` saves them; `vectors` may be memory-mapped."""
        curvature = cls.__new__(cls)
        curvature._set_eigen(values, vectors, damping, n_tags, width, n_sentences)
        return curvature

    def _set_eigen(
        self,
        values: np.ndarray,
        vectors: np.ndarray,
        damping: float,
        n_tags: int,
        width: int,
        n_sentences: Optional[int],
    ) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.min() <= 0:
            raise ConfigError(
                f"The exact curvature's hessian + damping * I is not positive definite at damping {damping}: "
                "raise the damping"
            )
        self.layout = HeadLayout.spanning(n_tags, width, len(values))
        self.damping = float(damping)
        self.n_tags = n_tags
        self.width = width
        self.n_sentences = n_sentences
        self._values = values
        self._vectors = vectors
        self._torch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def eigen(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues [P] and eigenvectors [P, P] (columns) of hessian + damping I, float64."""
        if self._torch is None:  # a copy: torch cannot wrap a read-only memory map
            self._torch = (torch.as_tensor(self._values), torch.as_tensor(np.array(self._vectors, dtype=np.float64)))
        return self._torch

    @classmethod
    def statistics(cls) -> "HessianStatistics":
        return HessianStatistics()

    @classmethod
    def fit(
        cls, ner: "CRFEntityRecognizer", statistics: TrainingStatistics, grads: FactoredGradients, damping: float
    ) -> "ExactCurvature":
        assert isinstance(statistics, HessianStatistics)
        layout = HeadLayout.of(ner.head)
        return cls(statistics.mean(layout), damping, layout.n_tags, layout.width, statistics.n_sentences)

    def _check(self, grads: FactoredGradients) -> None:
        if grads.layout != self.layout:
            raise ValueError(f"gradients in the layout {grads.layout}, the hessian in {self.layout}")

    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients:
        self._check(grads)
        return grads

    def prepare_queries(self, grads: FactoredGradients) -> Queries:
        self._check(grads)
        rotated = grads.to_dense() @ self._vectors
        solved = (rotated / self._values) @ self._vectors.T
        return PreconditionedQueries(
            weights=self.layout.emission_rows(solved),
            dense=solved[:, self.layout.dense],
            sq_norms=np.einsum("qp,qp->q", rotated, rotated / self._values),
        )

    def index_sq_norms(self, stored: FactoredGradients) -> np.ndarray:
        step = max(1, _NORM_CHUNK_ELEMENTS // len(self._values))
        out = np.empty(len(stored))
        for s0 in range(0, len(stored), step):
            rotated = stored.select(s0, min(s0 + step, len(stored))).to_dense() @ self._vectors
            out[s0 : s0 + step] = np.einsum("sp,sp->s", rotated, rotated / self._values)
        return out

    def to_state(self) -> Tuple[dict, Dict[str, np.ndarray]]:
        config = {
            "name": self.name,
            "damping": self.damping,
            "n_tags": self.n_tags,
            "width": self.width,
            "n_sentences": self.n_sentences,
        }
        return config, {"values": self._values, "vectors": np.asarray(self._vectors)}

    @classmethod
    def from_state(cls, config: dict, arrays: Dict[str, np.ndarray]) -> "ExactCurvature":
        settings = (config["damping"], config["n_tags"], config["width"], config.get("n_sentences"))
        if "hessian" in arrays:  # written before the eigendecomposition was saved: factorise now
            return cls(arrays["hessian"], *settings)
        return cls.from_eigen(arrays["values"], arrays["vectors"], *settings)


class HessianStatistics(TrainingStatistics):
    """The running sum of the training sentences' exact head Hessians (each batch's in
    closed form, `hessian.head_hessian`), so a build never holds every sentence."""

    def __init__(self) -> None:
        self.n_sentences = 0
        self.total: Optional[np.ndarray] = None

    def add(self, ner: "CRFEntityRecognizer", batch: "LabelledBatch") -> None:
        from .hessian import head_hessian

        if batch.n_sentences:  # head_hessian is the mean over the batch's sentences
            self._add_sum(head_hessian(ner, batch) * batch.n_sentences, batch.n_sentences)

    def merge(self, other: TrainingStatistics) -> None:
        assert isinstance(other, HessianStatistics)
        if other.total is not None:
            self._add_sum(other.total, other.n_sentences)

    def _add_sum(self, total: np.ndarray, n_sentences: int) -> None:
        self.total = total if self.total is None else self.total + total
        self.n_sentences += n_sentences

    def mean(self, layout: HeadLayout) -> np.ndarray:
        """The Hessian of the mean sentence loss (zero without sentences)."""
        if self.total is None:
            return np.zeros((layout.n_params, layout.n_params))
        return self.total / self.n_sentences


CURVATURES: Dict[str, Type[Curvature]] = {cls.name: cls for cls in (IdentityCurvature, KFACCurvature, ExactCurvature)}


def curvature_class(name: str) -> Type[Curvature]:
    """The registered curvature called `name`."""
    if name not in CURVATURES:
        raise ConfigError(f"Unknown curvature {name!r}: use one of {', '.join(CURVATURES)}")
    return CURVATURES[name]


def _inverse_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """M^-power of a symmetric positive definite matrix. torch on one thread: numpy's
    multi-threaded eigh took 3.5 s instead of 25 ms for 323 x 323 on a busy 2-core box."""
    symmetric = torch.as_tensor((matrix + matrix.T) / 2, dtype=torch.float64)
    with one_thread():
        values, vectors = torch.linalg.eigh(symmetric)
    if float(values.min()) <= 0:
        raise ConfigError("A damped curvature factor is not positive definite: raise the damping")
    return ((vectors * values.pow(-power)) @ vectors.T).numpy()
