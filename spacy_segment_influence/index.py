"""Exact top-k segment influence search over factored CRF-head gradients.

A training segment's loss gradient with respect to the CRF head's emission
weights W [C, E] is a sum of outer products over the segment's tokens,
G_W = sum_t r_t h_t^T, where h_t are the token features (bias column appended)
and r_t = marginal - one-hot. The remaining head parameters (transitions, start,
end) have a small dense gradient x [D]. Keeping the factors instead of the
C*E-dimensional vectors makes the index ~C times smaller than storing per-token
gradients, and the inner product of two segments stays cheap:

    <G_S, G_S'> = sum_{t in S, u in S'} (h_t . h_u)(r_t . r_u) + x_S . x_S'

Influence of a training segment s on a query q is g_q^T H^-1 g_s (Koh & Liang
2017, "Understanding Black-box Predictions via Influence Functions"; for
segments, Jain et al. 2022, "Influence Functions for Sequence Tagging Models"),
positive when the training segment supports the query. The flattened gradient
layout used by `FactoredGradients.to_dense` is vec(G_W) row-major ([C, E],
index c * E + e) followed by x, so P = C * E + D.

This module knows arrays only (numpy / torch), never spaCy objects.
"""
import os
import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import srsly
import torch

from .crf import one_thread

# Elements per intermediate [chunk rows, width] tensor, which bounds search
# memory whatever the index size: cache-sized on CPU, larger on accelerators
# where each chunk costs kernel launches.
_CHUNK_ELEMENTS = {"cpu": 2**20, "accelerator": 2**24}
_FORMAT_VERSION = 1
DTYPES = ("float16", "float32", "float64")


@dataclass
class FactoredGradients:
    """Gradients of a batch of segments, factored as per-token rows.

    h: [N, E] token features (bias column already appended by the caller).
    r: [N, C] marginal minus one-hot per token.
    offsets: int64 [S + 1]; segment s owns token rows offsets[s]:offsets[s + 1].
    dense: [S, D] gradient of the transition / start / end parameters.
    """

    h: np.ndarray
    r: np.ndarray
    offsets: np.ndarray
    dense: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.h.ndim != 2 or self.r.ndim != 2 or self.dense.ndim != 2:
            raise ValueError("h, r and dense must be 2-d arrays")
        if self.offsets.ndim != 1 or self.offsets.size == 0 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-d array starting at 0")
        if np.any(np.diff(self.offsets) < 1):
            raise ValueError("every segment needs at least one token row")
        n_rows = int(self.offsets[-1])
        if self.h.shape[0] != n_rows or self.r.shape[0] != n_rows:
            raise ValueError(f"offsets end at {n_rows} but h has {self.h.shape[0]} "
                             f"rows and r has {self.r.shape[0]}")
        if self.dense.shape[0] != len(self):
            raise ValueError(f"dense has {self.dense.shape[0]} rows for {len(self)} segments")

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def n_tags(self) -> int:
        return self.r.shape[1]

    @property
    def width(self) -> int:
        return self.h.shape[1]

    @property
    def n_dense(self) -> int:
        return self.dense.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, start: int, stop: int) -> "FactoredGradients":
        """Segments start:stop, sharing memory with self."""
        t0, t1 = self.offsets[start], self.offsets[stop]
        return FactoredGradients(
            self.h[t0:t1], self.r[t0:t1], self.offsets[start : stop + 1] - t0, self.dense[start:stop]
        )

    def to_dense(self) -> np.ndarray:
        """Full flattened float64 gradients [S, C * E + D]; memory N * C * E, so
        for tests, exact curvature and small data only."""
        n_tags, width = self.n_tags, self.width
        out = np.zeros((len(self), n_tags * width + self.n_dense))
        if len(self):
            outer = np.einsum("nc,ne->nce", self.r.astype(np.float64), self.h.astype(np.float64))
            out[:, : n_tags * width] = np.add.reduceat(
                outer.reshape(-1, n_tags * width), self.offsets[:-1], axis=0
            )
        out[:, n_tags * width :] = self.dense
        return out

    def squared_norms(self, pairs_per_chunk: int = 8192) -> np.ndarray:
        """Per-segment <G_S, G_S> in float64, from the factors (no C * E vectors):
        sum over token pairs (t, u) in S of (h_t . h_u)(r_t . r_u), plus |x|^2."""
        left, right, pair_segment = _segment_pairs(self.offsets)
        out = np.einsum("sd,sd->s", self.dense.astype(np.float64), self.dense.astype(np.float64))
        for p0 in range(0, left.size, pairs_per_chunk):
            i, j = left[p0 : p0 + pairs_per_chunk], right[p0 : p0 + pairs_per_chunk]
            hh = np.einsum("pe,pe->p", self.h[i].astype(np.float64), self.h[j].astype(np.float64))
            rr = np.einsum("pc,pc->p", self.r[i].astype(np.float64), self.r[j].astype(np.float64))
            out += np.bincount(pair_segment[p0 : p0 + pairs_per_chunk], hh * rr, minlength=len(self))
        return out

    def astype(self, dtype: Union[str, np.dtype]) -> "FactoredGradients":
        return FactoredGradients(
            self.h.astype(dtype), self.r.astype(dtype), self.offsets, self.dense.astype(dtype)
        )

    @staticmethod
    def concat(parts: Sequence["FactoredGradients"]) -> "FactoredGradients":
        if not parts:
            raise ValueError("concat needs at least one part")
        row_starts = np.cumsum([0] + [p.h.shape[0] for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, row_starts)]
        return FactoredGradients(
            np.concatenate([p.h for p in parts]),
            np.concatenate([p.r for p in parts]),
            np.concatenate(offsets),
            np.concatenate([p.dense for p in parts]),
        )


def _segment_pairs(offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ordered token pairs (left, right) inside the same segment, with that
    segment's id. Segments are short, so this is a few times N pairs."""
    lengths = np.diff(offsets)
    token_segment = np.repeat(np.arange(lengths.size), lengths)
    reps = lengths[token_segment]
    left = np.repeat(np.arange(token_segment.size), reps)
    group_start = np.repeat(np.cumsum(reps) - reps, reps)
    right = np.repeat(offsets[:-1][token_segment], reps) + np.arange(left.size) - group_start
    return left, right, np.repeat(token_segment, reps)


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


Queries = Union[FactoredGradients, PreconditionedQueries]


class Curvature(ABC):
    """How H^-1 enters the score g_q^T H^-1 g_s.

    `prepare_index` maps training gradients to what the index stores and
    `prepare_queries` maps query gradients so that the score is the plain inner
    product of the two.
    """

    name: ClassVar[str]

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

    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients:
        return grads

    def prepare_queries(self, grads: FactoredGradients) -> Queries:
        return grads

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
    Applied by whitening both sides, so search stays the factored product.
    """

    name = "kfac"

    def __init__(self, a: np.ndarray, b: np.ndarray, dense_cov: np.ndarray, damping: float):
        if damping <= 0:
            raise ValueError("KFAC needs damping > 0: B is singular (its rows sum to 0)")
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.dense_cov = np.asarray(dense_cov, dtype=np.float64)
        self.damping = float(damping)
        root = np.sqrt(self.damping)
        self._a_white = _inverse_sqrt(self.a + root * np.eye(len(self.a)))
        self._b_white = _inverse_sqrt(self.b + root * np.eye(len(self.b)))
        self._dense_white = _inverse_sqrt(self.dense_cov + self.damping * np.eye(len(self.dense_cov)))

    @classmethod
    def fit(cls, h: np.ndarray, marginals: np.ndarray, dense: np.ndarray, damping: float) -> "KFACCurvature":
        """Estimate the factors from training token features [N, E], token
        marginals [N, C] and per-segment dense gradients [S, D]."""
        statistics = KFACStatistics()
        statistics.add(h, marginals)
        return statistics.curvature(dense, damping)

    def _whiten(self, grads: FactoredGradients) -> FactoredGradients:
        return FactoredGradients(
            grads.h.astype(np.float64) @ self._a_white,
            grads.r.astype(np.float64) @ self._b_white,
            grads.offsets,
            grads.dense.astype(np.float64) @ self._dense_white,
        )

    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients:
        return self._whiten(grads)

    def prepare_queries(self, grads: FactoredGradients) -> Queries:
        return self._whiten(grads)

    def index_sq_norms(self, stored: FactoredGradients) -> np.ndarray:
        return stored.squared_norms()

    def to_state(self) -> Tuple[dict, Dict[str, np.ndarray]]:
        config = {"name": self.name, "damping": self.damping}
        return config, {"a": self.a, "b": self.b, "dense_cov": self.dense_cov}

    @classmethod
    def from_state(cls, config: dict, arrays: Dict[str, np.ndarray]) -> "KFACCurvature":
        return cls(arrays["a"], arrays["b"], arrays["dense_cov"], config["damping"])


class KFACStatistics:
    """Running sums of K-FAC's token factors, so an index build never holds every
    training token's features at once: A = mean h h^T, B = mean (diag(q) - q q^T)."""

    def __init__(self) -> None:
        self.n_tokens = 0
        self.hh: Optional[np.ndarray] = None
        self.qq: Optional[np.ndarray] = None

    def add(self, h: np.ndarray, marginals: np.ndarray) -> None:
        h = np.asarray(h, dtype=np.float64)
        q = np.asarray(marginals, dtype=np.float64)
        hh = h.T @ h
        qq = np.diag(q.sum(axis=0)) - q.T @ q
        self.hh = hh if self.hh is None else self.hh + hh
        self.qq = qq if self.qq is None else self.qq + qq
        self.n_tokens += len(h)

    def curvature(self, dense: np.ndarray, damping: float) -> KFACCurvature:
        if self.n_tokens == 0 or len(dense) == 0:
            raise ValueError("KFAC needs at least one training token and segment")
        x = np.asarray(dense, dtype=np.float64)
        return KFACCurvature(self.hh / self.n_tokens, self.qq / self.n_tokens, x.T @ x / len(x), damping)


class ExactCurvature(Curvature):
    """H = hessian + damping I over all P = C * E + D head parameters: the ground
    truth for small heads. It does not factor, so queries are preconditioned
    densely (H^-1 g_q) and the index keeps the raw factors."""

    name = "exact"

    def __init__(self, hessian: np.ndarray, damping: float, n_tags: int, width: int):
        hessian = np.asarray(hessian, dtype=np.float64)
        n_params = hessian.shape[0]
        if hessian.shape != (n_params, n_params) or n_params < n_tags * width:
            raise ValueError(f"hessian must be [P, P] with P >= {n_tags} * {width}")
        self.hessian = hessian
        self.damping = float(damping)
        self.n_tags = n_tags
        self.width = width
        values, self._vectors = np.linalg.eigh((hessian + hessian.T) / 2 + self.damping * np.eye(n_params))
        if values.min() <= 0:
            raise ValueError("hessian + damping * I is not positive definite; raise the damping")
        self._values = values

    def _check(self, grads: FactoredGradients) -> None:
        if grads.n_tags * grads.width + grads.n_dense != len(self.hessian):
            raise ValueError(f"gradients have {grads.n_tags} * {grads.width} + {grads.n_dense} "
                             f"parameters, the hessian {len(self.hessian)}")

    def prepare_index(self, grads: FactoredGradients) -> FactoredGradients:
        self._check(grads)
        return grads

    def prepare_queries(self, grads: FactoredGradients) -> Queries:
        self._check(grads)
        rotated = grads.to_dense() @ self._vectors
        solved = (rotated / self._values) @ self._vectors.T
        n_weights = self.n_tags * self.width
        return PreconditionedQueries(
            weights=solved[:, :n_weights].reshape(-1, self.n_tags, self.width),
            dense=solved[:, n_weights:],
            sq_norms=np.einsum("qp,qp->q", rotated, rotated / self._values),
        )

    def index_sq_norms(self, stored: FactoredGradients) -> np.ndarray:
        step = max(1, _CHUNK_ELEMENTS["cpu"] // len(self.hessian))
        out = np.empty(len(stored))
        for s0 in range(0, len(stored), step):
            rotated = stored.select(s0, min(s0 + step, len(stored))).to_dense() @ self._vectors
            out[s0 : s0 + step] = np.einsum("sp,sp->s", rotated, rotated / self._values)
        return out

    def to_state(self) -> Tuple[dict, Dict[str, np.ndarray]]:
        config = {"name": self.name, "damping": self.damping, "n_tags": self.n_tags, "width": self.width}
        return config, {"hessian": self.hessian}

    @classmethod
    def from_state(cls, config: dict, arrays: Dict[str, np.ndarray]) -> "ExactCurvature":
        return cls(arrays["hessian"], config["damping"], config["n_tags"], config["width"])


CURVATURES: Dict[str, Type[Curvature]] = {
    cls.name: cls for cls in (IdentityCurvature, KFACCurvature, ExactCurvature)
}


def _inverse_sqrt(matrix: np.ndarray) -> np.ndarray:
    """M^-1/2 of a symmetric positive definite matrix. torch on one thread: numpy's
    multi-threaded eigh took 3.5 s instead of 25 ms for 323 x 323 on a busy 2-core box."""
    symmetric = torch.as_tensor((matrix + matrix.T) / 2, dtype=torch.float64)
    with one_thread():
        values, vectors = torch.linalg.eigh(symmetric)
    if float(values.min()) <= 0:
        raise ValueError("matrix is not positive definite; raise the damping")
    return ((vectors / torch.sqrt(values)) @ vectors.T).numpy()


@dataclass
class QueryResult:
    """Top training segments for one query: supporters have positive influence,
    best first; opposers negative, most negative first."""

    supporters: List[Tuple[int, float]]
    opposers: List[Tuple[int, float]]


def _as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Zero-copy on CPU. Memory-mapped and from_bytes arrays are read-only and
    torch warns about that; the index never writes to them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array)).to(device)


def _norms(sq_norms: np.ndarray) -> np.ndarray:
    """Square roots, clipping rounding noise below 0."""
    return np.sqrt(np.maximum(sq_norms, 0.0))


def _inverse(norms: np.ndarray) -> np.ndarray:
    """1 / norm, with 0 for zero gradients so they score 0 under cosine."""
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)


@dataclass
class _Chunk:
    """Index segments s0:s1 in the compute dtype."""

    s0: int
    s1: int
    h: torch.Tensor  # [n, E]
    r: torch.Tensor  # [n, C]
    dense: torch.Tensor  # [S_c, D]
    token_segment: torch.Tensor  # [n] chunk-local segment of each token row


class _IndexTensors:
    """The stored arrays as tensors on one device, in the stored dtype; chunks
    come out in the compute dtype."""

    def __init__(self, grads: FactoredGradients, inv_norms: np.ndarray, device: torch.device, dtype: torch.dtype):
        self.h = _as_tensor(grads.h, device)
        self.r = _as_tensor(grads.r, device)
        self.dense = _as_tensor(grads.dense, device)
        self.inv_norms = _as_tensor(inv_norms, device).to(dtype)
        self.dtype = dtype
        self.token_segment = _as_tensor(np.repeat(np.arange(len(grads)), grads.lengths), device)
        self.offsets = grads.offsets

    def chunks(self, max_tokens: int) -> Iterator[_Chunk]:
        """Whole segments, about max_tokens rows at a time. Casts go into reused
        buffers: fresh large allocations would page-fault on every chunk."""
        buffers: Dict[str, torch.Tensor] = {}
        for s0, s1 in _segment_chunks(self.offsets, max_tokens):
            t0, t1 = int(self.offsets[s0]), int(self.offsets[s1])
            yield _Chunk(
                s0,
                s1,
                _cast(self.h[t0:t1], self.dtype, buffers, "h"),
                _cast(self.r[t0:t1], self.dtype, buffers, "r"),
                _cast(self.dense[s0:s1], self.dtype, buffers, "dense"),
                self.token_segment[t0:t1] - s0,
            )


def _cast(src: torch.Tensor, dtype: torch.dtype, buffers: Dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if src.dtype == dtype:
        return src
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < src.shape[0]:
        buf = buffers[key] = torch.empty(src.shape, dtype=dtype, device=src.device)
    return buf[: src.shape[0]].copy_(src)


def _segment_chunks(offsets: np.ndarray, max_tokens: int) -> List[Tuple[int, int]]:
    """Split segments into runs of at most max_tokens token rows (a longer
    segment gets a run of its own)."""
    n_segments = offsets.size - 1
    bounds = [0]
    while bounds[-1] < n_segments:
        s0 = bounds[-1]
        s1 = int(np.searchsorted(offsets, offsets[s0] + max_tokens, side="right")) - 1
        bounds.append(max(s1, s0 + 1))
    return list(zip(bounds[:-1], bounds[1:]))


class _FactoredBatch:
    """Whitened factored queries: per index token t and query token u,
    (h_t . h_u)(r_t . r_u), summed over u in the query and t in the segment."""

    def __init__(self, grads: FactoredGradients, device: torch.device, dtype: torch.dtype):
        self.h = _as_tensor(grads.h, device).to(dtype)
        self.r = _as_tensor(grads.r, device).to(dtype)
        self.dense = _as_tensor(grads.dense, device).to(dtype)
        self.inv_norms = _as_tensor(_inverse(_norms(grads.squared_norms())), device).to(dtype)
        self.row_query = _as_tensor(np.repeat(np.arange(len(grads)), grads.lengths), device)
        self.n_queries = len(grads)
        self.width = self.h.shape[0]

    def chunk_scores(self, chunk: _Chunk) -> torch.Tensor:
        # Index rows first: the big operand is then read in storage order
        # (several times faster when memory-bound), and both reductions are
        # index_add_ over cache-sized [S_c, M] blocks.
        products = (chunk.h @ self.h.T).mul_(chunk.r @ self.r.T)
        n_segments = chunk.s1 - chunk.s0
        per_segment = products.new_zeros(n_segments, self.width).index_add_(0, chunk.token_segment, products)
        per_query = products.new_zeros(n_segments, self.n_queries).index_add_(1, self.row_query, per_segment)
        return per_query.addmm_(chunk.dense, self.dense.T).T


class _PreconditionedBatch:
    """Densely preconditioned queries: per index token t, r_t^T M_q h_t."""

    def __init__(self, queries: PreconditionedQueries, device: torch.device, dtype: torch.dtype):
        n_queries, self.n_tags, width = queries.weights.shape
        self.weights = _as_tensor(queries.weights, device).to(dtype).reshape(-1, width)
        self.dense = _as_tensor(queries.dense, device).to(dtype)
        self.inv_norms = _as_tensor(_inverse(_norms(queries.sq_norms)), device).to(dtype)
        self.n_queries = n_queries
        self.width = n_queries * self.n_tags

    def chunk_scores(self, chunk: _Chunk) -> torch.Tensor:
        projected = (chunk.h @ self.weights.T).view(-1, self.n_queries, self.n_tags)
        per_token = projected.mul_(chunk.r[:, None, :]).sum(dim=2)
        per_segment = per_token.new_zeros(chunk.s1 - chunk.s0, self.n_queries)
        per_segment.index_add_(0, chunk.token_segment, per_token)
        return per_segment.addmm_(chunk.dense, self.dense.T).T


class SegmentIndex:
    """Stored (curvature-prepared) factored gradients of training segments,
    searched exactly for the most influential ones per query."""

    def __init__(
        self,
        grads: FactoredGradients,
        norms: np.ndarray,
        metadata: List[dict],
        curvature: Curvature,
        normalize: bool,
    ):
        if len(metadata) != len(grads) or len(norms) != len(grads):
            raise ValueError(f"{len(grads)} segments, {len(metadata)} metadata, {len(norms)} norms")
        self.grads = grads
        self.norms = norms
        self.metadata = metadata
        self.curvature = curvature
        self.normalize = normalize
        self._inv_norms = _inverse(np.asarray(norms, dtype=np.float64))
        self._tensors: Dict[str, _IndexTensors] = {}

    @classmethod
    def build(
        cls,
        grads: FactoredGradients,
        metadata: List[dict],
        curvature: Curvature,
        normalize: bool = True,
        dtype: str = "float32",
    ) -> "SegmentIndex":
        """Prepare and store training gradients. Norms for cosine scores are
        computed from the stored (possibly float16) factors, so a query equal
        to a stored segment scores 1 against it."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        stored = curvature.prepare_index(grads).astype(dtype)
        norms = _norms(curvature.index_sq_norms(stored))
        return cls(stored, norms, list(metadata), curvature, normalize)

    def __len__(self) -> int:
        return len(self.grads)

    @property
    def dtype(self) -> str:
        return str(self.grads.h.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (what search reads, plus offsets and norms)."""
        g = self.grads
        return g.h.nbytes + g.r.nbytes + g.offsets.nbytes + g.dense.nbytes + self.norms.nbytes

    def scores(
        self, queries: FactoredGradients, device: str = "cpu", batch_size: int = 256, chunk_tokens: Optional[int] = None
    ) -> np.ndarray:
        """All scores [Q, S]; for tests and small data."""
        out = np.zeros((len(queries), len(self)), dtype=np.float64)
        for q0, _, chunks in self._search(queries, device, batch_size, chunk_tokens):
            for chunk, scores in chunks:
                out[q0 : q0 + len(scores), chunk.s0 : chunk.s1] = scores.cpu().numpy()
        return out

    def top_k(
        self,
        queries: FactoredGradients,
        k: int = 10,
        device: str = "cpu",
        batch_size: int = 256,
        chunk_tokens: Optional[int] = None,
    ) -> List[QueryResult]:
        """Exact k most supporting and k most opposing segments per query,
        batching queries and streaming over index chunks."""
        if k < 0:
            raise ValueError("k must be >= 0")
        results: List[QueryResult] = []
        for _, batch, chunks in self._search(queries, device, batch_size, chunk_tokens):
            top = bottom = None
            for chunk, scores in chunks:
                top = _merge_top(top, scores, chunk.s0, k)
                bottom = _merge_top(bottom, -scores, chunk.s0, k)
            results.extend(_results(top, bottom, batch.n_queries))
        return results

    def _search(
        self, queries: FactoredGradients, device: str, batch_size: int, chunk_tokens: Optional[int]
    ) -> Iterator[Tuple[int, "_Batch", Iterator[Tuple[_Chunk, torch.Tensor]]]]:
        """Per query batch: its first query, the batch, and a stream of
        (chunk, scores [Q_batch, S_chunk])."""
        self._check_queries(queries)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        tensors = self._device_tensors(torch.device(device))
        for q0 in range(0, len(queries), batch_size):
            prepared = self.curvature.prepare_queries(queries.select(q0, min(q0 + batch_size, len(queries))))
            batch = _to_batch(prepared, tensors)
            budget = _CHUNK_ELEMENTS["cpu" if tensors.h.device.type == "cpu" else "accelerator"]
            max_tokens = chunk_tokens or max(1, budget // max(batch.width, self.grads.width))
            yield q0, batch, self._chunk_scores(batch, tensors, max_tokens)

    def _chunk_scores(
        self, batch: "_Batch", tensors: _IndexTensors, max_tokens: int
    ) -> Iterator[Tuple[_Chunk, torch.Tensor]]:
        for chunk in tensors.chunks(max_tokens):
            scores = batch.chunk_scores(chunk)
            if self.normalize:
                scores.mul_(batch.inv_norms[:, None]).mul_(tensors.inv_norms[chunk.s0 : chunk.s1])
            yield chunk, scores

    def _device_tensors(self, device: torch.device) -> _IndexTensors:
        """On CPU the tensors share memory with the (possibly mapped) arrays; on
        an accelerator the index is copied there once and kept. Search runs in
        float32 (float64 for a float64 index) whatever the stored dtype."""
        key = str(device)
        if key not in self._tensors:
            dtype = torch.float64 if self.dtype == "float64" else torch.float32
            self._tensors[key] = _IndexTensors(self.grads, self._inv_norms, device, dtype)
        return self._tensors[key]

    def _check_queries(self, queries: FactoredGradients) -> None:
        got = (queries.width, queries.n_tags, queries.n_dense)
        want = (self.grads.width, self.grads.n_tags, self.grads.n_dense)
        if got != want:
            raise ValueError(f"query (E, C, D) = {got} but the index has {want}")

    def to_disk(self, path: Union[str, Path]) -> None:
        """Write a directory of .npy arrays and JSON. Everything goes into a
        temporary sibling directory first, which then replaces `path`, so a
        failed write never leaves a partial index behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            for name, array in self._arrays().items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            srsly.write_json(tmp / "metadata.json", self.metadata)
            srsly.write_json(tmp / "settings.json", self._settings())
            _fsync_files(tmp)
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def from_disk(cls, path: Union[str, Path], mmap: bool = True) -> "SegmentIndex":
        path = Path(path)
        settings = srsly.read_json(path / "settings.json")
        mode = "r" if mmap else None
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in settings["arrays"]}
        return cls._from_parts(settings, arrays, srsly.read_json(path / "metadata.json"))

    def to_bytes(self) -> bytes:
        arrays = {
            name: {"dtype": array.dtype.str, "shape": list(array.shape), "data": np.ascontiguousarray(array).tobytes()}
            for name, array in self._arrays().items()
        }
        return srsly.msgpack_dumps({"settings": self._settings(), "metadata": self.metadata, "arrays": arrays})

    @classmethod
    def from_bytes(cls, data: bytes) -> "SegmentIndex":
        msg = srsly.msgpack_loads(data)
        arrays = {
            name: np.frombuffer(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"])
            for name, a in msg["arrays"].items()
        }
        return cls._from_parts(msg["settings"], arrays, msg["metadata"])

    def _arrays(self) -> Dict[str, np.ndarray]:
        g = self.grads
        arrays = {"h": g.h, "r": g.r, "offsets": g.offsets, "dense": g.dense, "norms": self.norms}
        _, curvature_arrays = self.curvature.to_state()
        arrays.update({f"curvature.{name}": array for name, array in curvature_arrays.items()})
        return arrays

    def _settings(self) -> dict:
        config, _ = self.curvature.to_state()
        return {
            "format": _FORMAT_VERSION,
            "normalize": self.normalize,
            "curvature": config,
            "arrays": list(self._arrays()),
        }

    @classmethod
    def _from_parts(cls, settings: dict, arrays: Dict[str, np.ndarray], metadata: List[dict]) -> "SegmentIndex":
        if settings.get("format") != _FORMAT_VERSION:
            raise ValueError(f"unsupported index format {settings.get('format')!r}")
        config = settings["curvature"]
        curvature_arrays = {
            name.split(".", 1)[1]: np.asarray(array) for name, array in arrays.items() if name.startswith("curvature.")
        }
        curvature = CURVATURES[config["name"]].from_state(config, curvature_arrays)
        grads = FactoredGradients(arrays["h"], arrays["r"], np.asarray(arrays["offsets"]), arrays["dense"])
        return cls(grads, arrays["norms"], metadata, curvature, settings["normalize"])


def _fsync_files(directory: Path) -> None:
    """Flush file contents before the rename publishes them: otherwise a crash
    can leave a complete-looking index with truncated files."""
    for file in directory.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst. POSIX cannot rename over a non-empty directory, so an
    existing dst is first moved aside and deleted only after src is in place."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    try:
        os.replace(dst, old / dst.name)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old / dst.name, dst)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


_Batch = Union[_FactoredBatch, _PreconditionedBatch]


def _to_batch(prepared: Queries, tensors: _IndexTensors) -> _Batch:
    if isinstance(prepared, PreconditionedQueries):
        return _PreconditionedBatch(prepared, tensors.h.device, tensors.dtype)
    return _FactoredBatch(prepared, tensors.h.device, tensors.dtype)


def _merge_top(
    best: Optional[Tuple[torch.Tensor, torch.Tensor]], scores: torch.Tensor, s0: int, k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running per-query top-k (values, segment ids) after one more chunk."""
    ids = torch.arange(s0, s0 + scores.shape[1], device=scores.device).expand_as(scores)
    if best is not None:
        scores = torch.cat([best[0], scores], dim=1)
        ids = torch.cat([best[1], ids], dim=1)
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.values, ids.gather(1, top.indices)


def _results(
    top: Optional[Tuple[torch.Tensor, torch.Tensor]],
    bottom: Optional[Tuple[torch.Tensor, torch.Tensor]],
    n_queries: int,
) -> List[QueryResult]:
    if top is None or bottom is None:  # an empty index
        return [QueryResult([], []) for _ in range(n_queries)]
    top_values, top_ids = (t.cpu().tolist() for t in top)
    bottom_values, bottom_ids = (t.cpu().tolist() for t in bottom)
    return [
        QueryResult(
            supporters=[(i, v) for i, v in zip(top_ids[q], top_values[q]) if v > 0],
            opposers=[(i, -v) for i, v in zip(bottom_ids[q], bottom_values[q]) if v > 0],
        )
        for q in range(n_queries)
    ]
