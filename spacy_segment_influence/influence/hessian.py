"""Hessians of the CRF head's loss with respect to its flat parameters (`HeadLayout`
order): the exact Hessian of the mean sentence NLL in closed form (what the exact
curvature stores and `validate` refits with), its autograd reference, one segment's
Hessian and the curvature along a direction.
"""

from typing import Callable, List, Optional, Tuple

import numpy
import torch

from ..ner import crf
from ..ner.bridge import LabelledBatch, chain_at, flat_head, head_layout
from ..ner.tagger import CRFEntityRecognizer
from .segments import Segment, mean_nll, padded_tags, summed_nll


def head_hessian(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    flat: Optional[torch.Tensor] = None,
    *,
    max_pairs: int = 16384,
    max_elements: int = 2 * 10**7,
) -> numpy.ndarray:
    """Exact Hessian [P, P] of the mean sentence NLL w.r.t. the flattened head parameters
    (at the head's weights, or at `flat`), features fixed, in closed form.

    The head is log-linear: the score of a path is theta . phi(x, y) with sufficient
    statistics phi = [sum_t e_{y_t} (x) [h_t, 1], sum_t e_{y_t} (x) e_{y_t+1}, e_{y_0}, e_{y_n-1}].
    So the Hessian of -log p(y_known | x) = log Z - log Z(known labels clamped) is
        Cov_{p(y|x)}[phi] - Cov_{p(y|y_known,x)}[phi]
    (the Fisher information; the second term vanishes for fully labelled sentences).
    The chain's pairwise joints follow from the marginals q_t and pair marginals xi_t:
    with M_t = xi_t / q_t (row-normalised), p(y_t, y_u) = diag(q_t) M_t ... M_u-1 for t < u,
    and triples/quadruples through one more M or xi. Start and end are handled as two
    extra emission columns (indicators of the first and last token). Same layout as
    `head_hessian_autograd` (the reference the tests compare with), but
    O(L^2 C^3 + L C^2 (E+3)^2) per sentence instead of P reverse-over-reverse passes.
    """
    theta = flat_head(ner) if flat is None else flat.detach().to(torch.float64)
    layout = head_layout(ner)
    n_tags = layout.n_tags
    ext = layout.width + 2  # [h, 1, first, last]
    ee = torch.zeros(ext, n_tags, n_tags, ext, dtype=torch.float64)  # [w, c, d, v]
    et = torch.zeros(ext, n_tags, n_tags, n_tags, dtype=torch.float64)  # [w, c, (a, b)]
    tt = torch.zeros(n_tags, n_tags, n_tags, n_tags, dtype=torch.float64)
    rows = [i for i, x in enumerate(batch.features) if len(x)]
    partial = [i for i in rows if any(t < 0 for t in batch.tags[i])]
    with torch.no_grad(), crf.one_thread():
        for sign, members, clamp in ((1.0, rows, False), (-1.0, partial, True)):
            members = sorted(members, key=lambda i: len(batch.features[i]))
            first = 0
            while first < len(members):
                last = first
                while last < len(members):  # grow the chunk while it fits the memory budget
                    longest = len(batch.features[members[last]])
                    size = last - first + 1
                    too_big = size * longest**2 > max_pairs or size * longest * n_tags**2 * ext > max_elements
                    if last > first and too_big:
                        break
                    last += 1
                chunk = members[first:last]
                first = last
                blocks = _covariance_blocks(ner, batch, chunk, theta, clamp)
                for total, block in zip((ee, et, tt), blocks):
                    total.add_(block, alpha=sign)
    n_sentences = max(1, len(rows))
    index, trans = layout.hessian_indices()
    hessian = numpy.zeros((layout.n_params, layout.n_params))
    ee_flat = ee.permute(1, 0, 2, 3).reshape(n_tags * ext, n_tags * ext).numpy()  # [(c, w), (d, v)]
    et_flat = et.permute(1, 0, 2, 3).reshape(n_tags * ext, n_tags * n_tags).numpy()
    hessian[numpy.ix_(index, index)] = ee_flat
    hessian[numpy.ix_(index, trans)] = et_flat
    hessian[numpy.ix_(trans, index)] = et_flat.T
    hessian[numpy.ix_(trans, trans)] = tt.reshape(n_tags * n_tags, n_tags * n_tags).numpy()
    return hessian / n_sentences


def _covariance_blocks(
    ner: CRFEntityRecognizer, batch: LabelledBatch, chunk: List[int], theta: torch.Tensor, clamp: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed over the chunk's sentences: Cov of the extended emission statistics
    [w, c, d, v], emission x transition [w, c, a, b] and transition x transition [a, b, c, d]."""
    features = [torch.as_tensor(batch.features[i], dtype=torch.float64) for i in chunk]
    scores = chain_at(ner, features, theta)
    n_tags = scores.emissions.shape[-1]
    mask = None
    if clamp:
        mask = crf.gold_mask(padded_tags([batch.tags[i] for i in chunk]), n_tags)
    _, q, xi = crf.marginals(scores, ner.constraints, mask)  # [B, L, C], [B, L-1, C, C]
    n_docs, length, _ = q.shape
    lengths = scores.lengths
    positions = torch.arange(length)
    x = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
    x = torch.cat(
        [
            x,
            (positions.unsqueeze(0) < lengths.unsqueeze(1)).to(x.dtype).unsqueeze(-1),
            (positions == 0).expand(n_docs, length).to(x.dtype).unsqueeze(-1),
            (positions.unsqueeze(0) == (lengths - 1).unsqueeze(1)).to(x.dtype).unsqueeze(-1),
        ],
        dim=-1,
    )  # [B, L, ext]; zero rows at padding
    ext = x.shape[-1]
    # conditional transition matrices p(y_t+1 | y_t); zero rows for impossible states
    q_left = q[:, :-1].unsqueeze(-1)
    m = torch.where(q_left > 0, xi / torch.where(q_left > 0, q_left, torch.ones_like(q_left)), torch.zeros_like(xi))
    # p_full[b, t, u] = p(y_u | y_t) for u >= t (identity at u = t), zero for u < t
    eye = torch.eye(n_tags, dtype=torch.float64)
    p_full = torch.zeros(n_docs, length, length, n_tags, n_tags, dtype=torch.float64)
    p_full[:, positions, positions] = eye
    current = eye.expand(n_docs, length, n_tags, n_tags)
    for k in range(1, length):
        current = current[:, : length - k] @ m[:, k - 1 :]
        p_full[:, positions[: length - k], positions[k:]] = current
    joint = q.unsqueeze(2).unsqueeze(-1) * p_full  # p(y_t, y_u) for u >= t: [B, t, u, c, d]
    joint2 = joint + joint.permute(0, 2, 1, 4, 3)
    joint2[:, positions, positions] -= torch.diag_embed(q)
    cov = joint2 - q[:, :, None, :, None] * q[:, None, :, None, :]
    # emission x emission: sum_{t,u} cov[t,u] (x) x_t x_u^T
    z = torch.einsum("btucd,buv->btcdv", cov, x)
    ee = (x.reshape(-1, ext).T @ z.reshape(n_docs * length, -1)).reshape(ext, n_tags, n_tags, ext)
    xi_sum = xi.sum(dim=1)  # [B, C, C]
    if length > 1:
        # p(y_s = c, y_t = a, y_t+1 = b): s <= t through joint and M_t, s > t through xi_t and p(y_s | y_t+1)
        before = torch.einsum("bstca,btaz->bscaz", joint[:, :, : length - 1], m)
        after = torch.einsum("btaz,btszc->bscaz", xi, p_full[:, 1:])
        triple = before + after - q[:, :, :, None, None] * xi_sum[:, None, None]
        et = (x.reshape(-1, ext).T @ triple.reshape(n_docs * length, -1)).reshape(ext, n_tags, n_tags, n_tags)
        # transition x transition: diag(xi_t) + sum_{t<u} xi_t[a,b] p(y_u=c | y_t+1=b) M_u[c,d] + transpose
        forward = torch.einsum("bucaz,bucd->azcd", after[:, : length - 1], m)
        tt = forward + forward.permute(2, 3, 0, 1)
        tt = tt + torch.diag_embed(xi_sum.sum(0).reshape(-1)).reshape(n_tags, n_tags, n_tags, n_tags)
        tt = tt - torch.einsum("bxy,bcd->xycd", xi_sum, xi_sum)
    else:
        et = torch.zeros(ext, n_tags, n_tags, n_tags, dtype=torch.float64)
        tt = torch.zeros(n_tags, n_tags, n_tags, n_tags, dtype=torch.float64)
    return ee, et, tt


def head_hessian_autograd(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float64,
    flat: Optional[torch.Tensor] = None,
    chunk_size: int = 128,
) -> numpy.ndarray:
    """Reference for `head_hessian`: the same matrix by reverse-over-reverse autograd,
    P backward passes over the batch (minutes per 100 sentences for a 2k head)."""
    theta = flat_head(ner, dtype) if flat is None else flat.detach().to(dtype)
    _, chunks = mean_nll(ner, batch, dtype, batch_size)
    n_sentences = sum(len(feats) for feats, _ in chunks)
    hessian = torch.zeros(len(theta), len(theta), dtype=dtype)
    with crf.one_thread():
        for feats, gold in chunks:

            def objective(params: torch.Tensor, feats=feats, gold=gold) -> torch.Tensor:
                return summed_nll(ner, feats, gold, params) / n_sentences

            # reverse-over-reverse, P rows in chunks to bound memory
            hessian += torch.func.jacrev(torch.func.grad(objective), chunk_size=chunk_size)(theta)
    return hessian.numpy()


def segment_hessian(
    ner: CRFEntityRecognizer, batch: LabelledBatch, segment: Segment, theta: torch.Tensor
) -> numpy.ndarray:
    """Hessian [P, P] of one segment's loss l_S = -log p(y_S | y_outside, x) at `theta`:
    Cov[phi | labels outside S] - Cov[phi | all known labels], i.e. the difference of the
    sentence's Hessian with S's labels and without them."""
    features, tags = [batch.features[segment.doc_index]], list(batch.tags[segment.doc_index])
    without = [-1 if segment.start <= i < segment.end else t for i, t in enumerate(tags)]
    return head_hessian(ner, LabelledBatch(features, [tags]), theta) - head_hessian(
        ner, LabelledBatch(features, [without]), theta
    )


def curvature_along(
    objective: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, direction: torch.Tensor
) -> float:
    """d^T (Hessian of `objective` at theta) d, by forward-over-reverse autograd."""
    with crf.one_thread():
        hvp = torch.func.jvp(torch.func.grad(objective), (theta,), (direction,))[1]
    return float(direction @ hvp)
