"""Exact top-k segment influence search over factored CRF-head gradients.

Influence of a training segment s on a query q is g_q^T H^-1 g_s, positive when
the training segment supports the query (see curvature.py for H and
gradients.py for the factored form that keeps the index small and search cheap).

This module knows arrays only (numpy / torch), never spaCy objects; `index_storage`
writes and reads what it stores.
"""

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union, get_args

import numpy as np
import torch

from ..exceptions import ConfigError
from ..ner.crf import one_thread
from ..storage import index_storage
from ..storage.index_storage import StoredSegments
from .curvature import Curvature, FactoredQueries, PreconditionedQueries, Queries
from .gradients import FactoredGradients, WindowLabels

# Elements per intermediate [chunk rows, width] tensor, which bounds search
# memory whatever the index size: cache-sized on CPU, larger on accelerators
# where each chunk costs kernel launches.
_CHUNK_ELEMENTS = {"cpu": 2**20, "accelerator": 2**24}
IndexDtype = Literal["float16", "float32", "float64"]
DTYPES = get_args(IndexDtype)


@dataclass
class QueryResult:
    """Top training segments for one query: supporters have positive influence,
    best first; opposers negative, most negative first."""

    supporters: List[Tuple[int, float]]
    opposers: List[Tuple[int, float]]


def _as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Zero-copy on CPU. Memory-mapped and from_bytes arrays are read-only and
    torch warns about that; the index never writes to them."""
    array = np.asarray(array)
    if array.flags.writeable:  # the common case, without the cost of catch_warnings
        return torch.from_numpy(array).to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


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
    dense: torch.Tensor  # sparse CSR [S_c, D]
    token_segment: torch.Tensor  # [n] chunk-local segment of each token row


class _IndexTensors:
    """The stored arrays as tensors on one device, in the stored dtype; chunks
    come out in the compute dtype."""

    def __init__(self, stored: StoredSegments, inv_norms: np.ndarray, device: torch.device, dtype: torch.dtype):
        self.h = _as_tensor(stored.h, device)
        self.r = _as_tensor(stored.r, device)
        self.dense_columns = _as_tensor(stored.dense.columns, device)
        self.dense_values = _as_tensor(stored.dense.values, device)
        self.dense_indptr = stored.dense.indptr
        self.n_dense = stored.dense.n_columns
        self.inv_norms = _as_tensor(inv_norms, device).to(dtype)
        self.dtype = dtype
        self.casts = self.h.dtype != dtype
        self.token_segment = _as_tensor(np.repeat(np.arange(len(stored)), np.diff(stored.offsets)), device)
        self.offsets = stored.offsets

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
                self._dense_rows(s0, s1, buffers),
                self.token_segment[t0:t1] - s0,
            )

    def _dense_rows(self, s0: int, s1: int, buffers: Dict[str, torch.Tensor]) -> torch.Tensor:
        n0, n1 = int(self.dense_indptr[s0]), int(self.dense_indptr[s1])
        crow = _as_tensor((self.dense_indptr[s0 : s1 + 1] - n0).astype(np.int32), self.h.device)
        values = _cast(self.dense_values[n0:n1], self.dtype, buffers, "dense")
        with warnings.catch_warnings():  # "sparse CSR support is in beta"; used only for CSR @ dense
            warnings.filterwarnings("ignore", message="Sparse")
            return torch.sparse_csr_tensor(crow, self.dense_columns[n0:n1], values, size=(s1 - s0, self.n_dense))


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


def _search_threads(device: str):
    """CPU search runs on one intra-op thread. Measured by bench/query_latency.py on the
    2-core machines this project runs on, while other jobs shared them: a single query
    took 3.3 ms wall on one thread and 6.8 ms on two, a float16 one 4.3 vs 105 ms, all
    CoNLL validation entities batched 10 vs 34 s. Accelerators are unaffected."""
    return one_thread() if torch.device(device).type == "cpu" else nullcontext()


class _FactoredBatch:
    """Factored queries: per index token t and query token u, (h_t . h_u)(r_t . r_u),
    summed over u in the query and t in the segment, plus the dense block."""

    def __init__(self, queries: FactoredQueries, device: torch.device, dtype: torch.dtype):
        grads = queries.grads
        self.h = _as_tensor(grads.h, device).to(dtype)
        self.r = _as_tensor(grads.r, device).to(dtype)
        self.dense_t = _as_tensor(grads.dense.T.copy(), device).to(dtype)
        self.inv_norms = _as_tensor(_inverse(_norms(queries.sq_norms)), device).to(dtype)
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
        if self.width == self.n_queries:  # one row per query
            per_query = per_segment
        else:
            per_query = products.new_zeros(n_segments, self.n_queries).index_add_(1, self.row_query, per_segment)
        return per_query.add_(chunk.dense @ self.dense_t).T


class _PreconditionedBatch:
    """Densely preconditioned queries: per index token t, r_t^T M_q h_t."""

    def __init__(self, queries: PreconditionedQueries, device: torch.device, dtype: torch.dtype):
        n_queries, self.n_tags, width = queries.weights.shape
        self.weights = _as_tensor(queries.weights, device).to(dtype).reshape(-1, width)
        self.dense_t = _as_tensor(queries.dense.T.copy(), device).to(dtype)
        self.inv_norms = _as_tensor(_inverse(_norms(queries.sq_norms)), device).to(dtype)
        self.n_queries = n_queries
        self.width = n_queries * self.n_tags

    def chunk_scores(self, chunk: _Chunk) -> torch.Tensor:
        projected = (chunk.h @ self.weights.T).view(-1, self.n_queries, self.n_tags)
        per_token = projected.mul_(chunk.r[:, None, :]).sum(dim=2)
        per_segment = per_token.new_zeros(chunk.s1 - chunk.s0, self.n_queries)
        per_segment.index_add_(0, chunk.token_segment, per_token)
        return per_segment.add_(chunk.dense @ self.dense_t).T


class SegmentIndex:
    """Stored (curvature-prepared) factored gradients of training segments,
    searched exactly for the most influential ones per query."""

    def __init__(
        self,
        stored: StoredSegments,
        norms: np.ndarray,
        metadata: Sequence[Any],
        curvature: Curvature,
        normalize: bool,
        windows: Optional[WindowLabels] = None,
    ):
        """`metadata`: one record per segment, returned with its hits (JSON-able dicts if
        the index is saved). `windows`: the labels of each stored segment's window
        (`segments.window_labels`), kept for exact curvature so that `removal` can
        recompute a segment's loss."""
        if len(metadata) != len(stored) or len(norms) != len(stored):
            raise ValueError(f"{len(stored)} segments, {len(metadata)} metadata, {len(norms)} norms")
        if windows is not None and (len(windows.tags) != len(stored.h) or len(windows.bounds) != len(stored)):
            raise ValueError("window labels must have one tag per stored token row and one bounds row per segment")
        self.windows = windows
        self.stored = stored
        self.norms = norms
        self.metadata = list(metadata)
        self.curvature = curvature
        self.normalize = normalize
        self._inv_norms = _inverse(np.asarray(norms, dtype=np.float64))
        self._tensors: Dict[str, _IndexTensors] = {}

    @classmethod
    def build(
        cls,
        grads: FactoredGradients,
        metadata: Sequence[Any],
        curvature: Curvature,
        normalize: bool = True,
        dtype: str = "float32",
        windows: Optional[WindowLabels] = None,
    ) -> "SegmentIndex":
        """Prepare and store training gradients. Norms for cosine scores are
        computed from the stored (possibly float16) values, so a query equal
        to a stored segment scores 1 against it."""
        if dtype not in DTYPES:
            raise ConfigError(f"Index dtype must be one of {DTYPES}, got {dtype!r}")
        prepared = curvature.prepare_index(grads).astype(dtype)
        norms = _norms(curvature.index_sq_norms(prepared))
        return cls(StoredSegments.from_gradients(prepared), norms, list(metadata), curvature, normalize, windows)

    def __len__(self) -> int:
        return len(self.stored)

    def select(self, start: int, stop: int) -> "SegmentIndex":
        """Segments start:stop as an index of their own (the same curvature and
        settings), sharing memory with self: a shard that scores as this index does."""
        windows = None
        if self.windows is not None:
            t0, t1 = int(self.stored.offsets[start]), int(self.stored.offsets[stop])
            windows = WindowLabels(self.windows.tags[t0:t1], self.windows.bounds[start:stop])
        return SegmentIndex(
            self.stored.select(start, stop),
            self.norms[start:stop],
            self.metadata[start:stop],
            self.curvature,
            self.normalize,
            windows,
        )

    @property
    def dtype(self) -> str:
        return str(self.stored.h.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (what search reads, plus offsets and norms)."""
        return self.stored.nbytes + self.norms.nbytes

    def scores(
        self, queries: FactoredGradients, device: str = "cpu", batch_size: int = 256, chunk_tokens: Optional[int] = None
    ) -> np.ndarray:
        """All scores [Q, S]; for tests and small data."""
        out = np.zeros((len(queries), len(self)), dtype=np.float64)
        with _search_threads(device):
            for q0, batch, chunks in self._search(queries, device, batch_size, chunk_tokens):
                for chunk, scores in chunks:
                    scaled = scores.mul_(batch.inv_norms[:, None]) if self.normalize else scores
                    out[q0 : q0 + len(scores), chunk.s0 : chunk.s1] = scaled.cpu().numpy()
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
            raise ConfigError(f"k must be >= 0, got {k}")
        results: List[QueryResult] = []
        with _search_threads(device):
            for _, batch, chunks in self._search(queries, device, batch_size, chunk_tokens):
                top = bottom = None
                for chunk, scores in chunks:
                    top = _merge_top(top, scores, chunk.s0, k, largest=True)
                    bottom = _merge_top(bottom, scores, chunk.s0, k, largest=False)
                scale = batch.inv_norms[:, None] if self.normalize else None
                results.extend(_results(top, bottom, batch.n_queries, scale))
        return results

    def total_influence(self, queries: FactoredGradients) -> np.ndarray:
        """Per stored segment, sum_q g_q^T H^-1 g_s over all queries, never
        normalised: the influence on a total loss (e.g. a held-out set's).
        Linear in the queries, so they are summed into one direction first."""
        self._check_queries(queries)
        prepared = self.curvature.prepare_queries(queries)
        if isinstance(prepared, PreconditionedQueries):
            emission, dense = prepared.weights.sum(axis=0), prepared.dense.sum(axis=0)
        else:
            factors = prepared.grads
            emission = factors.r.astype(np.float64).T @ factors.h.astype(np.float64)
            dense = factors.dense.astype(np.float64).sum(axis=0)
        stored = self.stored
        per_row = np.einsum("nc,nc->n", stored.h.astype(np.float64) @ emission.T, stored.r.astype(np.float64))
        return np.add.reduceat(per_row, stored.offsets[:-1]) + stored.dense.dot(dense)

    def _search(
        self, queries: FactoredGradients, device: str, batch_size: int, chunk_tokens: Optional[int]
    ) -> Iterator[Tuple[int, "_Batch", Iterator[Tuple[_Chunk, torch.Tensor]]]]:
        """Per query batch: its first query, the batch, and a stream of
        (chunk, scores [Q_batch, S_chunk]). Cosine scores still lack the query's
        1 / norm, a positive factor per query that cannot change its ranking."""
        self._check_queries(queries)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        tensors = self._device_tensors(torch.device(device))
        for q0 in range(0, len(queries), batch_size):
            prepared = self.curvature.prepare_queries(queries.select(q0, min(q0 + batch_size, len(queries))))
            batch = _to_batch(prepared, tensors)
            budget = _CHUNK_ELEMENTS["cpu" if tensors.h.device.type == "cpu" else "accelerator"]
            # Per row, a chunk holds its [rows, width] products and, when the stored
            # dtype is cast, a copy of its h row.
            per_row = batch.width + (self.stored.h.shape[1] if tensors.casts else 0)
            max_tokens = chunk_tokens or max(1, budget // per_row)
            yield q0, batch, self._chunk_scores(batch, tensors, max_tokens)

    def _chunk_scores(
        self, batch: "_Batch", tensors: _IndexTensors, max_tokens: int
    ) -> Iterator[Tuple[_Chunk, torch.Tensor]]:
        for chunk in tensors.chunks(max_tokens):
            scores = batch.chunk_scores(chunk)
            if self.normalize:
                scores.mul_(tensors.inv_norms[chunk.s0 : chunk.s1])
            yield chunk, scores

    def _device_tensors(self, device: torch.device) -> _IndexTensors:
        """On CPU the tensors share memory with the (possibly mapped) arrays; on
        an accelerator the index is copied there once and kept. Search runs in
        float32 (float64 for a float64 index) whatever the stored dtype."""
        key = str(device)
        if key not in self._tensors:
            dtype = torch.float64 if self.dtype == "float64" else torch.float32
            self._tensors[key] = _IndexTensors(self.stored, self._inv_norms, device, dtype)
        return self._tensors[key]

    def _check_queries(self, queries: FactoredGradients) -> None:
        got = (queries.width, queries.n_tags, queries.n_dense)
        want = self.stored.shape
        if got != want:
            raise ValueError(f"query (E, C, D) = {got} but the index has {want}")

    def to_disk(self, path: Union[str, Path]) -> None:
        """Write a directory of .npy arrays and JSON, atomically (`index_storage`)."""
        index_storage.write_dir(self, path)

    @classmethod
    def from_disk(cls, path: Union[str, Path], mmap: bool = True) -> "SegmentIndex":
        """Read a directory written by `to_disk`, its arrays memory-mapped if `mmap`."""
        return cls(*index_storage.read_dir(path, mmap))

    def to_bytes(self) -> bytes:
        return index_storage.to_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SegmentIndex":
        return cls(*index_storage.from_bytes(data))


_Batch = Union[_FactoredBatch, _PreconditionedBatch]


def _to_batch(prepared: Queries, tensors: _IndexTensors) -> _Batch:
    if isinstance(prepared, PreconditionedQueries):
        return _PreconditionedBatch(prepared, tensors.h.device, tensors.dtype)
    return _FactoredBatch(prepared, tensors.h.device, tensors.dtype)


def _merge_top(
    best: Optional[Tuple[torch.Tensor, torch.Tensor]], scores: torch.Tensor, s0: int, k: int, largest: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running per-query top-k (values, segment ids) after one more chunk, the
    largest or the smallest scores."""
    top = scores.topk(min(k, scores.shape[1]), dim=1, largest=largest)
    values, ids = top.values, top.indices + s0
    if best is not None:
        values, ids = torch.cat([best[0], values], dim=1), torch.cat([best[1], ids], dim=1)
        top = values.topk(min(k, values.shape[1]), dim=1, largest=largest)
        values, ids = top.values, ids.gather(1, top.indices)
    return values, ids


def _results(
    top: Optional[Tuple[torch.Tensor, torch.Tensor]],
    bottom: Optional[Tuple[torch.Tensor, torch.Tensor]],
    n_queries: int,
    scale: Optional[torch.Tensor],
) -> List[QueryResult]:
    if top is None or bottom is None:  # an empty index
        return [QueryResult([], []) for _ in range(n_queries)]
    if scale is not None:
        top, bottom = (top[0] * scale, top[1]), (bottom[0] * scale, bottom[1])
    top_values, top_ids = (t.cpu().tolist() for t in top)
    bottom_values, bottom_ids = (t.cpu().tolist() for t in bottom)
    return [
        QueryResult(
            supporters=[(i, v) for i, v in zip(top_ids[q], top_values[q]) if v > 0],
            opposers=[(i, v) for i, v in zip(bottom_ids[q], bottom_values[q]) if v < 0],
        )
        for q in range(n_queries)
    ]
