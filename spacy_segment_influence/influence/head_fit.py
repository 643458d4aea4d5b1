"""Fitting the CRF head on frozen features: the one optimiser behind the surrogate,
`validate`'s refit and any other refit.

With the encoder frozen, the head's training problem is the (with every label known, convex)
    J(theta) = (1/N) sum_i -log p(y_i | x_i) + (l2 / 2) |theta|^2
over the flat head parameters (`HeadLayout` order). The head is log-linear, so J's
gradient is a difference of expected sufficient statistics (marginals minus clamped
marginals, times the token features) and its Hessian their covariance
(`hessian.head_hessian`). The fit uses both:

- every pass over the corpus is a streamed scaled forward-backward per chunk of sentences
  (`crf.summed_marginals`) with the gradient in closed form: no autograd graph, so memory
  stays at one chunk beyond the cached features;
- far from the optimum, L-BFGS steps (cheap: one pass each); near it, Newton steps with
  the closed-form Hessian of an evenly spread sample of the sentences (the whole corpus
  when it is small), corrected by L-BFGS pairs and damped (Levenberg-Marquardt) where J
  disagrees with the quadratic model;
- a warm start where there is one (`validate` refits from the trained head);
- the L-BFGS passes run in float32, the Newton steps' in float64 (their damping follows
  J's decrease, which near the optimum is under float32's resolution of J).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy
import torch
from tqdm import tqdm

from ..ner import crf
from ..ner.bridge import LabelledBatch, head_layout
from ..ner.tagger import CRFEntityRecognizer
from .hessian import head_hessian
from .segments import padded_tags


@dataclass
class HeadFit:
    """Where a fit stopped and what it cost."""

    theta: torch.Tensor  # float64 flat head parameters
    objective: float  # J(theta), in float64
    gradient_max: float  # max |dJ/dtheta| at theta, in float64
    passes: int  # passes over the corpus
    hessians: int  # Hessians computed (of samples or the whole corpus)


def head_objective(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    theta: torch.Tensor,
    l2: float,
    dtype: torch.dtype = torch.float64,
    max_tokens: int = 16384,
) -> Tuple[float, torch.Tensor]:
    """J(theta) and its gradient [P] (float64), in one streamed pass over `batch`'s
    sentences (chunks of about `max_tokens` padded tokens, sorted by length), each chunk
    computed in `dtype` and summed in float64.

    -log p(y_known | x) = log Z - log Z(known labels clamped), so its gradient is
    E[phi] - E[phi | known labels]: with q, xi the unary and pairwise marginals and q*, xi*
    the clamped ones (one-hot for a fully labelled sentence, so no second chain runs),
    r_t = q_t - q*_t gives dW|b = sum_t r_t [h_t, 1]^T, dT = sum_t xi_t - xi*_t,
    dstart = r_0, dend = r_n-1."""
    layout = head_layout(ner)
    rows = [i for i, x in enumerate(batch.features) if len(x)]
    total = 0.0
    gradient = torch.zeros(layout.n_params, dtype=torch.float64)
    emission_grad, trans_grad, start_grad, end_grad = layout.unflatten(gradient)
    params = layout.unflatten(theta.detach().to(dtype))
    with torch.no_grad(), crf.one_thread():
        for chunk in _chunks(batch, rows, max_tokens):
            x = torch.nn.utils.rnn.pad_sequence(
                [torch.as_tensor(batch.features[i]).to(dtype) for i in chunk], batch_first=True
            )
            lengths = torch.tensor([len(batch.features[i]) for i in chunk])
            tags = padded_tags([batch.tags[i] for i in chunk])
            scores = crf.ChainScores(x @ params.emission[:, :-1].T + params.emission[:, -1], lengths, *params[1:])
            log_z, q, xi = crf.summed_marginals(scores, ner.constraints)
            log_z_gold, q_gold, xi_gold = _clamped(scores, tags, ner.constraints)
            total += float((log_z - log_z_gold).double().sum())
            r = q - q_gold
            emission_grad[:, :-1] += torch.einsum("blc,ble->ce", r, x).double()
            emission_grad[:, -1] += r.sum(dim=(0, 1)).double()
            trans_grad += (xi - xi_gold).double()
            start_grad += r[:, 0].sum(dim=0).double()
            end_grad += r[torch.arange(len(chunk)), lengths - 1].sum(dim=0).double()
    n_sentences = max(1, len(rows))
    theta64 = theta.detach().double()
    value = total / n_sentences + 0.5 * l2 * float(theta64 @ theta64)
    return value, gradient / n_sentences + l2 * theta64


def fit_head(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    l2: float,
    theta: Optional[torch.Tensor] = None,
    *,
    tol: float = 1e-9,
    hessian_sample: int = 2000,
    max_iter: int = 500,
    show_progress: bool = False,
    desc: str = "Fitting the CRF head",
) -> HeadFit:
    """The minimum of J on `batch` to max |gradient| < `tol` (or float64's noise floor),
    from `theta` (e.g. the trained head; zeros if None).

    Far from the optimum, where J is far from quadratic, L-BFGS steps with closed-form
    gradients in float32 (each a pass over the corpus, no Hessian). Once max |gradient|
    is under 1e-2, Newton steps with the closed-form Hessian of up to
    `hessian_sample` evenly spread sentences (the exact Hessian below that), corrected by
    L-BFGS pairs and damped (Levenberg-Marquardt) where J disagrees with the model, in
    float64. A progress bar shows J and max |gradient| per pass."""
    rows = [i for i, x in enumerate(batch.features) if len(x)]
    theta = torch.zeros(head_layout(ner).n_params, dtype=torch.float64) if theta is None else theta.double()
    state = _State(ner, batch, l2, tqdm(desc=desc, unit="pass", disable=not show_progress))
    with state.progress:
        value, gradient = state.evaluate(theta)
        memory: List[Tuple[torch.Tensor, torch.Tensor]] = []
        # L-BFGS with Armijo backtracking while far from the optimum
        for _ in range(max_iter):
            if float(gradient.abs().max()) < _NEWTON_FROM:
                break
            direction = -_solve(None, memory, gradient)
            slope = float(gradient @ direction)
            if slope >= 0:  # not a descent direction: restart from steepest descent
                memory, direction = [], -gradient
                slope = float(gradient @ direction)
            step = 1.0 if memory else min(1.0, 1.0 / float(gradient.abs().sum()))
            while True:
                candidate = theta + step * direction
                candidate_value, candidate_gradient = state.evaluate(candidate)
                if candidate_value <= value + 1e-4 * step * slope or step < _MIN_STEP:
                    break
                step /= 2
            if step < _MIN_STEP:
                break  # float32's resolution: Newton takes over
            memory = _remember(memory, candidate - theta, candidate_gradient - gradient)
            theta, value, gradient = candidate, candidate_value, candidate_gradient
        theta, value, gradient = _newton(state, theta, value, gradient, rows, tol, max_iter, hessian_sample)
    return HeadFit(theta, value, float(gradient.abs().max()), state.passes, state.hessians)


class _State:
    """What a fit's passes share: the problem, the precision of the passes, the counts."""

    def __init__(self, ner: CRFEntityRecognizer, batch: LabelledBatch, l2: float, progress: tqdm):
        self.ner, self.batch, self.l2, self.progress = ner, batch, l2, progress
        self.dtype = torch.float32
        self.passes = self.hessians = 0

    def evaluate(self, theta: torch.Tensor) -> Tuple[float, torch.Tensor]:
        self.passes += 1
        value, gradient = head_objective(self.ner, self.batch, theta, self.l2, self.dtype)
        self.progress.update()
        self.progress.set_postfix(J=f"{value:.6f}", grad=f"{float(gradient.abs().max()):.1e}", refresh=False)
        return value, gradient

    def hessian(self, theta: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The Hessian of the mean NLL (without l2) over `rows`."""
        self.hessians += 1
        part = self.batch if len(rows) == self.batch.n_sentences else _subset(self.batch, rows)
        return torch.as_tensor(head_hessian(self.ner, part, flat=theta))


def _newton(
    state: _State,
    theta: torch.Tensor,
    value: float,
    gradient: torch.Tensor,
    rows: Sequence[int],
    tol: float,
    max_iter: int,
    hessian_sample: int,
) -> Tuple[torch.Tensor, float, torch.Tensor]:
    """Levenberg-Marquardt steps with the (sample) Hessian and L-BFGS corrections, to
    max |gradient| < `tol` (or float64's noise floor). The passes are float64: near the
    optimum the ratio of J's actual to predicted decrease, which sets the damping, is
    below float32's resolution of J."""
    state.dtype = torch.float64
    value, gradient = state.evaluate(theta)
    sample = _spread(rows, hessian_sample)
    curvature = state.hessian(theta, sample)
    scale = float(curvature.diagonal().max()) + state.l2
    damping = 0.0  # on top of l2: the inverse of a trust region's radius
    memory: List[Tuple[torch.Tensor, torch.Tensor]] = []  # L-BFGS pairs since the Hessian
    for _ in range(max_iter):
        size = float(gradient.abs().max())
        if size < tol:
            break
        cholesky, damped = _damped_cholesky(curvature, state.l2 + damping)
        if damped > state.l2:
            memory = []  # outside the region where the model is trusted: no secant corrections
        direction = -_solve(cholesky, memory, gradient)
        predicted = 0.5 * float(gradient @ direction)  # J's change if the model were exact
        candidate = theta + direction
        candidate_value, candidate_gradient = state.evaluate(candidate)
        ratio = (candidate_value - value) / predicted if predicted < 0 else -1.0
        if ratio > 0.75:
            damping = damping / 4 if damping > 1e-6 * scale else 0.0
        elif ratio < 0.25:
            damping = max(4 * (damped - state.l2), 1e-4 * scale)
        if candidate_value >= value:  # rejected: a shorter step next
            if damping > 1e6 * scale:  # no step decreases J: float64's noise floor
                break
            continue
        contraction = float(candidate_gradient.abs().max()) / size
        moved, change = candidate - theta, candidate_gradient - gradient
        theta, value, gradient = candidate, candidate_value, candidate_gradient
        if contraction > _SLOW_CONTRACTION and ratio < 0.25:  # a Hessian taken far from here
            curvature, memory = state.hessian(theta, sample), []
        else:
            memory = _remember(memory, moved, change)
    return theta, value, gradient


# L-BFGS hands over to Newton steps below this max |gradient|
_NEWTON_FROM = 1e-2
# a step this short changes J by no more than rounding
_MIN_STEP = 1e-10
# a step that shrinks max |gradient| by less than this factor (and J less than predicted)
# asks for a fresh Hessian
_SLOW_CONTRACTION = 0.25
# L-BFGS pairs kept (on top of the Hessian, they correct a sample Hessian's error)
_MEMORY = 20


def _remember(
    memory: List[Tuple[torch.Tensor, torch.Tensor]], moved: torch.Tensor, change: torch.Tensor
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The pairs with (s, y) added if it has positive curvature, the oldest dropped."""
    if float(moved @ change) <= 1e-10 * float(torch.linalg.norm(moved) * torch.linalg.norm(change)):
        return memory
    return [*memory[1 - _MEMORY :], (moved, change)]


def _solve(
    cholesky: Optional[torch.Tensor], memory: Sequence[Tuple[torch.Tensor, torch.Tensor]], gradient: torch.Tensor
) -> torch.Tensor:
    """H^-1 g by L-BFGS's two loops (Nocedal and Wright, algorithm 7.4), the initial matrix
    the (damped) Hessian of the Cholesky factor, or s.y / y.y I without one: the pairs
    (s, y) correct it along the directions the fit has moved in."""
    q = gradient.clone()
    alphas = []
    for moved, change in reversed(memory):
        alpha = float(moved @ q) / float(moved @ change)
        q -= alpha * change
        alphas.append(alpha)
    if cholesky is not None:
        r = torch.cholesky_solve(q.unsqueeze(1), cholesky).squeeze(1)
    elif memory:
        moved, change = memory[-1]
        r = q * (float(moved @ change) / float(change @ change))
    else:
        r = q
    for (moved, change), alpha in zip(memory, reversed(alphas)):
        r += moved * (alpha - float(change @ r) / float(moved @ change))
    return r


def _damped_cholesky(curvature: torch.Tensor, damping: float) -> Tuple[torch.Tensor, float]:
    """Cholesky factor of curvature + damping I and the damping used: more where that is
    not positive definite (sentences with unknown labels make J non-convex)."""
    scale = float(curvature.diagonal().abs().max()) or 1.0
    while True:
        factor, info = torch.linalg.cholesky_ex(curvature + damping * torch.eye(len(curvature), dtype=curvature.dtype))
        if int(info) == 0:
            return factor, damping
        damping = max(10 * damping, 1e-8 * scale)


def _clamped(
    scores: crf.ChainScores, tags: torch.Tensor, constraints: crf.TagConstraints
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z [B], unary marginals [B, L, C] and summed pairwise marginals [C, C] with
    every known label clamped. For fully labelled sentences these are the gold path's
    score and indicators, so no chain runs."""
    n_tags = scores.emissions.shape[-1]
    valid = tags >= 0
    padding = torch.arange(tags.shape[1]).unsqueeze(0) >= scores.lengths.unsqueeze(1)
    if not bool((valid | padding).all()):
        log_z, unary, pairwise = crf.marginals(scores, constraints, crf.gold_mask(tags, n_tags))
        return log_z, unary, pairwise.sum(dim=(0, 1))
    masked = crf.constrain(scores, constraints)
    gold = tags.clamp(min=0)
    unary = torch.nn.functional.one_hot(gold, n_tags).to(scores.emissions.dtype) * valid.unsqueeze(-1)
    pairwise = unary[:, :-1].flatten(0, 1).T @ unary[:, 1:].flatten(0, 1)
    last = gold[torch.arange(len(gold)), scores.lengths - 1]
    log_z = (
        (masked.emissions * unary).sum(dim=(1, 2))
        + (unary[:, :-1] @ masked.transitions * unary[:, 1:]).sum(dim=(1, 2))
        + masked.start[gold[:, 0]]
        + masked.end[last]
    )
    return log_z, unary, pairwise


def _chunks(batch: LabelledBatch, rows: Sequence[int], max_tokens: int) -> List[List[int]]:
    """Sentences sorted by length, cut where a chunk's padded size would pass `max_tokens`."""
    chunks: List[List[int]] = []
    current: List[int] = []
    for i in sorted(rows, key=lambda i: len(batch.features[i])):
        if current and (len(current) + 1) * len(batch.features[i]) > max_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    return chunks + [current] if current else chunks


def _spread(rows: Sequence[int], size: int) -> List[int]:
    """`size` of `rows`, evenly spread over the corpus (deterministic)."""
    if size >= len(rows):
        return list(rows)
    return [rows[i] for i in numpy.linspace(0, len(rows) - 1, size).round().astype(int)]


def _subset(batch: LabelledBatch, rows: Sequence[int]) -> LabelledBatch:
    return LabelledBatch([batch.features[i] for i in rows], [batch.tags[i] for i in rows])
