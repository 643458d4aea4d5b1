"""Fitting the CRF head on frozen features: the one optimiser behind the surrogate,
`validate`'s refit and any other refit.

With the encoder frozen, the head's training problem is the (with every label known, convex)
    J(theta) = (1/N) sum_i -log p(y_i | x_i) + (l2 / 2) |theta|^2
over the flat head parameters (`HeadLayout` order). The head is log-linear, so J's
gradient is a difference of expected sufficient statistics (marginals minus clamped
marginals, times the token features) and its Hessian their covariance. The fit uses both:

- every pass over the corpus is a streamed scaled forward-backward per chunk of sentences
  (`crf.summed_marginals`) with the gradient in closed form: no autograd graph, so memory
  stays at one chunk beyond the cached features;
- far from the optimum, L-BFGS steps in float32 (cheap: one pass each);
- near it, truncated Newton steps (Newton-CG; Nocedal and Wright, "Numerical
  Optimization", 2nd ed., algorithm 7.1): each solves H d = -g by conjugate gradients whose
  Hessian-vector products are exact over the whole corpus, a pass each on dual numbers
  through the closed-form gradient (forward-mode AD, no graph kept), preconditioned by
  the closed-form Hessian (`hessian.head_hessian`) on a small corpus and by a sampled
  Fisher of the whole corpus (`head_fisher`) on a large one;
- the products run in float32, J and the gradients in float64: CG needs the products to
  a few digits, the gradient's last digits are the answer;
- a warm start where there is one (`validate` refits from the trained head).
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.autograd import forward_ad
from tqdm import tqdm

from ..ner import crf
from ..ner.bridge import LabelledBatch, head_layout
from ..ner.layout import HeadParameters
from ..ner.tagger import CRFEntityRecognizer
from .head_fisher import sampled_fisher
from .hessian import head_hessian
from .segments import padded_tags


@dataclass
class HeadFit:
    """Where a fit stopped and what it cost."""

    theta: torch.Tensor  # float64 flat head parameters
    objective: float  # J(theta), in float64
    gradient_max: float  # max |dJ/dtheta| at theta, in float64
    passes: int  # passes over the corpus (gradients and Hessian-vector products)
    hessians: int  # preconditioner curvatures computed (a Hessian or a sampled Fisher)


class HeadPasses:
    """A corpus cut once into padded chunks of about `max_tokens` tokens (sentences
    sorted by length), and passes over it: J, its gradient and Hessian-vector products."""

    def __init__(self, ner: CRFEntityRecognizer, batch: LabelledBatch, l2: float, max_tokens: int = 16384):
        self.layout, self.constraints, self.l2 = head_layout(ner), ner.constraints, l2
        rows = [i for i, x in enumerate(batch.features) if len(x)]
        self.n_sentences = max(1, len(rows))
        self.chunks = []
        for chunk in _chunks(batch, rows, max_tokens):
            x = [torch.as_tensor(batch.features[i], dtype=torch.float32) for i in chunk]
            lengths = torch.tensor([len(batch.features[i]) for i in chunk])
            tags = padded_tags([batch.tags[i] for i in chunk])
            self.chunks.append((torch.nn.utils.rnn.pad_sequence(x, batch_first=True), lengths, tags))

    def __call__(
        self, theta: torch.Tensor, dtype: torch.dtype = torch.float64, direction: Optional[torch.Tensor] = None
    ) -> Tuple[float, torch.Tensor, Optional[torch.Tensor]]:
        """J(theta), its gradient [P] and, with a `direction` v, the Hessian-vector
        product H v [P] (all returned in float64), each chunk computed in `dtype`.

        -log p(y_known | x) = log Z - log Z(known labels clamped), so its gradient is
        E[phi] - E[phi | known labels]: with q, xi the unary and pairwise marginals and q*,
        xi* the clamped ones (one-hot for a fully labelled sentence, so no second chain
        runs), r_t = q_t - q*_t gives dW|b = sum_t r_t [h_t, 1]^T, dT = sum_t xi_t - xi*_t,
        dstart = r_0, dend = r_n-1. H v is that gradient's derivative along v: the same
        pass on dual numbers theta + eps v (forward-mode AD, no graph kept)."""
        total = 0.0
        gradient = torch.zeros(self.layout.n_params, dtype=torch.float64)
        product = torch.zeros_like(gradient) if direction is not None else None
        with torch.no_grad(), crf.one_thread(), forward_ad.dual_level():
            flat = theta.detach().to(dtype)
            if direction is not None:
                flat = forward_ad.make_dual(flat, direction.detach().to(dtype))
            params = self.layout.unflatten(flat)
            for x, lengths, tags in self.chunks:
                log_loss, chunk_gradient = self._chunk(params, x.to(dtype), lengths, tags)
                total += float(forward_ad.unpack_dual(log_loss).primal)
                primal, tangent = forward_ad.unpack_dual(chunk_gradient)
                gradient += primal.double()
                if product is not None:
                    product += tangent.double()
        theta64 = theta.detach().double()
        value = total / self.n_sentences + 0.5 * self.l2 * float(theta64 @ theta64)
        gradient = gradient / self.n_sentences + self.l2 * theta64
        if product is not None and direction is not None:
            product = product / self.n_sentences + self.l2 * direction.detach().double()
        return value, gradient, product

    def fisher(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The sampled Fisher information [P, P] at `theta` (`head_fisher`), float64."""
        return sampled_fisher(self.chunks, self.layout, self.constraints, theta, self.n_sentences, generator, _PAIRS)

    def _chunk(
        self, params: Tuple[torch.Tensor, ...], x: torch.Tensor, lengths: torch.Tensor, tags: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """A chunk's summed NLL and its gradient, flat [P]."""
        emission, transitions, start, end = params
        scores = crf.ChainScores(x @ emission[:, :-1].T + emission[:, -1], lengths, transitions, start, end)
        log_z, q, xi = crf.summed_marginals(scores, self.constraints)
        log_z_gold, q_gold, xi_gold = _clamped(scores, tags, self.constraints)
        r = q - q_gold
        emission_grad = torch.cat([torch.einsum("blc,ble->ce", r, x), r.sum(dim=(0, 1)).unsqueeze(1)], dim=1)
        first, last = r[:, 0].sum(dim=0), r[torch.arange(len(lengths)), lengths - 1].sum(dim=0)
        grads = (emission_grad, xi - xi_gold, first, last)
        return (log_z - log_z_gold).sum(), self.layout.flatten(HeadParameters(*grads))


def head_objective(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    theta: torch.Tensor,
    l2: float,
    dtype: torch.dtype = torch.float64,
    max_tokens: int = 16384,
) -> Tuple[float, torch.Tensor]:
    """J(theta) and its gradient [P] (float64), in one streamed pass over `batch`'s
    sentences (`HeadPasses`), each chunk computed in `dtype` and summed in float64."""
    value, gradient, _ = HeadPasses(ner, batch, l2, max_tokens)(theta, dtype)
    return value, gradient


def fit_head(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    l2: float,
    theta: Optional[torch.Tensor] = None,
    *,
    tol: float = 1e-9,
    max_iter: int = 1000,
    show_progress: bool = False,
    desc: str = "Fitting the CRF head",
) -> HeadFit:
    """The minimum of J on `batch` to max |gradient| < `tol` (or float64's noise floor),
    from `theta` (e.g. the trained head; zeros if None).

    Far from the optimum, L-BFGS steps with float32 passes; below max |gradient|
    `_NEWTON_FROM`, Newton-CG steps (float64 gradients, float32 Hessian-vector products)
    preconditioned by `_curvature` (exact Hessian or sampled Fisher, computed once at
    the hand-over). A progress bar shows J and max |gradient| per pass."""
    theta = torch.zeros(head_layout(ner).n_params, dtype=torch.float64) if theta is None else theta.double()
    passes = HeadPasses(ner, batch, l2)
    done = [0]  # passes (a disabled progress bar counts nothing)
    with tqdm(desc=desc, unit="pass", disable=not show_progress) as progress:

        def evaluate(
            theta: torch.Tensor, dtype: torch.dtype = torch.float64, direction: Optional[torch.Tensor] = None
        ) -> Tuple[float, torch.Tensor, Optional[torch.Tensor]]:
            found = passes(theta, dtype, direction)
            done[0] += 1
            progress.update()
            if direction is None:
                progress.set_postfix(J=f"{found[0]:.9f}", grad=f"{float(found[1].abs().max()):.1e}", refresh=False)
            return found

        theta = _lbfgs(lambda t: evaluate(t, torch.float32)[:2], theta, max(tol, _NEWTON_FROM), max_iter)
        value, gradient, _ = evaluate(theta)
        hessians = 0
        if float(gradient.abs().max()) >= tol:
            cholesky = _damped_cholesky(_curvature(ner, batch, passes, theta), l2)
            hessians = 1
            theta, value, gradient = _newton_cg(evaluate, theta, value, gradient, cholesky, tol, max_iter)
    return HeadFit(theta, value, float(gradient.abs().max()), done[0], hessians)


# float32 L-BFGS hands over to Newton-CG below this max |gradient|
_NEWTON_FROM = 1e-2
# L-BFGS pairs kept
_MEMORY = 20
# pairs of paths drawn per sentence for the sampled Fisher
_PAIRS = 4
# the preconditioner is the exact Hessian up to this many sentences, the sampled Fisher above
_EXACT_UP_TO = 500
# the exact Hessian's chunks, small: the fit's memory stays near the cached features'
_HESSIAN_CHUNKS = {"max_pairs": 2048, "max_elements": 2 * 10**6}
# CG iterations per Newton step at most
_MAX_CG = 200
# CG's relative residual is not asked below float32 products' resolution
_MIN_FORCING = 1e-5
# a step this short changes J by no more than rounding
_MIN_STEP = 1e-10

Evaluate = Callable[..., Tuple[float, torch.Tensor, Optional[torch.Tensor]]]


def _newton_cg(
    evaluate: Evaluate,
    theta: torch.Tensor,
    value: float,
    gradient: torch.Tensor,
    cholesky: torch.Tensor,
    tol: float,
    max_iter: int,
) -> Tuple[torch.Tensor, float, torch.Tensor]:
    """Truncated Newton steps to max |gradient| < `tol`: each solves H d = -g by CG with
    exact Hessian-vector products (float32 passes) preconditioned by the Cholesky factor,
    to a relative residual of min(0.5, sqrt |g|) (superlinear convergence, Nocedal and
    Wright theorem 7.2) but no smaller than the step needs to pass `tol`."""

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r.unsqueeze(1), cholesky).squeeze(1)

    for _ in range(max_iter):
        size = float(gradient.abs().max())
        if size < tol:
            break
        forcing = max(min(0.5, float(torch.linalg.norm(gradient)) ** 0.5), 0.3 * tol / size, _MIN_FORCING)

        def product(v: torch.Tensor, at: torch.Tensor = theta) -> torch.Tensor:
            _, _, hv = evaluate(at, torch.float32, v)
            assert hv is not None  # a pass given a direction returns H v
            return hv

        direction = _conjugate_gradients(product, gradient, precondition, forcing)
        found = _line_search(lambda t: evaluate(t)[:2], theta, value, gradient, direction, 1.0)
        if found is None:
            break  # no step decreases J or the gradient: float64's noise floor
        theta, value, gradient = found
    return theta, value, gradient


def _conjugate_gradients(
    product: Callable[[torch.Tensor], torch.Tensor],
    gradient: torch.Tensor,
    precondition: Callable[[torch.Tensor], torch.Tensor],
    forcing: float,
) -> torch.Tensor:
    """d with |H d + g| <= forcing |g| by preconditioned CG (Nocedal and Wright, algorithm
    5.3), stopped where H has non-positive curvature along the search direction (partially
    labelled sentences make J non-convex): then the steps so far, or on the first
    iteration the preconditioned steepest descent."""
    x = torch.zeros_like(gradient)
    residual = gradient.clone()  # H x + g
    z = precondition(residual)
    search, rz = -z, float(residual @ z)
    bound = forcing * float(torch.linalg.norm(gradient))
    for iteration in range(_MAX_CG):
        hp = product(search)
        curvature = float(search @ hp)
        if curvature <= 0:
            return x if iteration else search
        alpha = rz / curvature
        x, residual = x + alpha * search, residual + alpha * hp
        if float(torch.linalg.norm(residual)) <= bound:
            break
        z = precondition(residual)
        rz, previous = float(residual @ z), rz
        search = -z + (rz / previous) * search
    return x


def _lbfgs(
    evaluate: Callable[[torch.Tensor], Tuple[float, torch.Tensor]], theta: torch.Tensor, tol: float, max_iter: int
) -> torch.Tensor:
    """L-BFGS (Nocedal and Wright, algorithm 7.5) from `theta` to max |gradient| < `tol`,
    or until no step decreases J."""
    value, gradient = evaluate(theta)
    memory: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(max_iter):
        if float(gradient.abs().max()) < tol:
            break
        direction = -_solve(memory, gradient)
        if float(gradient @ direction) >= 0:  # not a descent direction: restart from steepest descent
            memory, direction = [], -gradient
        step = 1.0 if memory else min(1.0, 1.0 / float(gradient.abs().sum()))
        found = _line_search(evaluate, theta, value, gradient, direction, step)
        if found is None:
            break  # the resolution of float32 passes: Newton takes over
        memory = _remember(memory, found[0] - theta, found[2] - gradient)
        theta, value, gradient = found
    return theta


def _line_search(
    evaluate: Callable[[torch.Tensor], Tuple[float, torch.Tensor]],
    theta: torch.Tensor,
    value: float,
    gradient: torch.Tensor,
    direction: torch.Tensor,
    step: float,
) -> Optional[Tuple[torch.Tensor, float, torch.Tensor]]:
    """Backtracking from `step` to Armijo's decrease of J; where the decrease asked is
    under the resolution of J (near the optimum, in float64), to a smaller max |gradient|
    instead. None when no step down to `_MIN_STEP` does."""
    slope = float(gradient @ direction)
    size = float(gradient.abs().max())
    while step > _MIN_STEP:
        candidate = theta + step * direction
        candidate_value, candidate_gradient = evaluate(candidate)
        if abs(step * slope) < 1e-12 * max(1.0, abs(value)):
            if float(candidate_gradient.abs().max()) < size:
                return candidate, candidate_value, candidate_gradient
        elif candidate_value <= value + 1e-4 * step * slope:
            return candidate, candidate_value, candidate_gradient
        step /= 2
    return None


def _remember(
    memory: List[Tuple[torch.Tensor, torch.Tensor]], moved: torch.Tensor, change: torch.Tensor
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The pairs with (s, y) added if it has positive curvature, the oldest dropped."""
    if float(moved @ change) <= 1e-10 * float(torch.linalg.norm(moved) * torch.linalg.norm(change)):
        return memory
    return [*memory[1 - _MEMORY :], (moved, change)]


def _solve(memory: Sequence[Tuple[torch.Tensor, torch.Tensor]], gradient: torch.Tensor) -> torch.Tensor:
    """H^-1 g by L-BFGS's two loops (Nocedal and Wright, algorithm 7.4) from the scaled
    identity s.y / y.y I."""
    q = gradient.clone()
    alphas = []
    for moved, change in reversed(memory):
        alpha = float(moved @ q) / float(moved @ change)
        q -= alpha * change
        alphas.append(alpha)
    r = q * (float(memory[-1][0] @ memory[-1][1]) / float(memory[-1][1] @ memory[-1][1])) if memory else q
    for (moved, change), alpha in zip(memory, reversed(alphas)):
        r += moved * (alpha - float(change @ r) / float(moved @ change))
    return r


def _curvature(ner: CRFEntityRecognizer, batch: LabelledBatch, passes: HeadPasses, theta: torch.Tensor) -> torch.Tensor:
    """The preconditioner's curvature [P, P] at `theta`: the closed-form Hessian on a small
    corpus (exact: CG ends in a few products), the sampled Fisher on a large one, where the
    Hessian costs ~12 ms a sentence and one of a sample is blind to the rest's curvature."""
    if passes.n_sentences <= _EXACT_UP_TO:
        return torch.as_tensor(head_hessian(ner, batch, flat=theta, **_HESSIAN_CHUNKS))
    return passes.fisher(theta, torch.Generator().manual_seed(0))


def _damped_cholesky(curvature: torch.Tensor, damping: float) -> torch.Tensor:
    """Cholesky factor of curvature + damping I, with more damping where that is not
    positive definite (sentences with unknown labels make J non-convex)."""
    scale = float(curvature.diagonal().abs().max()) or 1.0
    while True:
        factor, info = torch.linalg.cholesky_ex(curvature + damping * torch.eye(len(curvature), dtype=curvature.dtype))
        if int(info) == 0:
            return factor
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
