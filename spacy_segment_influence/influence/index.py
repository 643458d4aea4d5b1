"""Exact top-k segment influence search over factored CRF-head gradients.

Influence of a training segment s on a query q is g_q^T H^-1 g_s, positive when
the training segment supports the query (see curvature.py for H and
gradients.py for the factored form that keeps the index small and search cheap).

This module knows arrays only (numpy / torch), never spaCy objects; `index_storage`
writes and reads what it stores.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union, get_args

import numpy as np
import torch

from ..exceptions import ConfigError
from ..storage import index_storage
from ..storage.index_storage import IndexParts, SparseRows, StoredSegments
from .curvature import CURVATURES, Curvature, PreconditionedQueries
from .gradients import FactoredGradients, WindowLabels
from .search import CHUNK_ELEMENTS, Batch, Chunk, IndexTensors, inverse_norms, search_threads, sqrt_norms, to_batch

IndexDtype = Literal["float16", "float32", "float64"]
DTYPES = get_args(IndexDtype)


@dataclass
class QueryResult:
    """Top training segments for one query: supporters have positive influence,
    best first; opposers negative, most negative first."""

    supporters: List[Tuple[int, float]]
    opposers: List[Tuple[int, float]]


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
        self._inv_norms = inverse_norms(np.asarray(norms, dtype=np.float64))
        self._tensors: Dict[str, IndexTensors] = {}

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
        norms = sqrt_norms(curvature.index_sq_norms(prepared))
        stored = StoredSegments(prepared.h, prepared.r, prepared.offsets, SparseRows.from_dense(prepared.dense))
        return cls(stored, norms, list(metadata), curvature, normalize, windows)

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
        with search_threads(device):
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
        with search_threads(device):
            for _, batch, chunks in self._search(queries, device, batch_size, chunk_tokens):
                top = bottom = None
                for chunk, scores in chunks:
                    top = merge_top(top, scores, chunk.s0, k, largest=True)
                    bottom = merge_top(bottom, scores, chunk.s0, k, largest=False)
                scale = batch.inv_norms[:, None] if self.normalize else None
                results.extend(top_k_results(top, bottom, batch.n_queries, scale))
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
    ) -> Iterator[Tuple[int, "Batch", Iterator[Tuple[Chunk, torch.Tensor]]]]:
        """Per query batch: its first query, the batch, and a stream of
        (chunk, scores [Q_batch, S_chunk]). Cosine scores still lack the query's
        1 / norm, a positive factor per query that cannot change its ranking."""
        self._check_queries(queries)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        tensors = self.device_tensors(torch.device(device))
        for q0 in range(0, len(queries), batch_size):
            prepared = self.curvature.prepare_queries(queries.select(q0, min(q0 + batch_size, len(queries))))
            batch = to_batch(prepared, tensors)
            budget = CHUNK_ELEMENTS["cpu" if tensors.h.device.type == "cpu" else "accelerator"]
            # Per row, a chunk holds its [rows, width] products and, when the stored
            # dtype is cast, a copy of its h row.
            per_row = batch.width + (self.stored.h.shape[1] if tensors.casts else 0)
            max_tokens = chunk_tokens or max(1, budget // per_row)
            yield q0, batch, self._chunk_scores(batch, tensors, max_tokens)

    def _chunk_scores(
        self, batch: "Batch", tensors: IndexTensors, max_tokens: int
    ) -> Iterator[Tuple[Chunk, torch.Tensor]]:
        for chunk in tensors.chunks(max_tokens):
            scores = batch.chunk_scores(chunk)
            if self.normalize:
                scores.mul_(tensors.inv_norms[chunk.s0 : chunk.s1])
            yield chunk, scores

    def device_tensors(self, device: torch.device) -> IndexTensors:
        """On CPU the tensors share memory with the (possibly mapped) arrays; on
        an accelerator the index is copied there once and kept. Search runs in
        float32 (float64 for a float64 index) whatever the stored dtype."""
        key = str(device)
        if key not in self._tensors:
            dtype = torch.float64 if self.dtype == "float64" else torch.float32
            self._tensors[key] = IndexTensors(self.stored, self._inv_norms, device, dtype)
        return self._tensors[key]

    def _check_queries(self, queries: FactoredGradients) -> None:
        got = (queries.width, queries.n_tags, queries.n_dense)
        want = self.stored.shape
        if got != want:
            raise ValueError(f"query (E, C, D) = {got} but the index has {want}")

    def to_disk(self, path: Union[str, Path]) -> None:
        """Write a directory of .npy arrays and JSON, atomically (`index_storage`)."""
        index_storage.write_dir(self.parts(), path)

    @classmethod
    def from_disk(cls, path: Union[str, Path], mmap: bool = True) -> "SegmentIndex":
        """Read a directory written by `to_disk`, its arrays memory-mapped if `mmap`."""
        return cls.from_parts(index_storage.read_dir(path, mmap))

    def to_bytes(self) -> bytes:
        return index_storage.to_bytes(self.parts())

    @classmethod
    def from_bytes(cls, data: bytes) -> "SegmentIndex":
        return cls.from_parts(index_storage.from_bytes(data))

    def parts(self) -> IndexParts:
        """What `index_storage` writes of this index."""
        windows = (self.windows.tags, self.windows.bounds) if self.windows is not None else None
        return IndexParts(self.stored, self.norms, self.metadata, self.curvature.to_state(), self.normalize, windows)

    @classmethod
    def from_parts(cls, parts: IndexParts) -> "SegmentIndex":
        config, arrays = parts.curvature
        curvature = CURVATURES[config["name"]].from_state(config, arrays)
        windows = WindowLabels(*parts.windows) if parts.windows is not None else None
        return cls(parts.stored, parts.norms, parts.metadata, curvature, parts.normalize, windows)


def merge_top(
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


def top_k_results(
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
