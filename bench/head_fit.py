"""The head fit against a pass over the corpus, and against the L-BFGS fit it replaced (issue 28).

    python bench/head_fit.py --n-train 0 --max-steps 400 --compare 2000 --n-dev 1000

Trains tok2vec + built-in ner (configs/ner_builtin_tok2vec.cfg) on the first N CoNLL train
sentences (0: all), then, each phase in a fresh process so that its peak memory is its own:
- `pipe`: a plain nlp.pipe over the corpus (time, peak RSS);
- `fit`: `fit_surrogate` on the corpus (features and fit; wall and CPU time, peak RSS), the
  features alone timed again, and the surrogate's agreement on the first `--n-dev` CoNLL
  validation sentences;
- `compare` on the first `--compare` sentences: the surrogate's fit from zeros and
  `validate`'s refit from a head fitted on the next `--compare` sentences, each by
  `fit_head` and by torch L-BFGS through autograd (the fit before: `lbfgs_refit`), with
  J, max |gradient|, the distance between the two optima and both surrogates' agreement.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import spacy
import torch
from spacy.tokens import Doc, DocBin

from spacy_segment_influence.influence.head_fit import fit_head, head_objective
from spacy_segment_influence.influence.segments import mean_nll
from spacy_segment_influence.influence.surrogate import _size, agreement, build_surrogate, fit_surrogate
from spacy_segment_influence.ner import bridge, crf
from spacy_segment_influence.ner.bridge import labelled_batch

ROOT = Path(__file__).resolve().parents[1]
L2 = 1e-3


def lbfgs_refit(objective: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The head fit before `head_fit`: torch L-BFGS in float64 through autograd over the
    whole objective (500 iterations at most, gradient tolerance 1e-9)."""
    params = theta.clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [params], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    with crf.one_thread():
        optimizer.step(closure)
    return params.detach()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def phase(args: argparse.Namespace) -> dict:
    nlp = spacy.load(args.model)
    docs = list(DocBin().from_disk(args.train_path).get_docs(nlp.vocab))
    dev = list(DocBin().from_disk(args.dev_path).get_docs(nlp.vocab))[: args.n_dev]
    found: dict = {"n_sentences": len(docs), "n_tokens": sum(len(doc) for doc in docs), "rss_before_mb": rss_mb()}
    found["load_before"] = os.getloadavg()
    clock, cpu = time.perf_counter(), cpu_s()
    if args.phase == "pipe":
        for _ in nlp.pipe((Doc(nlp.vocab, words=[t.text for t in doc]) for doc in docs), batch_size=64):
            pass
    elif args.phase == "fit":
        surrogate = fit_surrogate(nlp, "ner", docs, l2=L2, show_progress=True)
        found["fit_s"], found["fit_cpu_s"] = time.perf_counter() - clock, cpu_s() - cpu
        found["peak_mb"] = peak_mb()
        # the features alone (what fit_surrogate computes before the fit), timed again
        features_clock, features_cpu = time.perf_counter(), cpu_s()
        features = labelled_batch(nlp, "ner", docs, ner=surrogate)
        found["features_s"], found["features_cpu_s"] = time.perf_counter() - features_clock, cpu_s() - features_cpu
        found["features_mb"] = sum(x.nbytes for x in features.features) / 2**20
        found["agreement"] = agreement(nlp, "ner", surrogate, dev)
    else:
        found.update(compare(nlp, docs, dev, args.compare, args.cases.split(",")))
    found.setdefault("seconds", time.perf_counter() - clock)
    found.setdefault("cpu_s", cpu_s() - cpu)
    found.setdefault("peak_mb", peak_mb())
    found["load_after"] = os.getloadavg()
    return found


def compare(nlp, docs: List[Doc], dev: List[Doc], size: int, cases: List[str]) -> dict:
    surrogate = build_surrogate(nlp, "ner", nlp.get_pipe("ner").labels)
    batch = labelled_batch(nlp, "ner", docs[:size], ner=surrogate)
    _size(surrogate, batch.features[0].shape[1])
    data_nll, _ = mean_nll(surrogate, batch)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        return data_nll(theta) + 0.5 * L2 * (theta * theta).sum()

    other = labelled_batch(nlp, "ner", docs[size : 2 * size], ner=surrogate)
    trained = fit_head(surrogate, other, L2).theta  # validate's start: a head trained elsewhere
    zeros = torch.zeros_like(trained)
    out: dict = {"n_sentences": size, "n_params": len(trained)}
    for case, start in (("surrogate_from_zeros", None), ("validate_from_a_trained_head", trained)):
        if case.split("_")[0] not in cases:
            continue
        clock = time.perf_counter()
        new = fit_head(surrogate, batch, L2, start, show_progress=True)
        new_s = time.perf_counter() - clock
        clock = time.perf_counter()
        old = lbfgs_refit(objective, zeros if start is None else start)
        old_s = time.perf_counter() - clock
        row = {"new_s": new_s, "old_s": old_s, "speedup": old_s / new_s, "passes": new.passes, "hessians": new.hessians}
        for name, theta in (("new", new.theta), ("old", old)):
            value, gradient = head_objective(surrogate, batch, theta, L2)
            row[f"{name}_J"], row[f"{name}_grad_max"] = value, float(gradient.abs().max())
            if start is None:
                bridge.set_flat_head(surrogate, theta.float())
                row[f"{name}_agreement"] = agreement(nlp, "ner", surrogate, dev)
        row["theta_max_diff"] = float((new.theta - old).abs().max())
        row["theta_max_abs"] = float(new.theta.abs().max())
        out[case] = row
        print(json.dumps({case: row}, indent=2), flush=True)
    return out


def main() -> None:
    import ner_quality  # bench/ helpers, on the path when run as a script (tests import lbfgs_refit)
    from entity_calibration import corpus, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=0, help="CoNLL train sentences (0: all)")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--compare", type=int, default=2000, help="sentences of the old-vs-new comparison (0: skip)")
    parser.add_argument("--n-dev", type=int, default=1000, help="CoNLL validation sentences for the agreement")
    parser.add_argument("--phases", default="pipe,fit,compare")
    parser.add_argument("--cases", default="surrogate,validate", help="the comparison's cases")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "head_fit")
    parser.add_argument("--data", type=Path, default=ner_quality.DATA, help="folder of the CoNLL-2003 JSONL files")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--train-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dev-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args)), flush=True)
        return
    ner_quality.DATA = args.data
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_path = corpus("train_original", args.workdir, args.n_train)
    dev_path = corpus("validation_original", args.workdir, 0)
    model = train("ner_builtin_tok2vec.cfg", args.workdir / "ner", train_path, dev_path, args.max_steps)
    results: dict = {"max_steps": args.max_steps, "threads": torch.get_num_threads()}
    for name in args.phases.split(","):
        if name == "compare" and not args.compare:
            continue
        cmd = [sys.executable, __file__, "--phase", name, "--model", str(model), "--train-path", str(train_path)]
        cmd += ["--dev-path", str(dev_path), "--n-dev", str(args.n_dev), "--compare", str(args.compare)]
        cmd += ["--cases", args.cases]
        output = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[name] = json.loads(output.split("RESULT ", 1)[1])
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    if "pipe" in results and "fit" in results:
        pipe, fit = results["pipe"], results["fit"]
        results["fit_vs_pipe"] = fit["fit_s"] / pipe["seconds"]
        results["fit_cpu_vs_pipe_cpu"] = fit["fit_cpu_s"] / pipe["cpu_s"]
        results["head_fit_alone_cpu_vs_pipe_cpu"] = (fit["fit_cpu_s"] - fit["features_cpu_s"]) / pipe["cpu_s"]
        results["fit_peak_vs_pipe_peak_plus_features"] = fit["peak_mb"] / (pipe["peak_mb"] + fit["features_mb"])
    print(json.dumps(results, indent=2))
    (args.workdir / f"head_fit_{args.phases.replace(',', '_')}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
