"""The exact curvature: the damped Hessian of the head (closed form, `hessian.head_hessian`),
summed over the training sentences while the index is built and inverted through its
eigendecomposition; the queries are preconditioned densely (small heads; `refine` needs it)."""

from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np
import torch

from ..exceptions import ConfigError
from ..ner.layout import HeadLayout
from .gradients import FactoredGradients

if TYPE_CHECKING:
    from ..ner.bridge import LabelledBatch
    from ..ner.tagger import CRFEntityRecognizer

from .curvature_base import Curvature, PreconditionedQueries, Queries, TrainingStatistics

# Elements per dense [segments, P] block when exact norms are computed in chunks.
_NORM_CHUNK_ELEMENTS = 2**20


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
