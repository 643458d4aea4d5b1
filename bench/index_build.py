"""Index build time vs plain nlp.pipe over the same corpus, and peak RSS (issue 3, 5a/5d).

    python bench/index_build.py MODEL_DIR --train TRAIN.jsonl|.spacy --n N [--repeats 3]
        [--batch-size 64] [--curvature kfac] [--threads T] [--blas-threads B] [--profile] [--rss]

Side by side, interleaved (the order alternates between repeats):
  pipe(texts)  nlp.pipe over the docs' texts (tokenizer + tok2vec + crf_ner), segment_influence disabled
  pipe(docs)   the same over pre-tokenized Docs (the docs' own words/spaces): no tokenizer,
               which is what the index build feeds its encoder
  index build  SegmentInfluence.initialize(train_path=...) over the same docs, same batch size
Ratio index / pipe, target <= 1.25. A breakdown of one more build by phase is printed
(timers wrapped around the package's functions), and with --profile a cProfile of it.
With --rss each phase runs once in its own subprocess and reports its peak RSS (VmHWM);
--repeats 0 skips the timings.
--blas-threads sets numpy's OpenBLAS thread count at start (default: OpenBLAS's own,
one per core); on a loaded machine 1 avoids oversubscription (see BENCHMARKS.md).
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import spacy
import torch
from influence_common import (  # noqa: E402
    Clock,
    blas_threads,
    instrumented,
    load,
    load_docs,
    maxrss_mb,
    set_blas_threads,
    timer,
    write_spacy,
)

import spacy_segment_influence.influence.index_build as build_mod  # noqa: E402
import spacy_segment_influence.pipeline.component as component_mod  # noqa: E402
from spacy_segment_influence.influence import curvature as curvature_mod
from spacy_segment_influence.influence import index as index_mod
from spacy_segment_influence.influence import segments as segments_mod
from spacy_segment_influence.ner import bridge  # noqa: E402


def setup(args, read_corpus: bool = True):
    nlp = spacy.load(args.model)
    if args.phase:  # a subprocess: args.train is the .spacy file the parent wrote
        train_path = Path(args.train)
        docs = load_docs(train_path, nlp.vocab) if read_corpus else []
    else:
        docs = load_docs(args.train, nlp.vocab, args.n)
        tmp = Path(tempfile.mkdtemp(prefix="index_build_"))
        train_path = write_spacy(docs, tmp / "train.spacy")
    config = {"curvature": args.curvature, "batch_size": args.batch_size}
    component = nlp.add_pipe("segment_influence", config=config)
    return nlp, docs, train_path, component


def phases(nlp, docs, train_path, component, batch_size):
    texts = [doc.text for doc in docs]

    def pipe_texts():
        with nlp.select_pipes(disable=[component.name]):
            for _ in nlp.pipe(texts, batch_size=batch_size):
                pass

    def pipe_docs():
        with nlp.select_pipes(disable=[component.name]):
            for _ in nlp.pipe((bridge.unannotated(d) for d in docs), batch_size=batch_size):
                pass

    def build():
        component.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)

    return {"pipe(texts)": pipe_texts, "pipe(docs)": pipe_docs, "index build": build}


def breakdown(build):
    """Time one build by package function (inclusive times; nested ones overlap)."""
    totals = defaultdict(float)
    targets = [
        (component_mod, "read_docbin", "read DocBin"),
        (bridge, "unannotated", "fresh Doc copies"),
        (bridge, "encode", "encode (tok2vec via nlp.pipe)"),
        (bridge, "head_features", "listener features"),
        (bridge, "gold_tags", "gold tags"),
        (build_mod, "training_segments", "segments + metadata"),
        (build_mod, "segment_gradients", "segment gradients (marginals)"),
        (segments_mod, "token_marginals", "KFAC: token marginals"),
        (curvature_mod.KFACStatistics, "add_tokens", "KFAC: accumulate factors"),
        (curvature_mod.KFACStatistics, "curvature", "KFAC: fit factors"),
        (index_mod.SegmentIndex, "build", "SegmentIndex.build (whiten, norms, CSR)"),
        (bridge, "fingerprint", "fingerprint"),
    ]
    with instrumented(targets, timer(totals)):
        start = time.perf_counter()
        build()
        total = time.perf_counter() - start
    return total, totals


def _vm_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fn_profiled_build(nlp, train_path, component):
    return lambda: component.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)


def _rss_by_step(build, interval: float = 0.005):
    """Run one more build while a thread samples VmRSS; the max per innermost package
    step (what is resident while it runs, including what earlier steps still hold)."""
    import threading

    label = ["read DocBin + setup"]
    peaks = defaultdict(float)

    @contextmanager
    def step(name: str):
        outer, label[0] = label[0], name
        try:
            yield
        finally:
            label[0] = outer

    targets = [
        (bridge, "encode", "encode"),
        (build_mod, "segment_gradients", "segment gradients"),
        (curvature_mod.ExactCurvature, "fit", "fit curvature (exact)"),
        (segments_mod, "token_marginals", "KFAC: token marginals"),
        (curvature_mod.KFACStatistics, "add_tokens", "KFAC: accumulate factors"),
        (curvature_mod.KFACStatistics, "curvature", "KFAC: fit factors"),
        (index_mod.SegmentIndex, "build", "SegmentIndex.build"),
    ]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peaks[label[0]] = max(peaks[label[0]], _vm_rss_mb())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        with instrumented(targets, step):
            build()
    finally:
        done.set()
        thread.join()
    peaks["after"] = _vm_rss_mb()
    return {k: round(v) for k, v in peaks.items()}


def run_phase(args):
    """--phase: one phase in this fresh process; print JSON with time and peak RSS."""
    nlp, docs, train_path, component = setup(args, read_corpus=args.phase in ("pipe(texts)", "pipe(docs)"))
    rss_loaded = maxrss_mb()
    seconds = 0.0
    if args.phase != "load":
        fn = phases(nlp, docs, train_path, component, args.batch_size)[args.phase]
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    peak = maxrss_mb()
    extra = {}
    if args.phase == "index build":
        extra = {"index_mb": component.index.nbytes / 1e6, "segments": len(component.index)}
        # a second build, sampled by step (the first index is still held meanwhile)
        extra["rss_by_step_mb"] = _rss_by_step(fn_profiled_build(nlp, train_path, component))
    print(
        json.dumps(
            {
                "phase": args.phase,
                "seconds": seconds,
                "rss_loaded_mb": rss_loaded,
                "peak_rss_mb": peak,
                "load": os.getloadavg()[0],
                **extra,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--train", required=True)
    parser.add_argument("--n", type=int, default=2000, help="first N docs (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--curvature", default="kfac")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--blas-threads", type=int, default=0, help="numpy OpenBLAS threads (0 = default)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more build")
    parser.add_argument("--rss", action="store_true", help="peak RSS per phase, each in a subprocess")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.blas_threads:
        set_blas_threads(args.blas_threads)
    if args.phase:
        return run_phase(args)

    nlp, docs, train_path, component = setup(args)
    fns = phases(nlp, docs, train_path, component, args.batch_size)
    n_tokens = sum(len(d) for d in docs)
    print(
        f"model {args.model}; {len(docs)} docs, {n_tokens} tokens; batch size {args.batch_size}; "
        f"curvature {args.curvature}; {torch.get_num_threads()} torch threads; "
        f"{blas_threads()} OpenBLAS threads; {os.cpu_count()} CPUs; {load()}"
    )
    names = list(fns)
    if args.repeats > 0:
        timing(args, nlp, docs, train_path, component, fns, names)
    if args.rss:
        rss(args, train_path, names)


def timing(args, nlp, docs, train_path, component, fns, names):
    fns["index build"]()  # warm-up: first-call allocations, lazy imports
    clock = Clock()
    for rep in range(args.repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            clock.run(name, fns[name])
            print(f"  repeat {rep}: {name:12} {clock.times[name][-1]:8.2f} s  ({load()})", flush=True)
    print(
        f"\n{len(component.index)} segments, {component.index.stored.h.shape[0]} token rows, "
        f"index {component.index.nbytes / 1e6:.1f} MB"
    )
    print(f"{'phase':14}{'median s':>10}{'best s':>10}{'CPU s':>10}{'docs/s':>10}{'mean load':>11}")
    for name in names:
        print(
            f"{name:14}{clock.median(name):10.2f}{clock.best(name):10.2f}{clock.cpu_median(name):10.2f}"
            f"{len(docs) / clock.median(name):10.0f}{clock.mean_load(name):11.2f}"
        )
    build = clock.times["index build"]
    for base in ("pipe(texts)", "pipe(docs)"):
        per_rep = [b / p for b, p in zip(build, clock.times[base])]
        print(
            f"ratio index build / {base:11}: wall median {clock.median('index build') / clock.median(base):.2f} "
            f"(per repeat {', '.join(f'{x:.2f}' for x in per_rep)}), CPU time "
            f"{clock.cpu_median('index build') / clock.cpu_median(base):.2f}  (target <= 1.25)"
        )

    total, parts = breakdown(fns["index build"])
    print(f"\nbreakdown of one more build: {total:.2f} s ({load()}); inclusive times, nested entries overlap")
    for label, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:38}{seconds:8.2f} s {100 * seconds / total:6.1f} %")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        fns["index build"]()
        profiler.disable()
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(25)
            print(f"\ncProfile of one build, top 25 by {key}:")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


def rss(args, train_path, names):
    print(
        "\npeak RSS (VmHWM), each phase in a fresh subprocess; 'loaded' = after loading the model "
        "(and, for the pipe phases, reading the corpus' docs; the index build reads them itself):"
    )
    print(f"{'phase':14}{'loaded MB':>11}{'peak MB':>10}{'peak-loaded':>13}{'seconds':>9}{'load':>7}")
    base_cmd = [
        sys.executable,
        __file__,
        args.model,
        "--train",
        str(train_path),
        "--n",
        "0",
        "--batch-size",
        str(args.batch_size),
        "--curvature",
        args.curvature,
        "--threads",
        str(args.threads),
        "--blas-threads",
        str(args.blas_threads),
    ]
    for phase in ["load"] + names:
        out = subprocess.run(base_cmd + ["--phase", phase], capture_output=True, text=True, check=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        note = f"  index {rec['index_mb']:.1f} MB" if "index_mb" in rec else ""
        print(
            f"{phase:14}{rec['rss_loaded_mb']:11.0f}{rec['peak_rss_mb']:10.0f}"
            f"{rec['peak_rss_mb'] - rec['rss_loaded_mb']:13.0f}{rec['seconds']:9.2f}{rec['load']:7.2f}{note}"
        )
        if "rss_by_step_mb" in rec:
            steps = ", ".join(f"{k} {v}" for k, v in rec["rss_by_step_mb"].items())
            print(
                f"  max VmRSS (MB) while each step of a second build ran "
                f"(sampled every 5 ms; the first index still held): {steps}"
            )


if __name__ == "__main__":
    main()
