"""Beyond first order: what removing one training segment's labels does to a prediction.

First-order influence predicts the parameter change theta_-S - theta* as H^-1 g_S / N.
For a segment that carries much of the curvature in its own directions (a rare word, a
nearly separable head) the true change is several times larger: the objective without
the segment, J - l_S / N, has the Hessian H - H_S / N, far from H in exactly those
directions (the leave-one-out leverage of regression diagnostics, Cook & Weisberg 1982,
"Residuals and Influence in Regression"). A step that large can also flip a prediction,
which a loss change linear in the step cannot show.

`removal_step` takes one Newton step on J - l_S / N from theta* with its exact Hessian,

    delta_S = (H - H_S / N)^-1 g_S / N,

by conjugate gradients in H's eigenbasis, preconditioned with H^-1: the preconditioned operator
I - H^-1 H_S / N differs from I only in the segment's few directions, so CG needs about as
many steps. H_S enters only through Hessian-vector products of the segment's window loss.
`loss_changes` then evaluates the query's loss exactly at theta* + delta_S. `validate`
measures both against retraining (method "refined"; BENCHMARKS.md, "Fidelity").
"""

from typing import Callable, Optional, Protocol, Sequence, Tuple, cast

import numpy
import torch

from ..exceptions import IndexFormatError
from ..ner import bridge, crf
from ..ner.bridge import LabelledBatch
from ..ner.tagger import CRFEntityRecognizer
from .gradients import WindowLabels
from .index import SegmentIndex
from .segments import Segment, segment_losses, window_segment_loss


class EigenHessian(Protocol):
    """H = the damped Hessian of the mean training loss over `n_sentences` sentences,
    eigendecomposed (`ExactCurvature`)."""

    n_sentences: Optional[int]

    def eigen(self) -> Tuple[torch.Tensor, torch.Tensor]: ...


Window = Tuple[torch.Tensor, torch.Tensor, Sequence[int]]  # features [n, E], tags [n], bounds


def removal_step(
    ner: CRFEntityRecognizer,
    hessian: EigenHessian,
    n_sentences: int,
    window: Window,
    theta: torch.Tensor,
    *,
    rtol: float = 1e-10,
    max_iter: int = 500,
) -> torch.Tensor:
    """delta_S = (H - H_S / N)^-1 g_S / N for the segment of `window` (see the module
    docstring), float64 [P]: the estimated change of the head's parameters when the
    segment's labels are removed from the N = `n_sentences` training sentences."""
    features, tags, bounds = window

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return window_segment_loss(ner, features, tags, bounds, flat)

    gradient_of = torch.func.grad(loss)
    values, vectors = hessian.eigen()

    # in H's eigenbasis H is diagonal, so an iteration costs two [P, P] products, not four
    def removed_hessian(rotated: torch.Tensor) -> torch.Tensor:
        segment_part = torch.func.jvp(gradient_of, (theta,), (vectors @ rotated,))[1]
        return values * rotated - (vectors.T @ segment_part) / n_sentences

    with crf.one_thread():
        rhs = vectors.T @ gradient_of(theta) / n_sentences
        return vectors @ _conjugate_gradients(removed_hessian, rhs, lambda r: r / values, rtol, max_iter)


def _conjugate_gradients(
    apply: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    precondition: Callable[[torch.Tensor], torch.Tensor],
    rtol: float,
    max_iter: int,
) -> torch.Tensor:
    """Preconditioned CG for apply(x) = rhs (Hestenes & Stiefel 1952), started from the
    first-order step precondition(rhs). Stops early, keeping the last iterate, if the
    operator shows non-positive curvature (H - H_S / N not positive definite: only with
    too little damping)."""
    x = precondition(rhs)
    residual = rhs - apply(x)
    z = precondition(residual)
    direction = z.clone()
    rz = residual @ z
    threshold = rtol * float(torch.linalg.norm(rhs))
    for _ in range(max_iter):
        if float(torch.linalg.norm(residual)) <= threshold:
            break
        applied = apply(direction)
        curvature = direction @ applied
        if curvature <= 0:
            break
        alpha = rz / curvature
        x = x + alpha * direction
        residual = residual - alpha * applied
        z = precondition(residual)
        rz_next = residual @ z
        direction = z + (rz_next / rz) * direction
        rz = rz_next
    return x


def segment_window(h: numpy.ndarray, offsets: numpy.ndarray, labels: WindowLabels, i: int) -> Window:
    """Segment i's window from factored rows (`FactoredGradients` or an index's raw
    `StoredSegments`: h with its bias column last) and its `segments.window_labels`."""
    rows = slice(int(offsets[i]), int(offsets[i + 1]))
    features = torch.as_tensor(numpy.asarray(h[rows, :-1], dtype="float64"))
    tags = torch.as_tensor(numpy.asarray(labels.tags[rows], dtype="int64"))
    return features, tags, [int(b) for b in labels.bounds[i]]


def _check_refinable(index: SegmentIndex) -> None:
    """Only an exact-curvature index keeps raw window features (and, from this version,
    their labels and N)."""
    curvature = index.curvature
    if not curvature.refinable or getattr(curvature, "n_sentences", None) is None or index.windows is None:
        raise IndexFormatError(
            "Refined influence needs an index built with curvature 'exact' by this version "
            f"(this one: {curvature.name!r}{'' if index.windows is not None else ', no window labels'}): "
            'rebuild the index with curvature = "exact"'
        )


def loss_changes(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    segment: Segment,
    theta: torch.Tensor,
    steps: Sequence[torch.Tensor],
) -> numpy.ndarray:
    """l_q(theta + step) - l_q(theta) for the query segment `segment` of `batch`, per step:
    positive when removing the training segment would raise the query's loss (it
    supported the prediction), the sign convention of first-order influence."""
    base = segment_losses(ner, batch, [segment], theta)[0]
    return numpy.array([segment_losses(ner, batch, [segment], theta + step)[0] - base for step in steps])


class RemovalSteps:
    """removal_step for an index's segments, at the pipeline's head weights, cached: a
    training segment's step is the same for every query it shows up for."""

    def __init__(self, ner: CRFEntityRecognizer, index: SegmentIndex, max_cached: int = 1024):
        _check_refinable(index)
        self.ner = ner
        self.index = index
        self.theta = bridge.flat_head(ner)
        self.max_cached = max_cached
        self._cache: dict = {}

    def __call__(self, segment_id: int) -> torch.Tensor:
        step: Optional[torch.Tensor] = self._cache.pop(segment_id, None)
        if step is None:
            curvature = cast(EigenHessian, self.index.curvature)  # refinable: checked on creation
            assert self.index.windows is not None and curvature.n_sentences is not None
            stored = self.index.stored
            window = segment_window(stored.h, stored.offsets, self.index.windows, segment_id)
            step = removal_step(self.ner, curvature, curvature.n_sentences, window, self.theta)
        self._cache[segment_id] = step  # most recently used last
        if len(self._cache) > self.max_cached:
            del self._cache[next(iter(self._cache))]
        return step
