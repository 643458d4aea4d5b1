"""Segment gradients of the CRF head, kept factored.

A training segment's loss gradient with respect to the CRF head's emission
weights W [C, E] is a sum of outer products over the segment's tokens,
G_W = sum_t r_t h_t^T, where h_t are the token features (bias column appended)
and r_t = marginal - one-hot. The remaining head parameters (transitions, start,
end) have a small dense gradient x [D]. Keeping the factors instead of the
C*E-dimensional vectors is ~C times smaller than storing per-token gradients,
and the inner product of two segments stays cheap:

    <G_S, G_S'> = sum_{t in S, u in S'} (h_t . h_u)(r_t . r_u) + x_S . x_S'

The flattened layout used by `FactoredGradients.to_dense` is vec(G_W) row-major
([C, E], index c * E + e) followed by x, so P = C * E + D.
"""

from dataclasses import dataclass
from typing import NamedTuple, Sequence, Tuple, Union

import numpy as np

from ..ner.layout import HeadLayout


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
            raise ValueError(f"offsets end at {n_rows} but h has {self.h.shape[0]} rows and r has {self.r.shape[0]}")
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
    def layout(self) -> HeadLayout:
        """The flat layout of `to_dense`'s rows."""
        return HeadLayout(self.n_tags, self.width, self.n_dense)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, start: int, stop: int) -> "FactoredGradients":
        """Segments start:stop, sharing memory with self."""
        t0, t1 = self.offsets[start], self.offsets[stop]
        return FactoredGradients(
            self.h[t0:t1], self.r[t0:t1], self.offsets[start : stop + 1] - t0, self.dense[start:stop]
        )

    def take(self, order: Union[Sequence[int], np.ndarray]) -> "FactoredGradients":
        """Segments in the given order (a copy)."""
        ids = np.asarray(order, dtype=np.int64)
        lengths = self.lengths[ids]
        starts = np.repeat(self.offsets[ids], lengths)
        rows = starts + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return FactoredGradients(self.h[rows], self.r[rows], offsets, self.dense[ids])

    def to_dense(self) -> np.ndarray:
        """Full flattened float64 gradients [S, C * E + D]; memory N * C * E, so
        for tests, exact curvature and small data only."""
        layout = self.layout
        out = np.zeros((len(self), layout.n_params))
        if len(self):
            outer = np.einsum("nc,ne->nce", self.r.astype(np.float64), self.h.astype(np.float64))
            out[:, layout.emission] = np.add.reduceat(outer.reshape(-1, layout.n_emission), self.offsets[:-1], axis=0)
        out[:, layout.dense] = self.dense
        return out

    def squared_norms(self) -> np.ndarray:
        """Per-segment <G_S, G_S> in float64: the emission part plus |x|^2."""
        dense = self.dense.astype(np.float64)
        return self.emission_squared_norms() + np.einsum("sd,sd->s", dense, dense)

    def emission_squared_norms(self, pairs_per_chunk: int = 8192) -> np.ndarray:
        """Per-segment |G_W|^2 in float64, from the factors (no C * E vectors):
        sum over token pairs (t, u) in S of (h_t . h_u)(r_t . r_u)."""
        if self.h.shape[0] == len(self):  # one row per segment, e.g. a single-token query
            h, r = self.h.astype(np.float64), self.r.astype(np.float64)
            return np.einsum("ne,ne->n", h, h) * np.einsum("nc,nc->n", r, r)
        left, right, pair_segment = _segment_pairs(self.offsets)
        out = np.zeros(len(self))
        for p0 in range(0, left.size, pairs_per_chunk):
            i, j = left[p0 : p0 + pairs_per_chunk], right[p0 : p0 + pairs_per_chunk]
            hh = np.einsum("pe,pe->p", self.h[i].astype(np.float64), self.h[j].astype(np.float64))
            rr = np.einsum("pc,pc->p", self.r[i].astype(np.float64), self.r[j].astype(np.float64))
            out += np.bincount(pair_segment[p0 : p0 + pairs_per_chunk], hh * rr, minlength=len(self))
        return out

    def astype(self, dtype: Union[str, np.dtype]) -> "FactoredGradients":
        return FactoredGradients(self.h.astype(dtype), self.r.astype(dtype), self.offsets, self.dense.astype(dtype))

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


class WindowLabels(NamedTuple):
    """What a segment's loss depends on besides the features of its window, row-aligned
    with `segment_gradients`: the window's tags (-1 = unknown) and, per segment,
    [start, end, left, right]: the segment inside its window and the known tags next to
    the window (-1 at a sentence edge)."""

    tags: np.ndarray  # int16 [rows]
    bounds: np.ndarray  # int32 [S, 4]

    @staticmethod
    def concat(parts: Sequence["WindowLabels"]) -> "WindowLabels":
        return WindowLabels(np.concatenate([p.tags for p in parts]), np.concatenate([p.bounds for p in parts]))


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
