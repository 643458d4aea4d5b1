"""Linear-chain CRF in torch: constrained forward-backward, Viterbi, marginals and
segment conditionals. Knows tensors only, nothing of spaCy.

A path y over a sentence of n tokens scores
    start[y_0] + sum_t emissions[t, y_t] + sum_t transitions[y_t, y_t+1] + end[y_n-1]
(Lafferty et al., 2001). Transitions that the tag scheme forbids (I-PER after O, ...) get
the score NEG everywhere: in the partition function, the marginals, the conditionals and
Viterbi, so the model never spends probability mass on paths it can't output.
"""

from contextlib import contextmanager
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

# Score for forbidden tags/transitions. Finite (not -inf) so an all-forbidden row gives a
# huge loss instead of NaN; exp(NEG) underflows to exactly 0 in float32 and float64.
NEG = -1e9


class TagConstraints(NamedTuple):
    """Which tags may start, end, and follow each other (bool masks)."""

    transitions: torch.Tensor  # [C, C]: allowed[i, j] means tag j may follow tag i
    start: torch.Tensor  # [C]
    end: torch.Tensor  # [C]


class ChainScores(NamedTuple):
    """Potentials of a padded batch of chains."""

    emissions: torch.Tensor  # [B, L, C]; positions >= lengths[b] are ignored
    lengths: torch.Tensor  # long [B], each >= 1
    transitions: torch.Tensor  # [C, C]
    start: torch.Tensor  # [C], or [B, C] for per-chain start scores
    end: torch.Tensor  # [C], or [B, C]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the chain recursions on one intra-op thread. They are L small steps over
    [B, C, C] tensors; splitting each step across threads only adds synchronisation,
    which on a busy 2-core machine made a step 100x slower (0.6 ms -> 78 ms)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tag_constraints(tags: Sequence[str], scheme: str) -> TagConstraints:
    """Allowed transitions of the BILUO or BIO scheme over `tags` ("O", "B-PER", ...)."""
    scheme = scheme.upper()
    if scheme not in ("BILUO", "BIO"):
        raise ValueError(f"Unknown tag scheme {scheme!r}: expected 'BILUO' or 'BIO'")
    parsed = [_split_tag(tag, scheme) for tag in tags]
    inside = ("B", "I")  # prefixes after which the entity must continue (BILUO)
    n_tags = len(tags)
    allowed = torch.zeros(n_tags, n_tags, dtype=torch.bool)
    for i, (prev_prefix, prev_label) in enumerate(parsed):
        for j, (prefix, label) in enumerate(parsed):
            continues = prefix in ("I", "L") if scheme == "BILUO" else prefix == "I"
            if scheme == "BILUO" and prev_prefix in inside:
                allowed[i, j] = continues and label == prev_label
            elif continues:
                allowed[i, j] = prev_prefix in inside and label == prev_label
            else:
                allowed[i, j] = True
    prefixes = [prefix for prefix, _ in parsed]
    if scheme == "BILUO":
        start = torch.tensor([p in ("O", "B", "U") for p in prefixes])
        end = torch.tensor([p in ("O", "L", "U") for p in prefixes])
    else:
        start = torch.tensor([p != "I" for p in prefixes])
        end = torch.ones(n_tags, dtype=torch.bool)
    return TagConstraints(allowed, start, end)


def unconstrained(n_tags: int) -> TagConstraints:
    return TagConstraints(
        torch.ones(n_tags, n_tags, dtype=torch.bool),
        torch.ones(n_tags, dtype=torch.bool),
        torch.ones(n_tags, dtype=torch.bool),
    )


def _split_tag(tag: str, scheme: str) -> Tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, label = tag.partition("-")
    if not sep or not label or prefix not in tuple(scheme):
        raise ValueError(f"Tag {tag!r} is not 'O' or a {scheme} tag like 'B-PER'")
    return prefix, label


def gold_mask(tags: torch.Tensor, n_tags: int) -> torch.Tensor:
    """[B, L] tag ids (-1 = unknown) -> [B, L, C] allowed tags (unknown allows all)."""
    known = tags >= 0
    mask = torch.nn.functional.one_hot(tags.clamp(min=0), n_tags).bool()
    return mask | ~known.unsqueeze(-1)


def constrain(scores: ChainScores, constraints: TagConstraints) -> ChainScores:
    """The same scores with forbidden transitions, starts and ends set to NEG."""
    device = scores.transitions.device
    return scores._replace(
        transitions=scores.transitions.masked_fill(~constraints.transitions.to(device), NEG),
        start=scores.start.masked_fill(~constraints.start.to(device), NEG),
        end=scores.end.masked_fill(~constraints.end.to(device), NEG),
    )


def masked_scores(
    scores: ChainScores, constraints: Optional[TagConstraints], tag_mask: Optional[torch.Tensor]
) -> ChainScores:
    if tag_mask is not None:
        scores = scores._replace(emissions=scores.emissions.masked_fill(~tag_mask, NEG))
    return constrain(scores, constraints) if constraints is not None else scores


def forward(scores: ChainScores) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log forward variables alpha [B, L, C] (frozen past each length) and log Z [B]."""
    emissions, lengths = scores.emissions, scores.lengths
    alpha = scores.start + emissions[:, 0]
    alphas = [alpha]
    for t in range(1, emissions.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + scores.transitions, dim=1)
        alpha = torch.where((t < lengths).unsqueeze(1), step + emissions[:, t], alpha)
        alphas.append(alpha)
    log_z = torch.logsumexp(alpha + scores.end, dim=1)
    return torch.stack(alphas, dim=1), log_z


def backward(scores: ChainScores) -> torch.Tensor:
    """Log backward variables beta [B, L, C]; beta = end from each last token on."""
    emissions, lengths = scores.emissions, scores.lengths
    end = scores.end.expand(emissions.shape[0], -1)
    beta = end
    betas = [beta]
    for t in range(emissions.shape[1] - 2, -1, -1):
        nxt = emissions[:, t + 1] + beta
        step = torch.logsumexp(scores.transitions + nxt.unsqueeze(1), dim=2)
        beta = torch.where((t < lengths - 1).unsqueeze(1), step, end)
        betas.append(beta)
    return torch.stack(betas[::-1], dim=1)


def log_partition(
    scores: ChainScores,
    constraints: Optional[TagConstraints] = None,
    tag_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """log sum over valid paths (restricted to `tag_mask`) of exp(score): [B]."""
    return forward(masked_scores(scores, constraints, tag_mask))[1]


def marginals(
    scores: ChainScores,
    constraints: Optional[TagConstraints] = None,
    tag_mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z [B], unary p(y_t=i) [B, L, C] and pairwise p(y_t=i, y_t+1=j) [B, L-1, C, C],
    zero at padded positions."""
    masked = masked_scores(scores, constraints, tag_mask)
    alpha, log_z = forward(masked)
    beta = backward(masked)
    in_chain = _in_chain(masked)
    zero = torch.zeros((), dtype=alpha.dtype, device=alpha.device)
    # `where`, not a product: padded logits may overflow to inf, and inf * 0 is NaN
    unary = torch.where(in_chain, torch.exp(alpha + beta - log_z[:, None, None]), zero)
    pair_logits = (
        alpha[:, :-1, :, None]
        + masked.transitions
        + (masked.emissions[:, 1:] + beta[:, 1:])[:, :, None, :]
        - log_z[:, None, None, None]
    )
    pairwise = torch.where(in_chain[:, 1:].unsqueeze(-1), torch.exp(pair_logits), zero)
    return log_z, unary, pairwise


def unary_marginals(scores: ChainScores, constraints: Optional[TagConstraints] = None) -> torch.Tensor:
    """p(y_t=i) [B, L, C] in float64, zero at padded positions, without gradients.

    The scaled forward-backward in probability space (Rabiner 1989, "A Tutorial on
    Hidden Markov Models", section V.A): each step is a [B, C] @ [C, C] product
    instead of a log-sum-exp over [B, C, C], several times faster. Emissions are
    shifted by their per-token maximum before exp, and the transitions by theirs; if
    a sentence's scores still spread so far (~700 nats) that every path underflows,
    the batch is redone in log space.
    """
    masked = masked_scores(scores, constraints, None)
    with torch.no_grad():
        emissions = masked.emissions.double()
        potentials = torch.exp(emissions - emissions.amax(dim=2, keepdim=True))
        transitions = masked.transitions.double()
        moves = torch.exp(transitions - transitions.max())
        start = torch.exp(masked.start.double() - masked.start.max()) * potentials[:, 0]
        end = torch.exp(masked.end.double() - masked.end.max()).expand_as(start)
        lengths = masked.lengths
        alpha = start / start.sum(dim=1, keepdim=True)
        alphas = [alpha]
        for t in range(1, emissions.shape[1]):
            step = (alpha @ moves) * potentials[:, t]
            alpha = torch.where((t < lengths).unsqueeze(1), step / step.sum(dim=1, keepdim=True), alpha)
            alphas.append(alpha)
        beta = end / end.sum(dim=1, keepdim=True)
        betas = [beta]
        for t in range(emissions.shape[1] - 2, -1, -1):
            step = (potentials[:, t + 1] * beta) @ moves.T
            beta = torch.where((t < lengths - 1).unsqueeze(1), step / step.sum(dim=1, keepdim=True), beta)
            betas.append(beta)
        unary = torch.stack(alphas, dim=1) * torch.stack(betas[::-1], dim=1)
        unary = torch.where(
            _in_chain(masked), unary / unary.sum(dim=2, keepdim=True), torch.zeros((), dtype=unary.dtype)
        )
    if not bool(torch.isfinite(unary).all()):
        in_float64 = ChainScores(*(x.double() if x.is_floating_point() else x for x in scores))
        _, unary, _ = marginals(in_float64, constraints)
    return unary.detach()


def summed_marginals(
    scores: ChainScores, constraints: Optional[TagConstraints] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z [B], unary marginals [B, L, C] (zero at padding) and the pairwise marginals
    summed over sentences and positions [C, C], without gradients, in the scores' dtype.

    What a gradient of the CRF likelihood needs, several times faster than `marginals`:
    the scaled forward-backward in probability space (as `unary_marginals`), whose
    pairwise marginals
        xi_t[i, j] = a_t[i] K[i, j] psi_t+1[j] b_t+1[j] / c_t+1
    (scaled forward a, backward b, normaliser c, potentials psi = exp(emissions), K =
    exp(transitions)) sum over all t and sentences to K * (A^T W), one matrix product,
    instead of a [B, L, C, C] tensor. If the scores spread so far that a step underflows,
    the batch is redone in log space."""
    masked = masked_scores(scores, constraints, None)
    with torch.no_grad():
        found = _scaled_summed_marginals(masked)
        if found is None:
            log_z, unary, pairwise = marginals(masked)
            found = log_z, unary, pairwise.sum(dim=(0, 1))
    return found


class ScaledForward(NamedTuple):
    """The scaled forward pass of a constrained chain (Rabiner 1989, section V.A)."""

    potentials: torch.Tensor  # exp(emissions - shift) [B, L, C]
    moves: torch.Tensor  # exp(transitions - top) [C, C]
    alpha: torch.Tensor  # scaled forward variables [B, L, C], each row summing to 1, frozen past each length
    scale: torch.Tensor  # their normalisers [B, L] (1 past each length)
    shift: torch.Tensor  # per-token maximum emission [B, L]
    inside: torch.Tensor  # bool [B, L]


def scaled_forward(masked: ChainScores) -> ScaledForward:
    """The scaled forward variables of already constrained scores, without gradients."""
    emissions = masked.emissions
    inside = _in_chain(masked).squeeze(-1)  # [B, L]
    shift = emissions.amax(dim=2)
    potentials = torch.exp(emissions - shift.unsqueeze(-1))
    moves = torch.exp(masked.transitions - masked.transitions.max())
    alpha = torch.exp(masked.start - masked.start.max()) * potentials[:, 0]
    norms = [alpha.sum(dim=1)]
    alphas = [alpha / norms[0].unsqueeze(1)]
    one = torch.ones((), dtype=emissions.dtype)
    for t in range(1, emissions.shape[1]):
        step = (alphas[-1] @ moves) * potentials[:, t]
        norm = torch.where(inside[:, t], step.sum(dim=1), one)
        alphas.append(torch.where(inside[:, t].unsqueeze(1), step / norm.unsqueeze(1), alphas[-1]))
        norms.append(norm)
    return ScaledForward(potentials, moves, torch.stack(alphas, dim=1), torch.stack(norms, dim=1), shift, inside)


def sample_paths(
    scores: ChainScores, constraints: Optional[TagConstraints], n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """`n_samples` paths per chain drawn from p(y | x) [B, n_samples, L] (-1 past each length):
    forward filtering, backward sampling (p(y_t | y_t+1, x) ~ alpha_t K[:, y_t+1], last token first)."""
    with torch.no_grad():
        masked = masked_scores(scores, constraints, None)
        found = scaled_forward(masked)
        lengths = masked.lengths.repeat_interleave(n_samples)
        alpha = found.alpha.repeat_interleave(n_samples, dim=0)
        end = torch.exp(masked.end - masked.end.max())
        paths = torch.full(alpha.shape[:2], -1, dtype=torch.long)
        following = torch.zeros(len(alpha), dtype=torch.long)
        for t in range(alpha.shape[1] - 1, -1, -1):
            weights = alpha[:, t] * torch.where((t < lengths - 1).unsqueeze(1), found.moves[:, following].T, end)
            drawn = torch.multinomial(weights + (t >= lengths).unsqueeze(1).to(weights.dtype), 1, generator=generator)
            following = torch.where(t < lengths, drawn.squeeze(1), following)
            paths[:, t] = torch.where(t < lengths, following, paths[:, t])
    return paths.reshape(len(scores.lengths), n_samples, -1)


def _scaled_summed_marginals(masked: ChainScores) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    lengths = masked.lengths
    potentials, moves, scaled_alpha, scale, shift, inside = scaled_forward(masked)
    n_docs, length, _ = scaled_alpha.shape
    top, start_top, end_top = masked.transitions.max(), masked.start.max(), masked.end.max()
    end = torch.exp(masked.end - end_top).expand(n_docs, -1)
    end_mass = (scaled_alpha[:, -1] * end).sum(dim=1)  # alphas stay frozen past each length
    if not bool((scale > 0).all() and (end_mass > 0).all() and torch.isfinite(scale).all()):
        return None
    log_z = (
        torch.log(scale).sum(dim=1)
        + torch.where(inside, shift, torch.zeros((), dtype=shift.dtype)).sum(dim=1)
        + (lengths - 1) * top
        + start_top
        + end_top
        + torch.log(end_mass)
    )
    last = end / end_mass.unsqueeze(1)
    betas = [last]
    for t in range(length - 2, -1, -1):
        step = ((potentials[:, t + 1] * betas[-1]) / scale[:, t + 1].unsqueeze(1)) @ moves.T
        betas.append(torch.where((t < lengths - 1).unsqueeze(1), step, last))
    scaled_beta = torch.stack(betas[::-1], dim=1)
    unary = scaled_alpha * scaled_beta * inside.unsqueeze(-1)
    pairs = inside[:, 1:]  # t + 1 inside the sentence
    weights = potentials[:, 1:] * scaled_beta[:, 1:] / scale[:, 1:].unsqueeze(-1)
    pairwise = moves * (scaled_alpha[:, :-1][pairs].T @ weights[pairs])
    return log_z, unary, pairwise


def _in_chain(scores: ChainScores) -> torch.Tensor:
    """Bool [B, L, 1]: position t lies inside sentence b."""
    positions = torch.arange(scores.emissions.shape[1], device=scores.lengths.device)
    return (positions.unsqueeze(0) < scores.lengths.unsqueeze(1)).unsqueeze(-1)


def viterbi(scores: ChainScores, constraints: Optional[TagConstraints] = None) -> List[List[int]]:
    """Highest-scoring valid path of each sentence."""
    masked = masked_scores(scores, constraints, None)
    emissions, lengths = masked.emissions, masked.lengths
    delta = masked.start + emissions[:, 0]
    backpointers = []
    for t in range(1, emissions.shape[1]):
        best, best_prev = (delta.unsqueeze(2) + masked.transitions).max(dim=1)
        active = (t < lengths).unsqueeze(1)
        delta = torch.where(active, best + emissions[:, t], delta)
        backpointers.append(best_prev)
    last = (delta + masked.end).argmax(dim=1).tolist()
    pointers = torch.stack(backpointers, dim=1).tolist() if backpointers else []
    paths = []
    for b, n_tokens in enumerate(lengths.tolist()):
        path = [last[b]]
        for t in range(n_tokens - 2, -1, -1):
            path.append(pointers[b][t][path[-1]])
        paths.append(path[::-1])
    return paths


def nll(scores: ChainScores, tags: torch.Tensor, constraints: Optional[TagConstraints] = None) -> torch.Tensor:
    """-log p(y_known | x) per sentence [B]; unknown tags (-1) are marginalised."""
    n_tags = scores.emissions.shape[-1]
    log_z = log_partition(scores, constraints)
    return log_z - log_partition(scores, constraints, gold_mask(tags, n_tags))


def segment_mask(tags: torch.Tensor, seg_start: torch.Tensor, seg_end: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: token t lies in sentence b's segment [seg_start[b], seg_end[b])."""
    positions = torch.arange(tags.shape[1], device=tags.device).unsqueeze(0)
    return (positions >= seg_start.unsqueeze(1)) & (positions < seg_end.unsqueeze(1))


def segment_nll(
    scores: ChainScores,
    tags: torch.Tensor,
    seg_start: torch.Tensor,
    seg_end: torch.Tensor,
    constraints: Optional[TagConstraints] = None,
) -> torch.Tensor:
    """-log p(y_S | labels outside S, x) for S = [seg_start, seg_end) per sentence [B].

    By the Markov property this is -log p(y_S | y_a-1, y_b, x), START/END at the edges:
    exactly the share of -log p(y|x) the segment's labels contribute, since
    -log p(y|x) = -log p(y_S | y_-S, x) - log p(y_-S | x)  (DESIGN.md section 4).
    """
    inside = segment_mask(tags, seg_start, seg_end)
    if bool((inside & (tags < 0)).any()) or bool((seg_end <= seg_start).any()):
        raise ValueError("A segment must be non-empty and have known tags on all its tokens")
    n_tags = scores.emissions.shape[-1]
    outside = gold_mask(tags.masked_fill(inside, -1), n_tags)
    log_z_outside = log_partition(scores, constraints, outside)
    return log_z_outside - log_partition(scores, constraints, gold_mask(tags, n_tags))


def tempered(scores: ChainScores, temperature: float) -> ChainScores:
    """The chain with every score divided by `temperature`: p_T(y|x) ~ exp(score(y) / T).
    The Viterbi path is the same for any T; probabilities flatten for T > 1."""
    if temperature == 1.0:
        return scores
    return scores._replace(
        emissions=scores.emissions / temperature,
        transitions=scores.transitions / temperature,
        start=scores.start / temperature,
        end=scores.end / temperature,
    )
