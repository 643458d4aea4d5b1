"""cleanlab 2.9 `cleanlab.token_classification`, fed the given token probabilities.

Level: entity classes (O, LOC, ...), B-X and I-X summed, as cleanlab's CoNLL token-classification benchmark merges
them; a `cleanlab-bio:` copy of every method runs on the BIO tags themselves (sees boundary errors, B- vs I-).

- `get_label_quality_scores`, every token_score_method x sentence_score_method: token suspicion = 1 - token quality;
  sentence = 1 - cleanlab's own sentence score; span = max suspicion over the candidate's tokens.
- `filter.find_label_issues`, every return_indices_ranked_by, default filter_by ("prune_by_noise_rate"): the
  flagged tokens first in cleanlab's order, then every other token by the same method's token quality (lowest
  first); a span or sentence takes the rank of its best-placed token.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Tuple

import numpy as np
import scores
from cleanlab.token_classification.filter import find_label_issues
from cleanlab.token_classification.rank import get_label_quality_scores
from peer_input import PeerInput

TOKEN_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
SENTENCE_METHODS = ("min", "softmin")
FILTER_BY = "prune_by_noise_rate"  # cleanlab.filter.find_label_issues' default


def detectors(data: PeerInput) -> Iterator[Tuple[str, Callable[[], Dict]]]:
    """(method name, thunk computing its scores entry), class level then BIO level."""
    views = {
        "cleanlab": (data.gold_class, data.class_probs(data.probs)),
        "cleanlab-bio": (data.gold, data.probs),
    }
    for prefix, (labels, probs) in views.items():
        for token_method in TOKEN_METHODS:
            for sentence_method in SENTENCE_METHODS:
                yield (
                    f"{prefix}:{token_method}/{sentence_method}",
                    lambda given=labels, p=probs, t=token_method, s=sentence_method: _quality(data, given, p, t, s),
                )
        for ranked_by in TOKEN_METHODS:
            yield (
                f"{prefix}:find_label_issues/{ranked_by}",
                lambda given=labels, p=probs, r=ranked_by: _issues(data, given, p, r),
            )


def _quality(data: PeerInput, labels: np.ndarray, probs: np.ndarray, token_method: str, sentence_method: str) -> Dict:
    sentence_quality, token_info = get_label_quality_scores(
        data.ragged(labels), data.ragged(probs), token_score_method=token_method, sentence_score_method=sentence_method
    )
    token_suspicion = 1.0 - np.concatenate([s.to_numpy() for s in token_info])
    return scores.entry(
        scores.span_max(data, token_suspicion), 1.0 - np.asarray(sentence_quality, dtype=np.float64), token_suspicion
    )


def _issues(data: PeerInput, labels: np.ndarray, probs: np.ndarray, ranked_by: str) -> Dict:
    issues = find_label_issues(
        [list(x) for x in data.ragged(labels)], data.ragged(probs), return_indices_ranked_by=ranked_by
    )
    flat = np.array([data.offsets[i] + j for i, j in issues], dtype=np.int64)
    _, token_info = get_label_quality_scores(data.ragged(labels), data.ragged(probs), token_score_method=ranked_by)
    quality = np.concatenate([s.to_numpy() for s in token_info])
    flagged = np.zeros(data.n_tokens, dtype=bool)
    flagged[flat] = True
    rest = np.flatnonzero(~flagged)
    rest = rest[np.argsort(quality[rest], kind="stable")]
    token_score = scores.rank_positions(np.concatenate([flat, rest]), data.n_tokens)
    return scores.from_tokens(data, token_score) | {"_info": {"flagged_tokens": int(len(flat))}}
