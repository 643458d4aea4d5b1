"""A sampled Fisher information of the CRF head over the whole corpus: the
preconditioner of the head fit's conjugate gradients.

For a fully labelled sentence the Hessian of -log p(y | x) in the head's (log-linear)
parameters is the covariance of the sufficient statistics phi(x, y) under p(y | x). With
two paths y, y' drawn independently from p(y | x), d = (phi(y) - phi(y')) / sqrt(2) has
E[d d^T] = Cov[phi], so (1/N) sum_i d_i d_i^T is an unbiased estimate of the Hessian of
the mean NLL from every sentence of the corpus at the cost of about one pass and one
[R, P]^T [R, P] product (R: the sentences whose two draws differ; a confident sentence
draws the same path twice and adds nothing). A Hessian of a small sample of sentences is
exact for them but blind to the curvature of the rest, which on CoNLL made CG take
about 12 products per decade of the residual. For partially labelled sentences the estimate
leaves out the clamped covariance it should subtract: an upper bound there, still a
positive definite preconditioner.
"""

from typing import Sequence, Tuple

import torch

from ..ner import crf
from ..ner.layout import HeadLayout

Chunk = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # padded features [B, L, E], lengths [B], tags [B, L]


def sampled_fisher(
    chunks: Sequence[Chunk],
    layout: HeadLayout,
    constraints: crf.TagConstraints,
    theta: torch.Tensor,
    n_sentences: int,
    generator: torch.Generator,
    n_pairs: int = 1,
) -> torch.Tensor:
    """(1/N) sum over sentences of d d^T [P, P] (float64), d = (phi(y) - phi(y')) / sqrt(2)
    for two paths drawn from the head at `theta` (flat, `layout` order)."""
    emission, transitions, start, end = layout.unflatten(theta.detach().float())
    fisher = torch.zeros(layout.n_params, layout.n_params, dtype=torch.float64)
    with torch.no_grad(), crf.one_thread():
        for x, lengths, _ in chunks:
            scores = crf.ChainScores(x @ emission[:, :-1].T + emission[:, -1], lengths, transitions, start, end)
            paths = crf.sample_paths(scores, constraints, 2 * n_pairs, generator).flatten(0, 1)
            repeated = (x.repeat_interleave(2 * n_pairs, dim=0), lengths.repeat_interleave(2 * n_pairs))
            statistics = _statistics(paths, *repeated, layout.n_tags)
            rows = statistics[0::2] - statistics[1::2]
            rows = rows[rows.abs().sum(dim=1) > 0]
            fisher += (rows.T @ rows).double()
    return fisher / (2 * n_pairs * max(1, n_sentences))


def _statistics(paths: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor, n_tags: int) -> torch.Tensor:
    """phi(x, y) per sentence [B, P] for paths [B, L] (-1 past each length), in the flat
    layout: emission counts sum_t e_y_t [h_t, 1]^T, transition counts, first and last tag."""
    indicators = torch.nn.functional.one_hot(paths.clamp(min=0), n_tags).to(x.dtype) * (paths >= 0).unsqueeze(-1)
    extended = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
    emission = torch.einsum("blc,ble->bce", indicators, extended)
    transitions = torch.einsum("blc,bld->bcd", indicators[:, :-1], indicators[:, 1:])
    last = indicators[torch.arange(len(lengths)), lengths - 1]
    return torch.cat([emission.flatten(1), transitions.flatten(1), indicators[:, 0], last], dim=1)
