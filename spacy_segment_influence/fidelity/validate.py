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
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import iob_to_biluo, tags_to_entities
from tqdm import tqdm

from ..exceptions import ConfigError, DataError
from ..influence.curvature import IdentityCurvature, KFACCurvature
from ..influence.head_fit import fit_head
from ..influence.hessian import head_hessian, head_hessian_autograd
from ..influence.index import SegmentIndex
from ..influence.segments import Segment, mean_nll, segment_gradients, segment_losses, token_marginals
from ..ner import bridge, crf
from ..ner.bridge import LabelledBatch, labelled_batch
from ..ner.known_labels import check_known_labels
from ..ner.tagger import CRFEntityRecognizer
from .fidelity_metrics import choose_segments, compare
from .retrain import FidelitySetup, Refinement, Retrained, retrain_segment

HessianMethod = Literal["covariance", "autograd"]

# Rough costs on this project's 2 shared CPU cores, from the runs in BENCHMARKS.md (tok2vec
# and MiniLM heads; within about 2x of each): the refit per training sentence, and one retraining.
_REFIT_S_PER_SENTENCE = 0.15
_RETRAIN_S = 30.0


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
    options: Dict[str, Any] = {"ner_name": ner_name, "n_train": n_train, "n_dev": n_dev, "l2": l2, "ner": ner}
    options.update(kfac_damping=kfac_damping, hessian=hessian, show_progress=show_progress, timings={})
    setup = prepare(nlp, train_docs, dev_docs, **options)
    clock = time.perf_counter()
    predicted = estimates(setup)
    options["timings"]["predictions_s"] = time.perf_counter() - clock
    chosen = choose_segments(predicted["exact"], n_segments, seed)
    retrained = _retrain(setup, chosen, show_progress, options["timings"])
    predicted.update(extra_estimates(setup, retrained) if extra_estimates is not None else {})
    predicted["refined"] = _refined(predicted["exact"], retrained)
    comparison = compare(predicted, retrained, chosen, pairs, seed)
    return {**comparison, "settings": _settings(setup, retrained, {**options, "pairs": pairs, "seed": seed})}


def _refined(exact: numpy.ndarray, retrained: Mapping[int, Retrained]) -> numpy.ndarray:
    """The refined estimates [T, S], for the retrained segments only (nan elsewhere)."""
    refined = numpy.full_like(exact, math.nan)
    for column, result in retrained.items():
        refined[:, column] = result.refined
    return refined


def _retrain(
    setup: FidelitySetup, chosen: Dict[str, List[int]], show_progress: bool, timings: Dict[str, float]
) -> Dict[int, Retrained]:
    """The chosen segments (both groups), each retrained without its labels."""
    clock = time.perf_counter()
    columns = sorted(set(chosen["top"]) | set(chosen["random"]))
    refinement = Refinement(setup)
    retrained = {
        column: retrain_segment(setup, column, refinement)
        for column in tqdm(columns, desc="Retraining", disable=not show_progress)
    }
    timings["retrain_s"] = time.perf_counter() - clock
    return retrained


def _settings(setup: FidelitySetup, retrained: Mapping[int, Retrained], given: Dict[str, Any]) -> dict:
    """What `validate` reports of its run: the sample sizes, its settings and timings."""
    return {
        "n_train": setup.n_sentences,
        "n_dev": len(setup.test.features),
        "n_test_segments": len(setup.test_segments),
        "n_train_segments": len(setup.train_segments),
        "n_retrained": len(retrained),
        "pairs": given["pairs"],
        "l2": given["l2"],
        "kfac_damping": given["kfac_damping"],
        "seed": given["seed"],
        "n_params": int(len(setup.theta)),
        "max_retrain_gradient": max(r.residual for r in retrained.values()),
        "hessian": given["hessian"],
        "timings_s": {k: round(v, 2) for k, v in given["timings"].items()},
    }


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
        test, test_segments, train_segments = _segments(ner, train, dev_features, theta)
        g_test = segment_gradients(ner, test, test_segments)
        g_train = segment_gradients(ner, train, train_segments)
        kfac = KFACCurvature.from_tokens(*token_marginals(ner, train.features), g_train.dense, kfac_damping)
    base = segment_losses(ner, test, test_segments, theta)
    return FidelitySetup(
        *(ner, train, train_segments, test, test_segments, l2, theta, data_nll, objective, full_hessian, inverse),
        *(g_train, g_test, kfac, base),
    )


def _segments(
    ner: CRFEntityRecognizer, train: LabelledBatch, dev_features: List[numpy.ndarray], theta: torch.Tensor
) -> Tuple[LabelledBatch, List[Segment], List[Segment]]:
    """The dev sample labelled with the refit head's predictions, the entities it predicts
    (the test segments), and the training sample's gold entities."""
    test, test_segments = _predicted_entities(ner, dev_features, theta)
    if not test_segments:
        raise DataError("validate: the model predicts no entities on the dev sample")
    train_segments = [Segment(i, s, e) for i, tags in enumerate(train.tags) for s, e in _entities(ner, tags)]
    if not train_segments:
        raise DataError("validate: the training sample has no gold entities")
    return test, test_segments, train_segments


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
