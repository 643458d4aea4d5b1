"""Retraining the refit head without one training segment's labels (the ground truth
`validate` compares the estimates with): the setup every estimate and retraining shares, and
one retraining by Newton steps with the removed objective's own Hessian."""

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy
import torch

from ..influence import removal
from ..influence.curvature import ExactCurvature, KFACCurvature
from ..influence.gradients import FactoredGradients, WindowLabels
from ..influence.hessian import curvature_along, segment_hessian
from ..influence.segments import Segment, segment_losses, window_labels
from ..ner import bridge, crf
from ..ner.bridge import LabelledBatch
from ..ner.tagger import CRFEntityRecognizer

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FidelitySetup:
    """The refit head and everything the estimates and the retraining share."""

    ner: CRFEntityRecognizer
    train: LabelledBatch
    train_segments: List[Segment]  # the training sample's gold entities
    test: LabelledBatch  # the dev sample labelled with the refit head's predictions
    test_segments: List[Segment]  # the entities it predicts
    l2: float
    theta: torch.Tensor  # theta*, the refit head
    data_nll: Objective  # mean sentence NLL of the training sample
    objective: Objective  # J = data_nll + l2 / 2 |theta|^2
    hessian: numpy.ndarray  # the exact Hessian of J at theta* (l2 included)
    inverse: torch.Tensor  # its inverse
    g_train: FactoredGradients
    g_test: FactoredGradients
    kfac: KFACCurvature  # fitted on the training sample's tokens
    base: numpy.ndarray  # [T] test-segment losses at theta*

    @property
    def n_sentences(self) -> int:
        return self.train.n_sentences


@dataclass
class Retrained:
    """One training segment's labels removed and the head retrained: the actual change of
    every test segment's loss [T], what the estimates' two error sources look like, and
    the refined (leverage-corrected) estimate."""

    actual: numpy.ndarray  # l_test(theta_-S) - l_test(theta*)
    along_step: numpy.ndarray  # l_test(theta* + influence step) - l_test(theta*)
    linear_response: numpy.ndarray  # g_test . (theta_-S - theta*)
    step_error: float  # |theta_-S - theta* - step| / |step|
    curvature_drop: float  # the rest's curvature along theta_-S - theta*, before / after (nan: no step)
    leverage_step: torch.Tensor  # (H - H_S / N)^-1 g_S / N, where the retraining started
    refined: numpy.ndarray  # l_test(theta* + removal.removal_step) - l_test(theta*)
    residual: float  # max |gradient| where the retraining stopped


class Refinement:
    """What `removal` needs to refine any training segment of the setup: the curvature as
    `segment_influence` keeps it (the Hessian without l2, damped by l2) and the windows."""

    def __init__(self, setup: FidelitySetup):
        layout = bridge.head_layout(setup.ner)
        undamped = setup.hessian - setup.l2 * numpy.eye(len(setup.theta))
        self.curvature = ExactCurvature(undamped, setup.l2, layout.n_tags, layout.width)
        self.windows: WindowLabels = window_labels(setup.train, setup.train_segments)


def retrain_segment(setup: FidelitySetup, column: int, refinement: Optional[Refinement] = None) -> Retrained:
    """Remove training segment `column`'s labels, retrain the head to machine precision
    and measure the test losses there and at the estimates' steps."""
    refinement = refinement or Refinement(setup)
    ner, theta, n_sentences = setup.ner, setup.theta, setup.n_sentences
    g_segment = torch.as_tensor(setup.g_train.to_dense()[column])
    removed = _segment_objective(ner, setup.train, setup.train_segments[column])
    step = setup.inverse @ g_segment / n_sentences  # the influence step
    # Newton on J - l_S / N with its exact Hessian at theta* (H - H_S / N), from that Newton
    # step: the same optimum as with H frozen, but high-leverage segments converge in a few
    # steps instead of hundreds
    segment_part = segment_hessian(ner, setup.train, setup.train_segments[column], theta)
    reduced = torch.linalg.cholesky(torch.as_tensor(setup.hessian - segment_part / n_sentences))
    leverage_step = torch.cholesky_solve(g_segment.unsqueeze(1) / n_sentences, reduced).squeeze(1)
    theta_s, residual = _newton(
        lambda t: setup.objective(t) - removed(t) / n_sentences,
        theta + leverage_step,
        lambda g: torch.cholesky_solve(g.unsqueeze(1), reduced).squeeze(1),
    )

    def test_change(at: torch.Tensor) -> numpy.ndarray:
        return segment_losses(ner, setup.test, setup.test_segments, at) - setup.base

    # how far the rest of the data's curvature along the true step falls between theta* and
    # theta_-S: any estimate from theta* with a fixed Hessian for the rest misses that part
    def rest_nll(t: torch.Tensor) -> torch.Tensor:
        return setup.data_nll(t) - removed(t) / n_sentences

    moved = theta_s - theta
    before, after = curvature_along(rest_nll, theta, moved), curvature_along(rest_nll, theta_s, moved)
    window = removal.segment_window(setup.g_train.h, setup.g_train.offsets, refinement.windows, column)
    refined_step = removal.removal_step(ner, refinement.curvature, n_sentences, window, theta)
    return Retrained(
        actual=test_change(theta_s),
        along_step=test_change(theta + step),
        linear_response=setup.g_test.to_dense() @ moved.numpy(),
        step_error=float(torch.linalg.norm(theta_s - theta - step) / torch.linalg.norm(step)),
        curvature_drop=before / after if after > 0 else math.nan,  # nan: the step vanished
        leverage_step=leverage_step,
        refined=test_change(theta + refined_step),
        residual=residual,
    )


def _newton(
    objective: Objective,
    theta: torch.Tensor,
    solve: Callable[[torch.Tensor], torch.Tensor],
    tol: float = 1e-10,
    max_iter: int = 200,
) -> Tuple[torch.Tensor, float]:
    """Minimise a strictly convex `objective` near `theta` by Newton steps with a frozen
    Hessian (`solve`: g -> H^-1 g), halving a step until the objective decreases. Stops
    at |grad| < tol or when no step decreases the objective (float64 noise floor).
    Returns theta and the final max |grad|."""
    with crf.one_thread():
        evaluate = torch.no_grad()(objective)
        value = float(evaluate(theta))
        for _ in range(max_iter):
            grad = torch.func.grad(objective)(theta)
            size = float(grad.abs().max())
            if size < tol:
                break
            direction = -solve(grad)
            step = 1.0
            while step > 1e-6:
                candidate = theta + step * direction
                candidate_value = float(evaluate(candidate))
                if candidate_value < value:
                    break
                step /= 2
            else:
                break
            theta, value = candidate, candidate_value
    return theta, size


def _segment_objective(ner: CRFEntityRecognizer, batch: LabelledBatch, segment: Segment) -> Objective:
    features = [torch.as_tensor(batch.features[segment.doc_index], dtype=torch.float64)]
    tags = torch.tensor([batch.tags[segment.doc_index]])
    start, end = torch.tensor([segment.start]), torch.tensor([segment.end])
    return lambda theta: crf.segment_nll(bridge.chain_at(ner, features, theta), tags, start, end, ner.constraints).sum()
