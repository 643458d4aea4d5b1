"""Retraining-based fidelity check: how well predicted segment influence tracks the true
effect of removing a training segment's labels (DESIGN.md section 1.3, issue 4).

With the encoder's features frozen, the head is refit to the optimum theta* of
    J(theta) = (1/N) sum_i -log p(y_i | x_i) + (l2 / 2) |theta|^2
over N training sentences. Removing segment S's labels removes l_S from sentence i's loss
(-log p(y|x) = l_S - log p(y_-S|x)), so the new optimum theta_-S minimises J - l_S / N.
The first-order prediction of the change in a test segment's loss is
    (1/N) g_test^T H^-1 g_S          (Koh & Liang 2017; Jain et al. 2022, eq. 4)
with H the exact Hessian of J; positive means the segment supported the prediction.
Each theta_-S is found by Newton iterations with H frozen at theta*, which converge to
machine precision in a few steps because H_-S differs from H by O(1/N).
"""
import math
import random
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from tqdm import tqdm

from . import bridge, crf, removal
from .bridge import LabelledBatch, Segment
from .curvature import ExactCurvature, IdentityCurvature, KFACCurvature
from .index import SegmentIndex


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
    hessian: str = "covariance",
    extra_methods: bool = True,
) -> dict:
    """Correlations between predicted and actual (retrained) changes of test-segment
    losses, for the exact, K-FAC and identity curvatures and the token approximation
    (plus, with `extra_methods`, the prototypes `ekfac` and `block`, see `_extra_predictions`;
    and, for the retrained segments only, `newton`: g_test^T (H - H_S/N)^-1 g_S / N, the
    one-step Newton estimate of theta_-S - theta* with the segment's leverage, and
    `refined`: the test losses evaluated exactly at that estimate, by the product's
    `removal` module, as `segment_influence` with refine = true reports them).

    `hessian`: "covariance" (closed form, `bridge.head_hessian`) or "autograd"
    (`bridge.head_hessian_autograd`, reverse-over-reverse: minutes per 100 sentences for a 2k head).
    The result's `diagnostics` split the first-order error into its two sources per pair group."""
    if hessian not in ("covariance", "autograd"):
        raise ValueError(f"hessian must be 'covariance' or 'autograd', not {hessian!r}")
    bridge.upstream_components(nlp, ner_name)  # a clear error for a wrong component name
    ner = nlp.get_pipe(ner_name)
    timings = {}
    clock = time.perf_counter()
    train = bridge.labelled_batch(nlp, ner_name, list(train_docs)[:n_train])
    dev_features = bridge.labelled_batch(nlp, ner_name, list(dev_docs)[:n_dev]).features
    if not any(len(x) for x in train.features):
        raise ValueError("validate: the training sample has no tokens")
    timings["features_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    data_nll, _ = bridge.mean_nll(ner, train)
    objective = _regularised(data_nll, l2)
    theta = _refit(objective, bridge.flat_head(ner), show_progress)
    timings["refit_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    full_hessian = _hessian(ner, train, theta, l2, hessian)
    timings["hessian_s"] = time.perf_counter() - clock
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(torch.as_tensor(full_hessian)))
    clock = time.perf_counter()
    with bridge.head_at(ner, theta):
        test_batch, test_segments = _predicted_entities(ner, dev_features, theta)
        if not test_segments:
            raise ValueError("validate: the model predicts no entities on the dev sample")
        train_segments = [Segment(i, s, e) for i, tags in enumerate(train.tags) for s, e in _entities(ner, tags)]
        if not train_segments:
            raise ValueError("validate: the training sample has no gold entities")
        g_test = bridge.segment_gradients(ner, test_batch, test_segments)
        g_train = bridge.segment_gradients(ner, train, train_segments)
        h, marginals = bridge.token_marginals(ner, train.features)
        kfac = KFACCurvature.fit(h, marginals, g_train.dense, kfac_damping)
        predicted = _predictions(ner, train, g_test, g_train, train_segments, inverse.numpy(), kfac)
        if extra_methods:
            predicted.update(_extra_predictions(ner, g_test, g_train, full_hessian, l2, kfac))
    timings["predictions_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    n_sentences = train.n_sentences
    predicted = {name: scores / n_sentences for name, scores in predicted.items()}
    chosen = _choose_segments(predicted["exact"], n_segments, seed)
    g_train_dense = torch.as_tensor(g_train.to_dense())
    base = bridge.segment_losses(ner, test_batch, test_segments, theta)
    g_test_dense = g_test.to_dense()
    actual, residuals, along_step, linear_response, step_error, newton, refined = {}, [], {}, {}, {}, {}, {}
    curvature_drop = {}
    if extra_methods:  # the curvature as `segment_influence` keeps it (full_hessian includes l2 I)
        train_windows = bridge.window_labels(train, train_segments)
        n_tags, width = ner.head.n_tags, ner.head.n_features + 1
        exact_curvature = ExactCurvature(full_hessian - l2 * numpy.eye(len(theta)), l2, n_tags, width)
    for column in tqdm(sorted(set(chosen["top"]) | set(chosen["random"])), desc="Retraining", disable=not show_progress):
        removed = _segment_objective(ner, train, train_segments[column])
        step = inverse @ g_train_dense[column] / n_sentences  # the influence step
        # Newton on J - l_S / N with its exact Hessian at theta* (H - H_S / N), from that Newton
        # step: the same optimum as with H frozen, but high-leverage segments converge in a few
        # steps instead of hundreds
        reduced = torch.linalg.cholesky(
            torch.as_tensor(full_hessian - segment_hessian(ner, train, train_segments[column], theta) / n_sentences)
        )
        newton_step = torch.cholesky_solve(g_train_dense[column].unsqueeze(1) / n_sentences, reduced).squeeze(1)
        theta_s, residual = _newton(
            lambda t: objective(t) - removed(t) / n_sentences,
            theta + newton_step,
            lambda g: torch.cholesky_solve(g.unsqueeze(1), reduced).squeeze(1),
        )
        residuals.append(residual)
        actual[column] = bridge.segment_losses(ner, test_batch, test_segments, theta_s) - base
        # the two sources of first-order error: the test losses' curvature along the predicted
        # step, and the parameters' nonlinear response (theta_s - theta* vs the influence step)
        along_step[column] = bridge.segment_losses(ner, test_batch, test_segments, theta + step) - base
        linear_response[column] = g_test_dense @ (theta_s - theta).numpy()
        step_error[column] = float(torch.linalg.norm(theta_s - theta - step) / torch.linalg.norm(step))
        # how far the rest of the data's curvature along the true step falls between theta* and
        # theta_-S: any estimate from theta* with a fixed Hessian for the rest misses that part
        def rest_nll(t, removed=removed):
            return data_nll(t) - removed(t) / n_sentences

        moved = theta_s - theta
        before, after = curvature_along(rest_nll, theta, moved), curvature_along(rest_nll, theta_s, moved)
        curvature_drop[column] = before / after if after > 0 else math.nan  # nan: the step vanished
        newton[column] = g_test_dense @ newton_step.numpy()
        if extra_methods:
            window = removal.segment_window(g_train.h, g_train.offsets, train_windows, column)
            refined_step = removal.removal_step(ner, exact_curvature, n_sentences, window, theta)
            refined[column] = bridge.segment_losses(ner, test_batch, test_segments, theta + refined_step) - base
    timings["retrain_s"] = time.perf_counter() - clock
    if extra_methods:  # only defined for the retrained segments; the pairs only use those
        for name, per_segment in (("newton", newton), ("refined", refined)):
            predicted[name] = numpy.full_like(predicted["exact"], math.nan)
            for column, values in per_segment.items():
                predicted[name][:, column] = values
    scatter = _scatter(predicted, actual, chosen, pairs, seed)
    methods = {
        name: {group: correlations(*map(numpy.array, zip(*points))) for group, points in groups.items()}
        for name, groups in scatter.items()
    }
    diagnostics = _diagnostics(
        predicted["exact"], actual, along_step, linear_response, step_error, curvature_drop, chosen, pairs, seed
    )
    settings = {
        "n_train": n_sentences,
        "n_dev": len(dev_features),
        "n_test_segments": len(test_segments),
        "n_train_segments": len(train_segments),
        "n_retrained": len(actual),
        "pairs": pairs,
        "l2": l2,
        "kfac_damping": kfac_damping,
        "seed": seed,
        "n_params": int(len(theta)),
        "max_retrain_gradient": max(residuals),
        "hessian": hessian,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    return {"methods": methods, "settings": settings, "pairs": scatter, "diagnostics": diagnostics}


def _regularised(data_nll, l2: float):
    return lambda theta: data_nll(theta) + 0.5 * l2 * (theta * theta).sum()


def curvature_along(objective, theta: torch.Tensor, direction: torch.Tensor) -> float:
    """d^T (Hessian of `objective` at theta) d, by forward-over-reverse autograd."""
    with crf.one_thread():
        _, hvp = torch.func.jvp(torch.func.grad(objective), (theta,), (direction,))
    return float(direction @ hvp)


def _gradient(objective, theta: torch.Tensor) -> torch.Tensor:
    with crf.one_thread():
        return torch.func.grad(objective)(theta)


def _refit(objective, theta: torch.Tensor, show_progress: bool) -> torch.Tensor:
    """L-BFGS from the trained weights; `_newton` then polishes to machine precision."""
    params = theta.clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [params], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    with crf.one_thread():
        optimizer.step(closure)
    if show_progress:
        print(f"Refit head: J = {float(objective(params.detach())):.6f}")
    return params.detach()


def _hessian(ner, batch: LabelledBatch, theta: torch.Tensor, l2: float, how: str = "covariance") -> numpy.ndarray:
    compute = bridge.head_hessian_autograd if how == "autograd" else bridge.head_hessian
    return compute(ner, batch, flat=theta) + l2 * numpy.eye(len(theta))


def _newton(objective, theta: torch.Tensor, inverse, tol: float = 1e-10, max_iter: int = 200):
    """Minimise a strictly convex `objective` near `theta` by Newton steps with a frozen
    Hessian (`inverse` = H^-1, or a function g -> H^-1 g), halving a step until the objective
    decreases. Stops at |grad| < tol or when no step decreases the objective (float64
    noise floor). Returns theta and the final max |grad|."""
    solve = inverse if callable(inverse) else (lambda g: inverse @ g)
    with crf.one_thread():
        return _newton_steps(objective, theta, solve, tol, max_iter)


def _newton_steps(objective, theta, solve, tol, max_iter):
    evaluate = torch.no_grad()(objective)
    value = float(evaluate(theta))
    for _ in range(max_iter):
        grad = _gradient(objective, theta)
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


def _segment_objective(ner, batch: LabelledBatch, segment: Segment):
    features = [torch.as_tensor(batch.features[segment.doc], dtype=torch.float64)]
    tags = torch.tensor([batch.tags[segment.doc]])
    start, end = torch.tensor([segment.start]), torch.tensor([segment.end])
    return lambda theta: crf.segment_nll(bridge.chain_at(ner, features, theta), tags, start, end, ner.constraints).sum()


def _predicted_entities(ner, features: List[numpy.ndarray], theta: torch.Tensor) -> Tuple[LabelledBatch, List[Segment]]:
    """Test segments: the entities the refit head predicts (errors included)."""
    kept = [x for x in features if len(x)]
    with torch.no_grad(), crf.one_thread():
        paths = crf.viterbi(bridge.chain_at(ner, [torch.as_tensor(x, dtype=torch.float64) for x in kept], theta), ner.constraints)
    segments = [Segment(i, s, e) for i, path in enumerate(paths) for s, e in _entities(ner, path)]
    return LabelledBatch(kept, paths), segments


def _entities(ner, tag_ids: Sequence[int]) -> List[Tuple[int, int]]:
    """(start, end) of the entities of a valid BILUO/BIO tag-id sequence (-1 = O)."""
    spans, start = [], None
    for i, tag_id in enumerate(tag_ids):
        prefix = ner.tags[tag_id].split("-")[0] if tag_id >= 0 else "O"
        if start is not None and prefix not in ("I", "L"):
            spans.append((start, i))
            start = None
        if prefix in ("B", "U"):
            start = i
        if prefix in ("L", "U"):
            spans.append((start, i + 1))
            start = None
    if start is not None:
        spans.append((start, len(tag_ids)))
    return spans


def _predictions(ner, train, g_test, g_train, train_segments, inverse, kfac: KFACCurvature) -> Dict[str, numpy.ndarray]:
    """Unscaled g_test^T H^-1 g_S [T, S] per method (`inverse` = the exact H^-1)."""
    preconditioned_test = g_test.to_dense() @ inverse
    exact = preconditioned_test @ g_train.to_dense().T
    # the paper's token approximation: a segment's gradient as the sum of its tokens'
    singles = [Segment(s.doc, t, t + 1) for s in train_segments for t in range(s.start, s.end)]
    per_token = bridge.segment_gradients(ner, train, singles).to_dense()
    first_token = numpy.cumsum([0] + [s.end - s.start for s in train_segments[:-1]])
    token = preconditioned_test @ numpy.add.reduceat(per_token, first_token, axis=0).T
    meta = [{}] * len(g_train)
    scores = {
        name: SegmentIndex.build(g_train, meta, curvature, normalize=False, dtype="float64").scores(g_test)
        for name, curvature in (("kfac", kfac), ("identity", IdentityCurvature()))
    }
    return {"exact": exact, **scores, "token": token}


def segment_hessian(ner, batch: LabelledBatch, segment: Segment, theta: torch.Tensor) -> numpy.ndarray:
    """Hessian [P, P] of one segment's loss l_S = -log p(y_S | y_outside, x) at `theta`:
    Cov[phi | labels outside S] - Cov[phi | all known labels], i.e. the difference of the
    sentence's Hessian with S's labels and without them."""
    features, tags = [batch.features[segment.doc]], list(batch.tags[segment.doc])
    without = [-1 if segment.start <= i < segment.end else t for i, t in enumerate(tags)]
    return bridge.head_hessian(ner, LabelledBatch(features, [tags]), theta) - bridge.head_hessian(
        ner, LabelledBatch(features, [without]), theta
    )


def _extra_predictions(
    ner, g_test, g_train, hessian: numpy.ndarray, l2: float, kfac: KFACCurvature
) -> Dict[str, numpy.ndarray]:
    """Prototype curvatures between K-FAC and exact, unscaled g_test^T H~^-1 g_S [T, S].

    `hessian` is the exact damped Hessian (L2 included). Emission block = the [W|b]
    parameters, dense block = transitions, start, end (C^2 + 2C).
    - `block`: the exact Hessian without its emission x dense cross terms (what any
      per-block approximation can reach at best).
    - `kfac_exact_damping`: K-FAC's Kronecker factors (`kfac.a` = mean x x^T, `kfac.b` =
      mean(diag q - q q^T)) on the emission block with eigenvalues lambda_A lambda_B + l2 (the objective's own
      damping instead of sqrt(d) added to each factor) and the exact dense block.
    - `ekfac`: eigenvalue-corrected K-FAC (George et al. 2018): K-FAC's eigenbasis
      Q_B (x) Q_A, eigenvalues replaced by the exact Hessian's diagonal in that basis
      (+ l2), exact dense block. Still factored at search time.
    """
    n_tags, width = ner.head.n_tags, ner.head.n_features + 1
    n_emission = n_tags * width
    with crf.one_thread():
        values_a, basis_a = (t.numpy() for t in torch.linalg.eigh(torch.as_tensor(kfac.a)))
        values_b, basis_b = (t.numpy() for t in torch.linalg.eigh(torch.as_tensor(kfac.b)))
    emission = hessian[:n_emission, :n_emission] - l2 * numpy.eye(n_emission)
    block = emission.reshape(n_tags, width, n_tags, width)
    corrected = kronecker_diagonal(block, basis_b, basis_a)
    dense_inverse = numpy.linalg.inv(hessian[n_emission:, n_emission:])
    test, train_dense = g_test.to_dense(), g_train.to_dense()

    def kronecker_solve(vectors: numpy.ndarray, eigenvalues: numpy.ndarray) -> numpy.ndarray:
        out = numpy.empty_like(vectors)
        out[:, :n_emission] = kronecker_eigen_solve(vectors[:, :n_emission], basis_b, basis_a, eigenvalues)
        out[:, n_emission:] = vectors[:, n_emission:] @ dense_inverse
        return out

    cut = hessian.copy()
    cut[:n_emission, n_emission:] = 0
    cut[n_emission:, :n_emission] = 0
    block_solved = numpy.linalg.solve(cut, train_dense.T).T
    kfac_values = numpy.outer(numpy.clip(values_b, 0, None), numpy.clip(values_a, 0, None)) + l2
    return {
        "block": test @ block_solved.T,
        "kfac_exact_damping": test @ kronecker_solve(train_dense, kfac_values).T,
        "ekfac": test @ kronecker_solve(train_dense, numpy.clip(corrected, 0, None) + l2).T,
    }


def kronecker_diagonal(block: numpy.ndarray, basis_b: numpy.ndarray, basis_a: numpy.ndarray) -> numpy.ndarray:
    """diag of (Q_B (x) Q_A)^T H (Q_B (x) Q_A) as [i, j], for H given as [c, w, d, v]
    (row-major [C, W] parameter layout, so vec = numpy.kron order)."""
    n_tags, width = basis_b.shape[0], basis_a.shape[0]
    rotated = (block.reshape(-1, width) @ basis_a).reshape(n_tags, width, n_tags, width)  # [c, w, d, j]
    rotated = numpy.tensordot(rotated, basis_b, axes=([2], [0]))  # [c, w, j, i]
    return numpy.einsum("cwji,ci,wj->ij", rotated, basis_b, basis_a, optimize=True)


def kronecker_eigen_solve(
    vectors: numpy.ndarray, basis_b: numpy.ndarray, basis_a: numpy.ndarray, eigenvalues: numpy.ndarray
) -> numpy.ndarray:
    """Rows [n, C * W] times ((Q_B (x) Q_A) diag(eigenvalues) (Q_B (x) Q_A)^T)^-1."""
    n_tags, width = basis_b.shape[0], basis_a.shape[0]
    matrices = vectors.reshape(-1, n_tags, width)
    in_basis = numpy.einsum("ncw,ci->niw", matrices, basis_b) @ basis_a / eigenvalues  # [n, i, j]
    back = numpy.einsum("nij,ci->ncj", in_basis, basis_b) @ basis_a.T
    return back.reshape(len(vectors), -1)


def _diagnostics(exact, actual, along_step, linear_response, step_error, curvature_drop, chosen, pairs, seed) -> dict:
    """Per pair group: Pearson of the actual change with (a) the test losses evaluated at the
    influence step (exact parameter step, curved test loss) and (b) the linearised test loss
    at the retrained parameters (linear test loss, exact parameter response); per retrained
    segment, the relative error of the influence step |theta_-S - theta* - step| / |step| and
    the factor by which the other sentences' curvature along theta_-S - theta* falls between
    theta* and theta_-S (1 = the rest of the data stays quadratic along the step)."""
    out = {}
    for group, members in chosen.items():
        indices = _pair_indices(members, exact, pairs, top=group == "top", seed=seed)
        predicted = numpy.array([exact[t, s] for t, s in indices])
        real = numpy.array([actual[s][t] for t, s in indices])
        curved = numpy.array([along_step[s][t] for t, s in indices])
        linear = numpy.array([linear_response[s][t] for t, s in indices])
        errors = [step_error[s] for s in members]
        drops = [curvature_drop[s] for s in members if not math.isnan(curvature_drop[s])]
        out[group] = {
            "pearson_predicted_actual": _pearson(predicted, real),
            "pearson_loss_at_step_actual": _pearson(curved, real),
            "pearson_linearised_actual": _pearson(linear, real),
            "pearson_predicted_linearised": _pearson(predicted, linear),
            "pearson_predicted_loss_at_step": _pearson(predicted, curved),
            "step_error_median": float(numpy.median(errors)) if errors else math.nan,
            "step_error_max": float(numpy.max(errors)) if errors else math.nan,
            "rest_curvature_drop_median": float(numpy.median(drops)) if drops else math.nan,
            "rest_curvature_drop_max": float(numpy.max(drops)) if drops else math.nan,
        }
    return out


def _choose_segments(exact: numpy.ndarray, n_segments: int, seed: int) -> Dict[str, List[int]]:
    """`top`: training segments with the largest |predicted| effect on some test segment;
    `random`: others drawn uniformly."""
    order = numpy.argsort(-numpy.abs(exact).max(axis=0))
    top = [int(i) for i in order[:n_segments]]
    rest = [int(i) for i in order[n_segments:]]
    rng = random.Random(seed)
    return {"top": top, "random": rng.sample(rest, min(n_segments, len(rest)))}


def _pair_indices(group: List[int], exact: numpy.ndarray, pairs: int, top: bool, seed: int) -> List[Tuple[int, int]]:
    candidates = [(t, s) for s in group for t in range(exact.shape[0])]
    if top:
        candidates.sort(key=lambda ts: -abs(exact[ts]))
        return candidates[:pairs]
    rng = random.Random(seed)
    return rng.sample(candidates, min(pairs, len(candidates)))


def _scatter(predicted, actual, chosen, pairs, seed) -> Dict[str, Dict[str, List[Tuple[float, float]]]]:
    """(predicted, actual) per method and pair group; the pairs are the same for every
    method: `top` by |exact prediction|, `random` drawn uniformly."""
    exact = predicted["exact"]
    out = {}
    for name, scores in predicted.items():
        out[name] = {}
        for group, members in chosen.items():
            indices = _pair_indices(members, exact, pairs, top=group == "top", seed=seed)
            out[name][group] = [(float(scores[t, s]), float(actual[s][t])) for t, s in indices]
    return out


def correlations(predicted: numpy.ndarray, actual: numpy.ndarray) -> dict:
    """Pearson, Spearman, Kendall tau-b and sign agreement of two score vectors."""
    n = len(predicted)
    if n < 3:
        return {"pearson": math.nan, "spearman": math.nan, "kendall": math.nan, "sign_agreement": math.nan, "n": n}
    return {
        "pearson": _pearson(predicted, actual),
        "spearman": _pearson(_ranks(predicted), _ranks(actual)),
        "kendall": _kendall_tau_b(predicted, actual),
        "sign_agreement": float(numpy.mean(numpy.sign(predicted) == numpy.sign(actual))),
        "n": n,
    }


def _pearson(x: numpy.ndarray, y: numpy.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else math.nan


def _ranks(x: numpy.ndarray) -> numpy.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = numpy.argsort(x, kind="mergesort")
    ranks = numpy.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def _kendall_tau_b(x: numpy.ndarray, y: numpy.ndarray) -> float:
    dx = numpy.sign(x[:, None] - x[None, :])
    dy = numpy.sign(y[:, None] - y[None, :])
    upper = numpy.triu_indices(len(x), k=1)
    dx, dy = dx[upper], dy[upper]
    concordance = float((dx * dy).sum())
    denominator = math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return concordance / denominator if denominator > 0 else math.nan


def save_plot(result: dict, path: str) -> Optional[str]:
    """Scatter of actual vs predicted per method; returns why not, if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    scatter = result["pairs"]
    fig, axes = plt.subplots(1, len(scatter), figsize=(4 * len(scatter), 4))
    for ax, (name, groups) in zip(numpy.atleast_1d(axes), scatter.items()):
        for group, points in groups.items():
            if points:
                xs, ys = zip(*points)
                ax.scatter(xs, ys, s=6, alpha=0.6, label=group)
        ax.set_title(name)
        ax.set_xlabel("predicted change of test loss")
        ax.set_ylabel("actual (retrained)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return None
