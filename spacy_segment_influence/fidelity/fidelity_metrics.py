"""How `validate` compares predicted influence with retraining: which training segments
are retrained, which (test, train) pairs are correlated, the correlations, the
diagnostics of the first-order error, and a scatter plot."""

import math
import random
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

import numpy

if TYPE_CHECKING:
    from .retrain import Retrained

Pairs = Dict[str, Dict[str, List[Tuple[float, float]]]]

# What `validate` compares with retraining, one line each (`segment-influence validate --help`).
METHODS = {
    "exact": "first-order influence (1/N) g_test' H^-1 g_segment with the exact Hessian H of the head",
    "kfac": "the same with H approximated by K-FAC (the index's default curvature)",
    "identity": "the same with H = I: the plain gradient dot product",
    "token": "exact H, a segment's gradient summed over its tokens (the paper's token approximation)",
    "refined": "the test loss at the leverage-corrected removal step, as refine = true reports it",
}


def compare(
    predicted: Dict[str, numpy.ndarray],
    retrained: Mapping[int, "Retrained"],
    chosen: Dict[str, List[int]],
    pairs: int,
    seed: int,
) -> dict:
    """`methods`: the correlations of predicted [T, S] and actual changes per method and
    pair group; `pairs`: the points; `diagnostics`: see `_diagnostics`."""
    actual = {column: result.actual for column, result in retrained.items()}
    scatter = _scatter(predicted, actual, chosen, pairs, seed)
    methods = {
        name: {group: correlations(*map(numpy.array, zip(*points))) for group, points in groups.items()}
        for name, groups in scatter.items()
    }
    return {
        "methods": methods,
        "pairs": scatter,
        "diagnostics": _diagnostics(predicted["exact"], retrained, chosen, pairs, seed),
    }


def _diagnostics(
    exact: numpy.ndarray, retrained: Mapping[int, "Retrained"], chosen: Dict[str, List[int]], pairs: int, seed: int
) -> dict:
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
        real = numpy.array([retrained[s].actual[t] for t, s in indices])
        curved = numpy.array([retrained[s].along_step[t] for t, s in indices])
        linear = numpy.array([retrained[s].linear_response[t] for t, s in indices])
        errors = [retrained[s].step_error for s in members]
        drops = [retrained[s].curvature_drop for s in members if not math.isnan(retrained[s].curvature_drop)]
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


def choose_segments(exact: numpy.ndarray, n_segments: int, seed: int) -> Dict[str, List[int]]:
    """`top`: training segments with the largest |predicted| effect on some test segment;
    `random`: others drawn uniformly."""
    order = numpy.argsort(-numpy.abs(exact).max(axis=0))
    top = [int(i) for i in order[:n_segments]]
    rest = [int(i) for i in order[n_segments:]]
    rng = random.Random(seed)
    return {"top": top, "random": rng.sample(rest, min(n_segments, len(rest)))}


def _pair_indices(group: List[int], exact: numpy.ndarray, pairs: int, top: bool, seed: int) -> List[Tuple[int, int]]:
    """The (test, train) pairs of a group: the `pairs` largest |exact| for `top`, else
    drawn uniformly."""
    candidates = [(t, s) for s in group for t in range(exact.shape[0])]
    if top:
        candidates.sort(key=lambda ts: -abs(exact[ts]))
        return candidates[:pairs]
    rng = random.Random(seed)
    return rng.sample(candidates, min(pairs, len(candidates)))


def _scatter(
    predicted: Dict[str, numpy.ndarray],
    actual: Mapping[int, numpy.ndarray],
    chosen: Dict[str, List[int]],
    pairs: int,
    seed: int,
) -> Pairs:
    """(predicted, actual) per method and pair group; the pairs are the same for every
    method: `top` by |exact prediction|, `random` drawn uniformly."""
    exact = predicted["exact"]
    out: Pairs = {}
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


PLOT_INSTALL = "pip install spacy-segment-influence[plot]"


def save_plot(result: dict, path: str) -> Optional[str]:
    """Scatter of actual vs predicted per method; returns why not, if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed ({PLOT_INSTALL})"
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
