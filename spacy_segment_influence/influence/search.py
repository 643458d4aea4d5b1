"""The search behind `SegmentIndex`: the stored segments as tensors on a device, walked in
chunks of bounded memory, each chunk's scores against a batch of prepared queries (factored
or preconditioned), and the running top-k merged over the chunks."""

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple, Union

import numpy as np
import torch

from ..ner.crf import one_thread
from ..storage.index_storage import StoredSegments
from .curvature import FactoredQueries, PreconditionedQueries, Queries

# Elements per intermediate [chunk rows, width] tensor, which bounds search
# memory whatever the index size: cache-sized on CPU, larger on accelerators
# where each chunk costs kernel launches.
CHUNK_ELEMENTS = {"cpu": 2**20, "accelerator": 2**24}


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Zero-copy on CPU. Memory-mapped and from_bytes arrays are read-only and
    torch warns about that; the index never writes to them."""
    array = np.asarray(array)
    if array.flags.writeable:  # the common case, without the cost of catch_warnings
        return torch.from_numpy(array).to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


def sqrt_norms(sq_norms: np.ndarray) -> np.ndarray:
    """Square roots, clipping rounding noise below 0."""
    return np.sqrt(np.maximum(sq_norms, 0.0))


def inverse_norms(norms: np.ndarray) -> np.ndarray:
    """1 / norm, with 0 for zero gradients so they score 0 under cosine."""
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)


@dataclass
class Chunk:
    """Index segments s0:s1 in the compute dtype."""

    s0: int
    s1: int
    h: torch.Tensor  # [n, E]
    r: torch.Tensor  # [n, C]
    dense: torch.Tensor  # sparse CSR [S_c, D]
    token_segment: torch.Tensor  # [n] chunk-local segment of each token row


class IndexTensors:
    """The stored arrays as tensors on one device, in the stored dtype; chunks
    come out in the compute dtype."""

    def __init__(self, stored: StoredSegments, inv_norms: np.ndarray, device: torch.device, dtype: torch.dtype):
        self.h = as_tensor(stored.h, device)
        self.r = as_tensor(stored.r, device)
        self.dense_columns = as_tensor(stored.dense.columns, device)
        self.dense_values = as_tensor(stored.dense.values, device)
        self.dense_indptr = stored.dense.indptr
        self.n_dense = stored.dense.n_columns
        self.inv_norms = as_tensor(inv_norms, device).to(dtype)
        self.dtype = dtype
        self.casts = self.h.dtype != dtype
        self.token_segment = as_tensor(np.repeat(np.arange(len(stored)), np.diff(stored.offsets)), device)
        self.offsets = stored.offsets

    def chunks(self, max_tokens: int) -> Iterator[Chunk]:
        """Whole segments, about max_tokens rows at a time. Casts go into reused
        buffers: fresh large allocations would page-fault on every chunk."""
        buffers: Dict[str, torch.Tensor] = {}
        for s0, s1 in segment_chunks(self.offsets, max_tokens):
            t0, t1 = int(self.offsets[s0]), int(self.offsets[s1])
            yield Chunk(
                s0,
                s1,
                cast(self.h[t0:t1], self.dtype, buffers, "h"),
                cast(self.r[t0:t1], self.dtype, buffers, "r"),
                self._dense_rows(s0, s1, buffers),
                self.token_segment[t0:t1] - s0,
            )

    def _dense_rows(self, s0: int, s1: int, buffers: Dict[str, torch.Tensor]) -> torch.Tensor:
        n0, n1 = int(self.dense_indptr[s0]), int(self.dense_indptr[s1])
        crow = as_tensor((self.dense_indptr[s0 : s1 + 1] - n0).astype(np.int32), self.h.device)
        values = cast(self.dense_values[n0:n1], self.dtype, buffers, "dense")
        with warnings.catch_warnings():  # "sparse CSR support is in beta"; used only for CSR @ dense
            warnings.filterwarnings("ignore", message="Sparse")
            return torch.sparse_csr_tensor(crow, self.dense_columns[n0:n1], values, size=(s1 - s0, self.n_dense))


def cast(src: torch.Tensor, dtype: torch.dtype, buffers: Dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if src.dtype == dtype:
        return src
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < src.shape[0]:
        buf = buffers[key] = torch.empty(src.shape, dtype=dtype, device=src.device)
    return buf[: src.shape[0]].copy_(src)


def segment_chunks(offsets: np.ndarray, max_tokens: int) -> List[Tuple[int, int]]:
    """Split segments into runs of at most max_tokens token rows (a longer
    segment gets a run of its own)."""
    n_segments = offsets.size - 1
    bounds = [0]
    while bounds[-1] < n_segments:
        s0 = bounds[-1]
        s1 = int(np.searchsorted(offsets, offsets[s0] + max_tokens, side="right")) - 1
        bounds.append(max(s1, s0 + 1))
    return list(zip(bounds[:-1], bounds[1:]))


def search_threads(device: str):
    """CPU search runs on one intra-op thread. Measured by bench/query_latency.py on the
    2-core machines this project runs on, while other jobs shared them: a single query
    took 3.3 ms wall on one thread and 6.8 ms on two, a float16 one 4.3 vs 105 ms, all
    CoNLL validation entities batched 10 vs 34 s. Accelerators are unaffected."""
    return one_thread() if torch.device(device).type == "cpu" else nullcontext()


class FactoredBatch:
    """Factored queries: per index token t and query token u, (h_t . h_u)(r_t . r_u),
    summed over u in the query and t in the segment, plus the dense block."""

    def __init__(self, queries: FactoredQueries, device: torch.device, dtype: torch.dtype):
        grads = queries.grads
        self.h = as_tensor(grads.h, device).to(dtype)
        self.r = as_tensor(grads.r, device).to(dtype)
        self.dense_t = as_tensor(grads.dense.T.copy(), device).to(dtype)
        self.inv_norms = as_tensor(inverse_norms(sqrt_norms(queries.sq_norms)), device).to(dtype)
        self.row_query = as_tensor(np.repeat(np.arange(len(grads)), grads.lengths), device)
        self.n_queries = len(grads)
        self.width = self.h.shape[0]

    def chunk_scores(self, chunk: Chunk) -> torch.Tensor:
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


class PreconditionedBatch:
    """Densely preconditioned queries: per index token t, r_t^T M_q h_t."""

    def __init__(self, queries: PreconditionedQueries, device: torch.device, dtype: torch.dtype):
        n_queries, self.n_tags, width = queries.weights.shape
        self.weights = as_tensor(queries.weights, device).to(dtype).reshape(-1, width)
        self.dense_t = as_tensor(queries.dense.T.copy(), device).to(dtype)
        self.inv_norms = as_tensor(inverse_norms(sqrt_norms(queries.sq_norms)), device).to(dtype)
        self.n_queries = n_queries
        self.width = n_queries * self.n_tags

    def chunk_scores(self, chunk: Chunk) -> torch.Tensor:
        projected = (chunk.h @ self.weights.T).view(-1, self.n_queries, self.n_tags)
        per_token = projected.mul_(chunk.r[:, None, :]).sum(dim=2)
        per_segment = per_token.new_zeros(chunk.s1 - chunk.s0, self.n_queries)
        per_segment.index_add_(0, chunk.token_segment, per_token)
        return per_segment.add_(chunk.dense @ self.dense_t).T


Batch = Union[FactoredBatch, PreconditionedBatch]


def to_batch(prepared: Queries, tensors: IndexTensors) -> Batch:
    if isinstance(prepared, PreconditionedQueries):
        return PreconditionedBatch(prepared, tensors.h.device, tensors.dtype)
    return FactoredBatch(prepared, tensors.h.device, tensors.dtype)
