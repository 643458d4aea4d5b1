"""Fidelity of segment influence (issue 4): predicted vs retrained influence, in one run.

Demo mode (default): trains the test suite's small tok2vec crf_ner on 300 sentences of the
shipped demo corpus (clean labels), then runs `validate`:

    python bench/fidelity.py --n-train 150 --n-dev 40 --n-segments 6 --pairs 200

Pipeline mode: `validate` on an existing trained pipeline and its corpora (.spacy), e.g.

    python bench/fidelity.py --model bench/output/ner_quality/tok2vec/crf_ner_tok2vec/model-best \\
        --train bench/output/ner_quality/tok2vec/train_original.spacy \\
        --dev bench/output/ner_quality/tok2vec/validation_original.spacy \\
        --n-train 1000 --n-dev 200 --n-segments 20 --pairs 400 --out bench/output/fidelity/tok2vec.json

`validate` freezes the features, refits the head (L-BFGS, L2), takes the exact Hessian, retrains
without each chosen training segment and prints the correlations per method and pair group,
the diagnostics of the first-order error, and the pairs' Pearson without their largest points.
With --out it writes the metrics and settings there and the (predicted, actual) pairs next to it
(`*.pairs.json`); with --plot a scatter plot.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fidelity_prototypes import prototype_estimates  # noqa: E402
from spacy_segment_influence import validate  # noqa: E402
from spacy_segment_influence.fidelity.fidelity_metrics import save_plot  # noqa: E402


def demo_pipeline(seed: int):
    """The test suite's small tok2vec crf_ner trained on 300 clean demo sentences."""
    from spacy.training import Example
    from thinc.api import fix_random_seed

    from spacy_segment_influence.corpus import read_jsonl_docs
    from tests.conftest import tok2vec_nlp

    nlp = tok2vec_nlp()
    docs = list(read_jsonl_docs(ROOT / "assets/demo/train_corrected.jsonl", nlp.vocab))
    dev = list(read_jsonl_docs(ROOT / "assets/demo/dev.jsonl", nlp.vocab))
    examples = [Example(doc.copy(), doc) for doc in docs[:300]]
    fix_random_seed(seed)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(15):
        for first in range(0, len(examples), 50):
            nlp.update(examples[first : first + 50], sgd=optimizer, losses={})
    print("dev ents_f", round(nlp.evaluate([Example(d.copy(), d) for d in dev])["ents_f"], 4))
    return nlp, docs, dev


def trained_pipeline(model: Path, train: Path, dev: Path):
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.load(model)
    train_docs = list(DocBin().from_disk(train).get_docs(nlp.vocab))
    dev_docs = list(DocBin().from_disk(dev).get_docs(nlp.vocab))
    return nlp, train_docs, dev_docs


def robust_pearson(points, drop=(1, 3, 5)) -> dict:
    """Pearson of (predicted, actual) after dropping the `k` pairs with the largest |predicted|."""
    xs, ys = map(numpy.array, zip(*points))
    order = numpy.argsort(-numpy.abs(xs))
    out = {}
    for k in drop:
        keep = order[k:]
        out[f"pearson_without_top{k}"] = float(numpy.corrcoef(xs[keep], ys[keep])[0, 1])
    return out


def print_result(result: dict) -> None:
    print("| method | group | pearson | spearman | kendall | sign agreement | n |")
    print("|---|---|---|---|---|---|---|")
    for method, groups in result["methods"].items():
        for group, m in groups.items():
            print(
                f"| {method} | {group} | {m['pearson']:.3f} | {m['spearman']:.3f} | {m['kendall']:.3f} | "
                f"{m['sign_agreement']:.3f} | {m['n']} |"
            )
    print("diagnostics (exact):", json.dumps(result["diagnostics"], indent=1))
    print("outliers (exact):", json.dumps({g: robust_pearson(p) for g, p in result["pairs"]["exact"].items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="trained pipeline (default: train the demo model)")
    parser.add_argument("--train", type=Path, default=None, help="with --model: training corpus (.spacy)")
    parser.add_argument("--dev", type=Path, default=None, help="with --model: held-out corpus (.spacy)")
    parser.add_argument("--ner", default="crf_ner")
    parser.add_argument("--n-train", type=int, nargs="+", default=[150], help="several values: a sweep")
    parser.add_argument("--n-dev", type=int, default=40)
    parser.add_argument("--n-segments", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-3], help="several values: a sweep")
    parser.add_argument("--kfac-damping", type=float, default=1e-3)
    parser.add_argument("--hessian", choices=["covariance", "autograd"], default="covariance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads outside the CRF recursions")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        nlp, train_docs, dev_docs = demo_pipeline(args.seed)
    else:
        if args.train is None or args.dev is None:
            parser.error("--model needs --train and --dev")
        nlp, train_docs, dev_docs = trained_pipeline(args.model, args.train, args.dev)
    sweep = [(n, l2) for n in args.n_train for l2 in args.l2]
    summary = []
    for n_train, l2 in sweep:
        start = time.perf_counter()
        result = validate(
            nlp,
            train_docs[:n_train],
            dev_docs[: args.n_dev],
            ner_name=args.ner,
            n_train=n_train,
            n_dev=args.n_dev,
            n_segments=args.n_segments,
            pairs=args.pairs,
            l2=l2,
            kfac_damping=args.kfac_damping,
            seed=args.seed,
            show_progress=False,
            hessian=args.hessian,
            extra_estimates=prototype_estimates,
        )
        seconds = time.perf_counter() - start
        result["settings"]["validate_s"] = round(seconds, 1)
        result["settings"]["model"] = str(args.model or "demo")
        print(f"validate: {seconds:.0f} s; settings {json.dumps(result['settings'])}", flush=True)
        print_result(result)
        exact, diagnostics = result["methods"]["exact"], result["diagnostics"]
        summary.append((n_train, l2, exact, diagnostics))
        if args.out:
            out = args.out if len(sweep) == 1 else args.out.with_name(f"{args.out.stem}_n{n_train}_l2{l2:g}.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            outliers = {g: robust_pearson(p) for g, p in result["pairs"]["exact"].items()}
            keep = {k: result[k] for k in ("methods", "settings", "diagnostics")}
            out.write_text(json.dumps({**keep, "exact_outliers": outliers}, indent=2))
            out.with_suffix(".pairs.json").write_text(json.dumps(result["pairs"]))
        if args.plot and len(sweep) == 1:
            why = save_plot(result, str(args.plot))
            if why:
                print(why)
    if len(sweep) > 1:
        print(
            "| n_train | l2 | exact top pearson | top spearman | random spearman | loss-at-step vs actual (top) | "
            "linearised vs actual (top) | step error median (top) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for n_train, l2, exact, d in summary:
            print(
                f"| {n_train} | {l2:g} | {exact['top']['pearson']:.3f} | {exact['top']['spearman']:.3f} | "
                f"{exact['random']['spearman']:.3f} | {d['top']['pearson_loss_at_step_actual']:.3f} | "
                f"{d['top']['pearson_linearised_actual']:.3f} | {d['top']['step_error_median']:.3f} |"
            )


if __name__ == "__main__":
    main()
