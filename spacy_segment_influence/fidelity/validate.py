"""Retraining-based fidelity check: how well predicted segment influence tracks the true
effect of removing a training segment's labels (DESIGN.md section 1, job 3).

With the encoder's features frozen, the head is refit to the optimum theta* of
    J(theta) = (1/N) sum_i -log p(y_i | x_i) + (l2 / 2) |theta|^2
over N training sentences. Removing segment S's labels removes l_S from sentence i's loss
(-log p(y|x) = l_S - log p(y_-S|x)), so the new optimum theta_-S minimises J - l_S / N.
The first-order prediction of the change in a test segment's loss is
    (1/N) g_test^T H^-1 g_S          (Koh & Liang 2017; Jain et al. 2022, eq. 4)
with H the exact Hessian of J; positive means the segment supported the prediction.
theta* comes from `head_fit`; each theta_-S is found by Newton iterations with H frozen at theta*, which converge to
machine precision in a few steps because H_-S differs from H by O(1/N).

`validate` = `prepare` (refit, Hessian, gradients), `estimates` (the product's
curvatures), `retrain_segment` per chosen training segment, and the comparison in
`fidelity_metrics`.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import iob_to_biluo, tags_to_entities
from tqdm import tqdm

from ..exceptions import ConfigError, DataError
from ..influence import removal
from ..influence.curvature import ExactCurvature, IdentityCurvature, KFACCurvature
from ..influence.gradients import FactoredGradients, WindowLabels
from ..influence.head_fit import fit_head
from ..influence.hessian import curvature_along, head_hessian, head_hessian_autograd, segment_hessian
from ..influence.index import SegmentIndex
from ..influence.segments import (
    LabelledBatch,
    Segment,
    labelled_batch,
    mean_nll,
    segment_gradients,
    segment_losses,
    token_marginals,
    window_labels,
)
from ..ner import bridge, crf
from ..ner.known_labels import check_known_labels
from ..ner.tagger import CRFEntityRecognizer
from .fidelity_metrics import choose_segments, compare

HessianMethod = Literal["covariance", "autograd"]

# Rough costs on this project's 2 shared CPU cores, from the runs in BENCHMARKS.md (tok2vec
# and MiniLM heads; within about 2x of each): the refit per training sentence, and one retraining.
_REFIT_S_PER_SENTENCE = 0.15
_RETRAIN_S = 30.0
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


ExtraEstimates = Callable[[FidelitySetup, Mapping[int, Retrained]], Dict[str, numpy.ndarray]]


def validate(
    nlp: Language,
    train_docs: Sequence[Doc],
    dev_docs: Sequence[Doc],
    *,
    ner_name: str = "crf_ner",
    n_train: int = 200,
    n_dev: int = 50,
    pairs: int = 400,
    n_segments: int = 20,
    l2: float = 1e-3,
    kfac_damping: float = 1e-3,
    seed: int = 0,
    show_progress: bool = True,
    hessian: HessianMethod = "covariance",
    extra_estimates: Optional[ExtraEstimates] = None,
    ner: Optional[CRFEntityRecognizer] = None,
) -> dict:
    """Correlations between predicted and actual (retrained) changes of test-segment
    losses, per method: the curvatures `exact`, `kfac` and `identity`, the paper's token
    approximation `token`, and, for the retrained segments only, `refined` (the test
    losses evaluated exactly at the leverage-corrected removal step, by the `removal`
    module, as `segment_influence` with refine = true reports them).

    nlp: a trained pipeline with the `crf_ner` component `ner_name`.
    train_docs: training docs; the first `n_train` are the sample the head is refit on.
    dev_docs: held-out docs; the entities the refit head predicts on the first `n_dev`
        are the test segments.
    ner_name: the `crf_ner` component.
    n_train, n_dev: the sample sizes.
    pairs: (test, train) pairs correlated per group.
    n_segments: training segments retrained per group: "top" (largest predicted effect)
        and "random".
    l2: the L2 damping of the refit objective (the exact curvature's damping).
    kfac_damping: the K-FAC curvature's damping.
    seed: the seed of the random group and the random pairs.
    show_progress: print the refit and show a progress bar over the retrainings.
    hessian: "covariance" (closed form, `hessian.head_hessian`) or "autograd"
        (`hessian.head_hessian_autograd`, reverse-over-reverse: minutes per 100
        sentences for a 2k head).
    extra_estimates: more methods to compare, e.g. prototypes: a function of the setup
        and the retrained segments returning predicted changes [T, S] per name (nan where
        undefined), as bench/fidelity_prototypes.py does.
    ner: the CRF head to check instead of the crf_ner component `ner_name`: a
        `segment_influence` surrogate of `ner_name` (`surrogate.py`).

    Returns `methods` (the correlations per method and group), `settings`, `pairs` (the
    (predicted, actual) points) and `diagnostics`, which split the exact estimate's
    first-order error into its two sources per group (`fidelity_metrics`)."""
    timings: Dict[str, float] = {}
    setup = prepare(
        nlp,
        train_docs,
        dev_docs,
        ner_name=ner_name,
        n_train=n_train,
        n_dev=n_dev,
        l2=l2,
        kfac_damping=kfac_damping,
        hessian=hessian,
        show_progress=show_progress,
        timings=timings,
        ner=ner,
    )
    clock = time.perf_counter()
    predicted = estimates(setup)
    timings["predictions_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    chosen = choose_segments(predicted["exact"], n_segments, seed)
    refinement = _Refinement(setup)
    columns = sorted(set(chosen["top"]) | set(chosen["random"]))
    retrained = {
        column: retrain_segment(setup, column, refinement)
        for column in tqdm(columns, desc="Retraining", disable=not show_progress)
    }
    timings["retrain_s"] = time.perf_counter() - clock
    if extra_estimates is not None:
        predicted.update(extra_estimates(setup, retrained))
    predicted["refined"] = numpy.full_like(predicted["exact"], math.nan)  # the retrained segments only
    for column, result in retrained.items():
        predicted["refined"][:, column] = result.refined
    comparison = compare(predicted, retrained, chosen, pairs, seed)
    settings = {
        "n_train": setup.n_sentences,
        "n_dev": len(setup.test.features),
        "n_test_segments": len(setup.test_segments),
        "n_train_segments": len(setup.train_segments),
        "n_retrained": len(retrained),
        "pairs": pairs,
        "l2": l2,
        "kfac_damping": kfac_damping,
        "seed": seed,
        "n_params": int(len(setup.theta)),
        "max_retrain_gradient": max(r.residual for r in retrained.values()),
        "hessian": hessian,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    return {**comparison, "settings": settings}


def estimated_seconds(n_train: int, n_segments: int) -> float:
    """A rough wall time of `validate` on 2 CPU cores: the refit grows with the training
    sample, and each of the 2 x `n_segments` retrainings costs about the same."""
    return _REFIT_S_PER_SENTENCE * n_train + _RETRAIN_S * 2 * n_segments


def prepare(
    nlp: Language,
    train_docs: Sequence[Doc],
    dev_docs: Sequence[Doc],
    *,
    ner_name: str = "crf_ner",
    n_train: int = 200,
    n_dev: int = 50,
    l2: float = 1e-3,
    kfac_damping: float = 1e-3,
    hessian: HessianMethod = "covariance",
    show_progress: bool = True,
    timings: Optional[Dict[str, float]] = None,
    ner: Optional[CRFEntityRecognizer] = None,
) -> FidelitySetup:
    """Refit the head on the training sample and compute what every estimate shares (the
    arguments as for `validate`; `timings` receives the seconds per step)."""
    if hessian not in ("covariance", "autograd"):
        raise ConfigError(f"validate: hessian must be 'covariance' or 'autograd', not {hessian!r}")
    timings = {} if timings is None else timings
    ner = ner if ner is not None else bridge.crf_component(nlp, ner_name)
    check_known_labels(list(train_docs)[:n_train], ner.labels, "validate: the training sample")
    clock = time.perf_counter()
    train = labelled_batch(nlp, ner_name, list(train_docs)[:n_train], ner=ner)
    dev_features = labelled_batch(nlp, ner_name, list(dev_docs)[:n_dev], ner=ner).features
    if not any(len(x) for x in train.features):
        raise DataError("validate: the training sample has no tokens")
    timings["features_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    data_nll, _ = mean_nll(ner, train)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        return data_nll(theta) + 0.5 * l2 * (theta * theta).sum()

    desc = f"Refitting the head on {train.n_sentences} training sentences"
    theta = fit_head(ner, train, l2, bridge.flat_head(ner), show_progress=show_progress, desc=desc).theta
    timings["refit_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    compute = head_hessian_autograd if hessian == "autograd" else head_hessian
    full_hessian = compute(ner, train, flat=theta) + l2 * numpy.eye(len(theta))
    timings["hessian_s"] = time.perf_counter() - clock
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(torch.as_tensor(full_hessian)))
    with bridge.head_at(ner, theta):
        test, test_segments = _predicted_entities(ner, dev_features, theta)
        if not test_segments:
            raise DataError("validate: the model predicts no entities on the dev sample")
        train_segments = [Segment(i, s, e) for i, tags in enumerate(train.tags) for s, e in _entities(ner, tags)]
        if not train_segments:
            raise DataError("validate: the training sample has no gold entities")
        g_test = segment_gradients(ner, test, test_segments)
        g_train = segment_gradients(ner, train, train_segments)
        kfac = KFACCurvature.from_tokens(*token_marginals(ner, train.features), g_train.dense, kfac_damping)
    return FidelitySetup(
        ner,
        train,
        train_segments,
        test,
        test_segments,
        l2,
        theta,
        data_nll,
        objective,
        full_hessian,
        inverse,
        g_train,
        g_test,
        kfac,
        segment_losses(ner, test, test_segments, theta),
    )


def estimates(setup: FidelitySetup) -> Dict[str, numpy.ndarray]:
    """Predicted changes of the test losses [T, S], (1/N) g_test^T H^-1 g_S, for the exact,
    K-FAC and identity curvatures and the token approximation."""
    ner, train, train_segments = setup.ner, setup.train, setup.train_segments
    with bridge.head_at(ner, setup.theta):
        preconditioned_test = setup.g_test.to_dense() @ setup.inverse.numpy()
        exact = preconditioned_test @ setup.g_train.to_dense().T
        # the paper's token approximation: a segment's gradient as the sum of its tokens'
        singles = [Segment(s.doc_index, t, t + 1) for s in train_segments for t in range(s.start, s.end)]
        per_token = segment_gradients(ner, train, singles).to_dense()
    first_token = numpy.cumsum([0] + [s.end - s.start for s in train_segments[:-1]])
    token = preconditioned_test @ numpy.add.reduceat(per_token, first_token, axis=0).T
    meta: List[dict] = [{}] * len(setup.g_train)
    scores = {
        name: SegmentIndex.build(setup.g_train, meta, curvature, normalize=False, dtype="float64").scores(setup.g_test)
        for name, curvature in (("kfac", setup.kfac), ("identity", IdentityCurvature()))
    }
    return {name: values / setup.n_sentences for name, values in {"exact": exact, **scores, "token": token}.items()}


class _Refinement:
    """What `removal` needs to refine any training segment of the setup: the curvature as
    `segment_influence` keeps it (the Hessian without l2, damped by l2) and the windows."""

    def __init__(self, setup: FidelitySetup):
        layout = bridge.head_layout(setup.ner)
        undamped = setup.hessian - setup.l2 * numpy.eye(len(setup.theta))
        self.curvature = ExactCurvature(undamped, setup.l2, layout.n_tags, layout.width)
        self.windows: WindowLabels = window_labels(setup.train, setup.train_segments)


def retrain_segment(setup: FidelitySetup, column: int, refinement: Optional[_Refinement] = None) -> Retrained:
    """Remove training segment `column`'s labels, retrain the head to machine precision
    and measure the test losses there and at the estimates' steps."""
    refinement = refinement or _Refinement(setup)
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


def _predicted_entities(
    ner: CRFEntityRecognizer, features: List[numpy.ndarray], theta: torch.Tensor
) -> Tuple[LabelledBatch, List[Segment]]:
    """Test segments: the entities the refit head predicts (errors included)."""
    kept = [x for x in features if len(x)]
    with torch.no_grad(), crf.one_thread():
        chains = bridge.chain_at(ner, [torch.as_tensor(x, dtype=torch.float64) for x in kept], theta)
        paths = crf.viterbi(chains, ner.constraints)
    segments = [Segment(i, s, e) for i, path in enumerate(paths) for s, e in _entities(ner, path)]
    return LabelledBatch(kept, paths), segments


def _entities(ner: CRFEntityRecognizer, tag_ids: Sequence[int]) -> List[Tuple[int, int]]:
    """(start, end) of the entities of a valid BILUO/BIO tag-id sequence (-1 = O)."""
    tags = [ner.tags[i] if i >= 0 else "O" for i in tag_ids]
    if ner.scheme == "BIO":
        tags = iob_to_biluo(tags)
    return [(start, last + 1) for _, start, last in tags_to_entities(tags)]
