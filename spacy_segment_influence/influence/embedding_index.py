"""The exact search over training segments' embedding-row gradients (`layers = "embeddings"`).

A stored entry f's score against a query depends only on its rows:
v_f . sum_{row in rows(f)} F[row], with F[row] the query's summed vectors at that row
divided by hits(row), the training segments touching the row. Entries are therefore stored
in blocks of the same rows (one attribute id, or ids whose hashes collide on all rows),
contiguously, and a query reads only the blocks with a row it touches: one matrix-vector
product per large block, one gather for the small ones.

The top k need less: by Cauchy-Schwarz an entry adds at most |v_f| |G_b| in absolute value
(G_b the sum of F over its block's rows), so after reading the blocks of largest bound
first, each segment's score lies within its partial sum plus or minus the bounds of its
unread entries. Once those intervals leave few segments that can reach the k-th best,
those are scored from all their entries and the rest is never read (the threshold
algorithms of Fagin, Lotem and Naor, "Optimal aggregation algorithms for middleware",
2003). Common rows (shapes, affixes, punctuation) fill the largest blocks and, divided by
their many hits, bound least, so they are what the search skips.
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy
import srsly

from ..exceptions import ConfigError
from .embedding_gradients import EmbeddingGradients, slice_segments, summed_by
from .index import QueryResult


def ranges(starts: numpy.ndarray, stops: numpy.ndarray) -> numpy.ndarray:
    """The indices of the ranges [starts[i], stops[i]), concatenated."""
    counts = stops - starts
    return numpy.repeat(starts - numpy.cumsum(counts) + counts, counts) + numpy.arange(counts.sum())


def top_k_of(row: numpy.ndarray, k: int, ids: Optional[numpy.ndarray] = None) -> QueryResult:
    """The k most supporting (positive, best first) and k most opposing (negative, most
    negative first) of a score row; ties in the order of the ids (the row's segments,
    ascending; default 0..n-1) for supporters and in reverse for opposers."""
    ids = numpy.arange(row.size) if ids is None else ids
    order = numpy.argsort(-row, kind="stable")
    top, bottom = order[:k], order[::-1][:k]
    return QueryResult(
        [(int(ids[j]), float(row[j])) for j in top if row[j] > 0],
        [(int(ids[j]), float(row[j])) for j in bottom if row[j] < 0],
    )


class EmbeddingIndex:
    """Training segments' embedding-row gradients in blocks of the same rows, searched
    exactly (module doc). Scores are `encoder_influence.embedding_scores`' (1/hits)."""

    LARGE_BLOCK = 64  # entries; smaller blocks are scored together through one gather
    STAGES = 8  # `top_k` reads the touched entries in up to this many parts, best bound first
    CANDIDATES = 64  # segments `top_k` scores from all their entries once the bounds allow
    SLACK = 1e-4  # of each segment's total bound: float32 rounding of the products, with margin
    PRUNE_FROM = 100_000  # touched entries; below, the bounds cost more than they save (BENCHMARKS.md)

    def __init__(self, grads: EmbeddingGradients):
        # the vectors are kept once, in block order; everything else as given (for to_bytes)
        self._layout = dataclasses.replace(grads, vectors=grads.vectors[:0])
        rows = numpy.sort(grads.rows, axis=1)
        self._order = order = numpy.lexsort(rows.T[::-1])
        self._position = numpy.argsort(order)  # entry (segments' order) -> its place in block order
        rows = rows[order]
        new_block = numpy.concatenate([[True], (rows[1:] != rows[:-1]).any(axis=1)])
        self._block_start = numpy.concatenate([numpy.flatnonzero(new_block), [rows.shape[0]]])
        self._block_rows = rows[new_block]
        self._vectors = grads.vectors[order]
        self._segment = grads.segment_of_entry[order]
        self._norms = numpy.linalg.norm(self._vectors, axis=1)
        self._block_norm = numpy.zeros(len(self._block_rows), numpy.float32)  # max |v| per block
        if len(self._block_rows):
            self._block_norm = numpy.maximum.reduceat(self._norms, self._block_start[:-1])
        # rows -> the blocks having them (once per block, however often the row repeats)
        block_of = numpy.repeat(numpy.arange(len(self._block_rows)), self._block_rows.shape[1])
        pairs = numpy.unique(numpy.stack([self._block_rows.reshape(-1), block_of]), axis=1)
        self._row_blocks = pairs[1]
        self._row_start = numpy.searchsorted(pairs[0], numpy.arange(grads.n_rows + 1))
        # hits: the training segments touching each row (an entry is one segment's)
        flat = grads.rows.reshape(-1)
        touching = numpy.repeat(grads.segment_of_entry, grads.rows.shape[1])
        segment_rows = numpy.unique(numpy.stack([touching, flat]), axis=1)[1]
        self._hits = numpy.maximum(numpy.bincount(segment_rows, minlength=grads.n_rows), 1).astype(numpy.float32)

    def __len__(self) -> int:
        return len(self._layout)

    def scores(self, queries: EmbeddingGradients) -> numpy.ndarray:
        """[Q, S]: sum over rows of g_query[row] . g_train[row] / hits(row)."""
        out = numpy.zeros((len(queries), len(self)))
        for q in range(len(queries)):
            out[q] = self._block_scores(*self._touched(slice_segments(queries, q, q + 1)))
        return out

    def top_k(self, queries: EmbeddingGradients, k: int) -> List[QueryResult]:
        """Per query, the k most supporting and k most opposing segments, as `top_k_of`
        ranks `scores`' rows, reading only the blocks needed to know them (module doc)."""
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer of at least 1, got {k!r}")
        return [self._top_k(slice_segments(queries, q, q + 1), k) for q in range(len(queries))]

    def _touched(self, query: EmbeddingGradients) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """The blocks with a row the query touches (ascending) and G_b, the sum of the
        query's field F (summed vectors / hits) over each one's rows."""
        rows = query.rows.reshape(-1)
        unique, inverse = numpy.unique(rows, return_inverse=True)
        vectors = numpy.repeat(query.vectors, query.rows.shape[1], axis=0)
        field = summed_by(inverse.reshape(-1), vectors, unique.size + 1)  # last: rows it lacks
        field[:-1] /= self._hits[unique][:, None]
        blocks = numpy.unique(self._row_blocks[ranges(self._row_start[unique], self._row_start[unique + 1])])
        block_rows = self._block_rows[blocks]
        where = numpy.minimum(numpy.searchsorted(unique, block_rows), unique.size - 1)
        where[unique[where] != block_rows] = unique.size  # the zero row of `field`
        return blocks.astype(numpy.int64), field[where].sum(axis=1)

    def _block_scores(self, blocks: numpy.ndarray, summed: numpy.ndarray) -> numpy.ndarray:
        """[S]: what the entries of `blocks` (with their G_b, `summed`) add to each segment."""
        first, last = self._block_start[blocks], self._block_start[blocks + 1]
        large = (last - first) >= self.LARGE_BLOCK
        values = [self._vectors[a:b] @ g for a, b, g in zip(first[large], last[large], summed[large])]
        segments = [self._segment[a:b] for a, b in zip(first[large], last[large])]
        entries = ranges(first[~large], last[~large])
        weights = numpy.repeat(summed[~large], (last - first)[~large], axis=0)
        values.append(numpy.einsum("ew,ew->e", self._vectors[entries], weights))
        segments.append(self._segment[entries])
        return numpy.bincount(numpy.concatenate(segments), numpy.concatenate(values), minlength=len(self))

    def _top_k(self, query: EmbeddingGradients, k: int) -> QueryResult:
        blocks, summed = self._touched(query)
        sizes = self._block_start[blocks + 1] - self._block_start[blocks]
        if sizes.sum() < self.PRUNE_FROM:
            return top_k_of(self._block_scores(blocks, summed), k)
        reach = numpy.linalg.norm(summed, axis=1)
        order = numpy.argsort(-(self._block_norm[blocks] * reach), kind="stable")
        blocks, summed, reach, sizes = blocks[order], summed[order], reach[order], sizes[order]
        entries = ranges(self._block_start[blocks], self._block_start[blocks + 1])
        bounds = self._norms[entries] * numpy.repeat(reach, sizes)
        unread = numpy.bincount(self._segment[entries], bounds, minlength=len(self))
        slack = self.SLACK * unread
        read = numpy.concatenate([[0], numpy.cumsum(sizes)])
        # stages end before the block that crosses each 1/STAGES of the entries
        shares = read[-1] * numpy.arange(1, self.STAGES) / self.STAGES
        cuts = numpy.unique(numpy.searchsorted(read, shares, "right") - 1)
        cuts = cuts[(cuts > 0) & (cuts < blocks.size)]
        partial = numpy.zeros(len(self))
        for a, b in zip([0, *cuts], [*cuts, blocks.size]):
            partial += self._block_scores(blocks[a:b], summed[a:b])
            done = slice(read[a], read[b])
            unread -= numpy.bincount(self._segment[entries[done]], bounds[done], minlength=len(self))
            if b < blocks.size:
                found = self._certified(partial, numpy.maximum(unread, 0) + slack, k, blocks, summed)
                if found is not None:
                    return found
        return top_k_of(partial, k)

    def _certified(
        self, partial: numpy.ndarray, bound: numpy.ndarray, k: int, blocks: numpy.ndarray, summed: numpy.ndarray
    ) -> Optional[QueryResult]:
        """The top k when the intervals partial +- bound leave at most CANDIDATES segments
        that can be among them (scored from all their entries), else None."""
        low, high = partial - bound, partial + bound
        reach_top = numpy.partition(low, low.size - k)[low.size - k] if k < low.size else -numpy.inf
        reach_bottom = numpy.partition(high, k - 1)[k - 1] if k < high.size else numpy.inf
        candidates = numpy.flatnonzero(((high >= reach_top) & (high > 0)) | ((low <= reach_bottom) & (low < 0)))
        if candidates.size > max(self.CANDIDATES, 4 * k):
            return None
        return top_k_of(self._exact(candidates, blocks, summed), k, candidates)

    def _exact(self, segments: numpy.ndarray, blocks: numpy.ndarray, summed: numpy.ndarray) -> numpy.ndarray:
        """The scores of `segments` from all their entries (G_b of the blocks the query
        does not touch: zero)."""
        offsets = self._layout.offsets
        counts = offsets[segments + 1] - offsets[segments]
        entries = self._position[ranges(offsets[segments], offsets[segments + 1])]
        block = numpy.searchsorted(self._block_start, entries, side="right") - 1
        ordered = numpy.argsort(blocks)
        slot = ordered[numpy.minimum(numpy.searchsorted(blocks, block, sorter=ordered), blocks.size - 1)]
        weights = numpy.where((blocks[slot] == block)[:, None], summed[slot], 0)
        values = numpy.einsum("ew,ew->e", self._vectors[entries], weights)
        return numpy.bincount(numpy.repeat(numpy.arange(segments.size), counts), values, minlength=segments.size)

    def to_bytes(self) -> bytes:
        g = self._layout
        vectors = numpy.empty_like(self._vectors)
        vectors[self._order] = self._vectors
        return srsly.msgpack_dumps(
            {
                "table": g.table,
                "ids": g.ids,
                "rows": g.rows,
                "vectors": vectors,
                "offsets": g.offsets,
                "n_rows": g.n_rows,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "EmbeddingIndex":
        msg = srsly.msgpack_loads(data)
        return cls(
            EmbeddingGradients(
                numpy.asarray(msg["table"]),
                numpy.asarray(msg["ids"]),
                numpy.asarray(msg["rows"]),
                numpy.asarray(msg["vectors"]),
                numpy.asarray(msg["offsets"]),
                int(msg["n_rows"]),
            )
        )
