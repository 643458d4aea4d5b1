"""Turns a detector's per-token (or per-span) output into the scores file's span and sentence rankings.

Convention everywhere: higher = more likely wrong. A span's score is the most suspicious of its tokens (max
suspicion, i.e. min quality); a sentence's is the most suspicious of its tokens. Flaggers give booleans, which
rank only in two blocks; `flag_then` orders inside each block by a graded score, so that AP is defined without an
arbitrary tie order.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from peer_input import PeerInput


def span_max(data: PeerInput, token_scores: np.ndarray) -> np.ndarray:
    """Max over each candidate's tokens."""
    return np.array([token_scores[rows].max() for rows in data.candidate_token_rows()], dtype=np.float64)


def sentence_max(data: PeerInput, token_scores: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(np.asarray(token_scores, dtype=np.float64), data.offsets[:-1])


def flag_then(flags: np.ndarray, graded: np.ndarray) -> np.ndarray:
    """Lexicographic (flag, graded) as one float: every flagged item above every unflagged one."""
    keys = np.lexsort((np.asarray(graded, dtype=np.float64), np.asarray(flags, dtype=np.float64)))
    return _dense_rank(np.column_stack([flags, graded]).astype(np.float64), keys)


def rank_positions(order: np.ndarray, n: int) -> np.ndarray:
    """Score n - position for a ranked list of item indices (first = most suspicious = n)."""
    score = np.zeros(n, dtype=np.float64)
    score[np.asarray(order, dtype=np.int64)] = n - np.arange(len(order))
    return score


def below(first: np.ndarray, has_first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """Items with `has_first` ranked by `first`, all others after them, ranked by `then`."""
    primary = np.where(has_first, first, 0.0)
    keys = np.lexsort((np.where(has_first, 0.0, then), primary, has_first.astype(np.float64)))
    return _dense_rank(np.column_stack([has_first, primary, np.where(has_first, 0.0, then)]).astype(float), keys)


def _dense_rank(rows: np.ndarray, ascending_order: np.ndarray) -> np.ndarray:
    """1-based dense rank of rows already sorted by `ascending_order`; equal rows share a rank."""
    sorted_rows = rows[ascending_order]
    new_group = np.ones(len(rows), dtype=bool)
    new_group[1:] = np.any(sorted_rows[1:] != sorted_rows[:-1], axis=1)
    ranks = np.empty(len(rows), dtype=np.float64)
    ranks[ascending_order] = np.cumsum(new_group)
    return ranks


def entry(span: np.ndarray, sentence: np.ndarray, token: Optional[np.ndarray] = None) -> Dict[str, List[float]]:
    out = {"span": _finite(span), "sentence": _finite(sentence)}
    if token is not None:
        out["token"] = _finite(token)
    return out


def from_tokens(data: PeerInput, token_scores: np.ndarray, keep_tokens: bool = True) -> Dict[str, List[float]]:
    """Span and sentence scores by max over tokens."""
    token_scores = np.asarray(token_scores, dtype=np.float64)
    assert token_scores.shape == (data.n_tokens,)
    return entry(span_max(data, token_scores), sentence_max(data, token_scores), token_scores if keep_tokens else None)


def _finite(values: np.ndarray) -> List[float]:
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{int(np.sum(~np.isfinite(values)))} non-finite scores")
    return values.tolist()
