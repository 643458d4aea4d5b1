"""Labelled segments of sentences and what influence needs of them: the closed-form
segment-loss gradients (factored, for the index), the autograd reference they are tested
against, segment losses, token marginals and the mean sentence NLL of the head.

A segment S = [start, end) of a labelled sentence; its loss is
l_S = -log p(y_S | y_outside, x) (DESIGN.md section 4). By the Markov property it depends
only on the window from the nearest known label left of S to the nearest known label
right of it, which is what the gradients run the chain over.
"""

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, cast

import numpy
import torch

from ..exceptions import DataError
from ..ner import crf
from ..ner.bridge import LabelledBatch, chain_at, flat_head, head_layout
from ..ner.tagger import CRFEntityRecognizer
from .gradients import FactoredGradients, WindowLabels


class Segment(NamedTuple):
    """Tokens [start, end) of the `doc_index`-th sentence of a batch."""

    doc_index: int
    start: int
    end: int


def padded_tags(tags: Sequence[Sequence[int]]) -> torch.Tensor:
    """Tag-id rows as one [B, L] tensor, padded with -1."""
    return torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(list(t), dtype=torch.long) for t in tags], batch_first=True, padding_value=-1
    )


def segment_gradients(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    segments: Sequence[Segment],
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float64,
) -> FactoredGradients:
    """Closed-form gradients of l_S = -log p(y_S | y_outside, x) for each segment.

    With q the marginals when only the labels outside S are clamped and q* those when
    all labels are (one-hot where known), r_t = q_t - q*_t, and
        dl/d[W|b] = sum_t r_t [h_t, 1]^T,  dl/dT = sum_t (xi_t - xi*_t),
        dl/dstart = r_0,  dl/dend = r_n-1        (DESIGN.md section 4).
    By the Markov property only the window from the nearest known label left of S to the
    nearest known label right of it matters: the chain is run over that window alone,
    the clamped neighbours folded into its start/end scores as T[y_a-1, :] and T[:, y_b].
    r_t is zero outside the window, so a segment keeps only its window's rows (S itself
    when the neighbours' labels are known). Computed in float64 by default: r = q - q*
    subtracts probabilities close to 1, where float32 loses three digits.
    """
    layout = head_layout(ner)
    theta = flat_head(ner, dtype)
    windows = [_window(batch, s) for s in segments]
    if not windows:
        return FactoredGradients(
            numpy.zeros((0, layout.width), "float32"),
            numpy.zeros((0, layout.n_tags), "float32"),
            numpy.zeros(1, "int64"),
            numpy.zeros((0, layout.n_dense), "float32"),
        )
    # By window length, so that a chain batch runs as many steps as its windows need.
    order = sorted(range(len(windows)), key=lambda i: windows[i].hi - windows[i].lo)
    parts = []
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(order), batch_size):
            chunk = [windows[i] for i in order[first : first + batch_size]]
            parts.append(_window_gradients(ner, batch, chunk, theta))
    return FactoredGradients.concat(parts).take(numpy.argsort(order))


class _Window(NamedTuple):
    doc_index: int
    lo: int  # window [lo, hi) = the segment, widened over unknown labels
    hi: int
    start: int  # the segment [start, end)
    end: int
    left: int  # known tag at lo - 1, or -1 at the sentence start
    right: int  # known tag at hi, or -1 at the sentence end


def _window(batch: LabelledBatch, segment: Segment) -> _Window:
    tags = batch.tags[segment.doc_index]
    if not 0 <= segment.start < segment.end <= len(tags):
        raise DataError(f"Segment {segment} is outside its sentence of {len(tags)} tokens")
    if any(t < 0 for t in tags[segment.start : segment.end]):
        raise DataError(f"Segment {segment} has tokens without a known label")
    lo, hi = segment.start, segment.end
    while lo > 0 and tags[lo - 1] < 0:
        lo -= 1
    while hi < len(tags) and tags[hi] < 0:
        hi += 1
    left = tags[lo - 1] if lo > 0 else -1
    right = tags[hi] if hi < len(tags) else -1
    return _Window(segment.doc_index, lo, hi, segment.start, segment.end, left, right)


def _window_scores(
    ner: CRFEntityRecognizer,
    features: Sequence[torch.Tensor],
    lefts: torch.Tensor,
    rights: torch.Tensor,
    flat: torch.Tensor,
) -> crf.ChainScores:
    """Constrained chain scores over segment windows (features [n, E] each) under head
    parameters `flat`, the known neighbour tags (`lefts`/`rights`, -1 at a sentence
    edge) folded into the start/end scores as T[left, :] and T[:, right]. Pass no
    constraints to the recursions: they are applied here."""
    scores = crf.constrain(chain_at(ner, features, flat), ner.constraints)
    at_start, at_end = (lefts < 0).unsqueeze(1), (rights < 0).unsqueeze(1)
    return scores._replace(
        start=torch.where(at_start, scores.start, scores.transitions[lefts.clamp(min=0)]),
        end=torch.where(at_end, scores.end, scores.transitions[:, rights.clamp(min=0)].T),
    )


def segment_windows(batch: LabelledBatch, segments: Sequence[Segment]) -> List[Tuple[int, int]]:
    """Each segment's window [lo, hi) in its sentence: the token rows its gradient's
    factors (`segment_gradients`) belong to."""
    return [(w.lo, w.hi) for w in (_window(batch, s) for s in segments)]


def window_labels(batch: LabelledBatch, segments: Sequence[Segment]) -> WindowLabels:
    """The labels each segment's window loss needs, row-aligned with `segment_gradients`."""
    windows = [_window(batch, s) for s in segments]
    tags = [t for w in windows for t in batch.tags[w.doc_index][w.lo : w.hi]]
    bounds = [(w.start - w.lo, w.end - w.lo, w.left, w.right) for w in windows]
    return WindowLabels(numpy.asarray(tags, dtype="int16"), numpy.asarray(bounds, dtype="int32").reshape(-1, 4))


def window_segment_loss(
    ner: CRFEntityRecognizer, features: torch.Tensor, tags: torch.Tensor, bounds: Sequence[int], flat: torch.Tensor
) -> torch.Tensor:
    """l_S = -log p(y_S | y_outside, x) of one segment from its window alone (features
    [n, E], tags [n], bounds as in `WindowLabels`): by the Markov property, the same value
    as over the whole sentence. Differentiable in `flat`."""
    start, end, left, right = (int(b) for b in bounds)
    scores = _window_scores(ner, [features], torch.tensor([left]), torch.tensor([right]), flat)
    return crf.segment_nll(scores, tags.unsqueeze(0), torch.tensor([start]), torch.tensor([end]))[0]


def _window_gradients(
    ner: CRFEntityRecognizer, batch: LabelledBatch, windows: List[_Window], theta: torch.Tensor
) -> FactoredGradients:
    n_rows = len(windows)
    n_tags = ner.head.n_tags
    features = [torch.as_tensor(batch.features[w.doc_index][w.lo : w.hi], dtype=theta.dtype) for w in windows]
    tags = padded_tags([batch.tags[w.doc_index][w.lo : w.hi] for w in windows])
    lefts = torch.tensor([w.left for w in windows])
    rights = torch.tensor([w.right for w in windows])
    at_start, at_end = lefts < 0, rights < 0
    # clamped neighbours become start/end scores; the real ones apply at the sentence edges
    scores = _window_scores(ner, features, lefts, rights, theta)
    inside = torch.nn.utils.rnn.pad_sequence(
        [torch.arange(w.lo, w.hi).ge(w.start) & torch.arange(w.lo, w.hi).lt(w.end) for w in windows],
        batch_first=True,
    )
    _, q, xi = crf.marginals(scores, None, crf.gold_mask(tags.masked_fill(inside, -1), n_tags))
    q_gold, xi_gold = _clamped_marginals(scores, tags, n_tags)
    r = q - q_gold
    rows = torch.arange(n_rows)
    r_first, r_last = r[:, 0], r[rows, scores.lengths - 1]
    d_trans = (xi - xi_gold).sum(dim=1)
    d_trans[rows[~at_start], lefts[~at_start], :] += r_first[~at_start]
    d_trans[rows[~at_end], :, rights[~at_end]] += r_last[~at_end]
    zero = torch.zeros_like(r_first)
    d_start = torch.where(at_start.unsqueeze(1), r_first, zero)
    d_end = torch.where(at_end.unsqueeze(1), r_last, zero)
    dense = torch.cat([d_trans.reshape(n_rows, -1), d_start, d_end], dim=1)
    h_rows = torch.cat(features).numpy()
    h_rows = numpy.hstack([h_rows, numpy.ones((len(h_rows), 1), dtype=h_rows.dtype)])
    lengths = scores.lengths
    r_rows = r[torch.arange(tags.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)]
    offsets = numpy.concatenate([[0], numpy.cumsum(lengths.numpy())]).astype("int64")
    return FactoredGradients(h_rows, r_rows.numpy(), offsets, dense.numpy())


def _clamped_marginals(scores: crf.ChainScores, tags: torch.Tensor, n_tags: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unary and pairwise marginals with every known label clamped. Windows without
    unknown labels (the usual case) are one-hot, so no chain needs running."""
    valid = tags >= 0
    padding = torch.arange(tags.shape[1]).unsqueeze(0) >= scores.lengths.unsqueeze(1)
    if not bool((valid | padding).all()):
        _, q_gold, xi_gold = crf.marginals(scores, None, crf.gold_mask(tags, n_tags))
        return q_gold, xi_gold
    q_gold = torch.nn.functional.one_hot(tags.clamp(min=0), n_tags).to(scores.emissions.dtype) * valid.unsqueeze(-1)
    xi_gold = q_gold[:, :-1, :, None] * q_gold[:, 1:, None, :]
    return q_gold, xi_gold


def segment_gradients_autograd(
    ner: CRFEntityRecognizer, batch: LabelledBatch, segments: Sequence[Segment], dtype: torch.dtype = torch.float64
) -> numpy.ndarray:
    """Reference: the same gradients by torch.autograd through the head module [S, P]."""
    head, layout = ner.head, head_layout(ner)
    names = ["weight", "bias", "transitions", "start", "end"]
    rows = []
    for segment in segments:
        params = {name: getattr(head, name).detach().to(dtype).requires_grad_() for name in names}
        features = torch.as_tensor(batch.features[segment.doc_index], dtype=dtype)
        scores = crf.ChainScores(
            torch.func.functional_call(head, params, (features,)).unsqueeze(0),
            torch.tensor([len(features)]),
            params["transitions"],
            params["start"],
            params["end"],
        )
        loss = crf.segment_nll(
            scores,
            torch.tensor([batch.tags[segment.doc_index]]),
            torch.tensor([segment.start]),
            torch.tensor([segment.end]),
            ner.constraints,
        ).sum()
        inputs = [params[name] for name in names]
        found = torch.autograd.grad(loss, inputs, allow_unused=True)  # 1-token: no transitions
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, found)]
        rows.append(layout.flatten_module(*grads).numpy())
    return numpy.stack(rows)


def token_marginals(
    ner: CRFEntityRecognizer, features: Sequence[numpy.ndarray], batch_size: int = 256
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Every token's features [N, E + 1] (bias column appended) and the model's
    unclamped marginals [N, C]: the statistics K-FAC's factors are fitted on.
    Rows come in the order of `features`."""
    layout = head_layout(ner)
    width, n_tags = layout.width, layout.n_tags
    theta = flat_head(ner, torch.float32)
    marginals: List[numpy.ndarray] = [numpy.zeros((len(x), n_tags), "float32") for x in features]
    order = sorted((i for i, x in enumerate(features) if len(x)), key=lambda i: len(features[i]))
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(order), batch_size):  # sorted by length: little padding
            chunk = order[first : first + batch_size]
            scores = chain_at(ner, [torch.as_tensor(features[i]) for i in chunk], theta)
            q = crf.unary_marginals(scores, ner.constraints)
            for row, i in enumerate(chunk):
                marginals[i] = q[row, : len(features[i])].numpy()
    if not features:
        return numpy.zeros((0, width), "float32"), numpy.zeros((0, n_tags), "float32")
    h = numpy.concatenate([numpy.hstack([x, numpy.ones((len(x), 1), x.dtype)]) for x in features])
    return h.astype("float32"), numpy.concatenate(marginals)


def mean_nll(
    ner: CRFEntityRecognizer, batch: LabelledBatch, dtype: torch.dtype = torch.float64, batch_size: int = 256
) -> Tuple[Callable[[torch.Tensor], torch.Tensor], List[Tuple[List[torch.Tensor], torch.Tensor]]]:
    """J(flat) = sum over `batch`'s sentences of -log p(y|x), divided by the number of
    sentences, as a function of the flattened head parameters (features fixed)."""
    chunks = []
    for first in range(0, len(batch.features), batch_size):
        rows = [i for i in range(first, min(first + batch_size, len(batch.features))) if len(batch.features[i])]
        if rows:
            feats = [torch.as_tensor(batch.features[i], dtype=dtype) for i in rows]
            chunks.append((feats, padded_tags([batch.tags[i] for i in rows])))
    n_sentences = sum(len(feats) for feats, _ in chunks)

    def objective(flat: torch.Tensor) -> torch.Tensor:
        total = sum(summed_nll(ner, feats, gold, flat) for feats, gold in chunks)
        return cast(torch.Tensor, total / n_sentences)

    return objective, chunks


def summed_nll(
    ner: CRFEntityRecognizer, features: Sequence[torch.Tensor], gold: torch.Tensor, flat: torch.Tensor
) -> torch.Tensor:
    """sum of -log p(y|x) over sentences (features [n, E], gold [B, L]) under `flat`."""
    return crf.nll(chain_at(ner, features, flat), gold, ner.constraints).sum()


def segment_losses(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    segments: Sequence[Segment],
    flat: Optional[torch.Tensor] = None,
    batch_size: int = 512,
) -> numpy.ndarray:
    """l_S = -log p(y_S | y_outside, x) per segment (float64), under the head's weights
    or the flattened parameters `flat`."""
    theta = flat_head(ner) if flat is None else flat.detach().to(torch.float64)
    out = numpy.empty(len(segments))
    order = sorted(range(len(segments)), key=lambda i: len(batch.tags[segments[i].doc_index]))
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(order), batch_size):  # sorted by length: little padding
            rows = order[first : first + batch_size]
            chunk = [segments[i] for i in rows]
            features = [torch.as_tensor(batch.features[s.doc_index], dtype=torch.float64) for s in chunk]
            losses = crf.segment_nll(
                chain_at(ner, features, theta),
                padded_tags([batch.tags[s.doc_index] for s in chunk]),
                torch.tensor([s.start for s in chunk]),
                torch.tensor([s.end for s in chunk]),
                ner.constraints,
            )
            out[rows] = losses.numpy()
    return out
