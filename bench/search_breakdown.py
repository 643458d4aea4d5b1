"""Where single-query and batched query time goes (diagnosis for issue 3, 5b/5c).

    python bench/search_breakdown.py MODEL_DIR [--train TRAIN.jsonl] [--n-single 100]
        [--blas-threads 1] [--threads 1]

Builds the full-train index (kfac, normalised: the defaults), then, single-threaded:
  A. one query at a time: SegmentIndex.top_k vs its parts (the sparse transition-block
     product alone, the factored W part alone, query preparation), the bandwidth floor
     over the arrays search reads, and query_latency.py's dense baseline, side by side;
  B. component.pipe over the annotated validation docs, timed by package function.
Uses the index's device tensors and chunk layout (`SegmentIndex.device_tensors`, `search`) for the parts.
"""

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import spacy
import torch
from influence_common import (  # noqa: E402
    blas_threads,
    instrumented,
    load,
    load_docs,
    query_gradients,
    read_floor,
    set_blas_threads,
    timer,
    write_spacy,
)
from query_latency import DenseBaseline, dense_queries_of  # noqa: E402

import spacy_segment_influence.pipeline.component as component_mod  # noqa: E402
from spacy_segment_influence.influence.index import SegmentIndex  # noqa: E402
from spacy_segment_influence.ner import bridge  # noqa: E402

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"  # ../shared next to the checkout


def median_ms(fn, items, warm=3):
    for x in items[:warm]:
        fn(x)
    wall, cpu = [], []
    for x in items:
        c, w = time.process_time(), time.perf_counter()
        fn(x)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--train", default=str(CONLL / "train_original.jsonl"))
    parser.add_argument("--dev", default=str(CONLL / "validation_original.jsonl"))
    parser.add_argument("--n-single", type=int, default=100)
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_blas_threads(args.blas_threads)
    torch.set_num_threads(args.threads)

    nlp = spacy.load(args.model)
    train_path = write_spacy(load_docs(args.train, nlp.vocab), Path(tempfile.mkdtemp()) / "train.spacy")
    component = nlp.add_pipe("segment_influence")
    component.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)
    index = component.index
    g = index.stored
    print(
        f"model {args.model}; index {len(index)} segments, {g.h.shape[0]} rows, {index.nbytes / 1e6:.1f} MB; "
        f"torch threads {torch.get_num_threads()}, OpenBLAS threads {blas_threads()}; {load()}"
    )

    dev = load_docs(args.dev, nlp.vocab)
    with nlp.select_pipes(disable=[component.name]):
        docs = list(nlp.pipe(bridge.unannotated(d) for d in dev))
    ents = [(i, e) for i, d in enumerate(docs) for e in d.ents]
    step = max(1, len(ents) // args.n_single)
    chosen = ents[::step][: args.n_single]
    ids = sorted({i for i, _ in chosen})
    pos = {i: p for p, i in enumerate(ids)}
    grads = query_gradients(component, [docs[i] for i in ids], [(pos[i], s) for i, s in chosen])
    prepared = index.curvature.prepare_queries(grads).grads
    qs = list(range(len(chosen)))

    tensors = index.device_tensors(torch.device("cpu"))
    dense_rows = next(tensors.chunks(len(g.h))).dense  # the whole CSR block as one chunk
    t_h, t_r = torch.from_numpy(np.asarray(g.h)), torch.from_numpy(np.asarray(g.r))
    segment_of_row = torch.from_numpy(np.repeat(np.arange(len(index)), np.diff(g.offsets)))
    qd = [torch.from_numpy(prepared.dense[q : q + 1].T.astype(np.float32).copy()) for q in qs]
    qh = [torch.from_numpy(prepared.select(q, q + 1).h.astype(np.float32)) for q in qs]
    qr = [torch.from_numpy(prepared.select(q, q + 1).r.astype(np.float32)) for q in qs]

    def factored_part(q):
        per_row = ((t_h @ qh[q].T) * (t_r @ qr[q].T)).sum(1)
        return torch.zeros(len(index)).index_add_(0, segment_of_row, per_row)

    searched = [g.h, g.r, g.dense.values, g.dense.columns, g.dense.indptr]
    baseline = DenseBaseline(index)
    dense_q = dense_queries_of(index, index.curvature.prepare_queries(grads))
    rows = [
        ("top_k (whole search)", lambda q: index.top_k(grads.select(q, q + 1), k=5)),
        ("  dense block (CSR) @ q_D alone", lambda q: dense_rows @ qd[q]),
        ("  factored W part alone (h, r, segment sum)", factored_part),
        ("  query prep (whiten + norms)", lambda q: index.curvature.prepare_queries(grads.select(q, q + 1))),
        ("floor: float sum over the searched arrays", lambda q: [np.add.reduce(a, axis=None) for a in searched]),
        ("floor: int64 pass over the same bytes", lambda q: read_floor(searched)()),
        ("dense baseline (query_latency.py's), numpy", lambda q: baseline.top_k_numpy(dense_q[q], 5)),
    ]
    print(f"\nA. single query, median over {len(qs)} ({load()})")
    print(f"{'':48}{'wall ms':>9}{'CPU ms':>9}{'MB':>8}")
    sizes = {0: index.nbytes, 6: baseline.nbytes}
    for n, (label, fn) in enumerate(rows):
        wall, cpu = median_ms(fn, qs)
        size = f"{sizes[n] / 1e6:8.1f}" if n in sizes else ""
        print(f"{label:48}{wall:9.2f}{cpu:9.2f}{size}")

    # B. component.pipe, by function
    totals = defaultdict(float)
    targets = [
        (bridge, "fingerprint", "fingerprint check"),
        (bridge, "head_features", "listener features"),
        (bridge, "tag_ids", "tag ids"),
        (component_mod, "segment_gradients", "segment gradients"),
        (SegmentIndex, "top_k", "SegmentIndex.top_k"),
        (component_mod.SegmentInfluence, "_hit", "hit records"),
        (component_mod.srsly, "json_dumps", "json_dumps into user_data"),
    ]
    n_ents = sum(len(d.ents) for d in docs)
    with instrumented(targets, timer(totals)):
        start = time.perf_counter()
        for _ in component.pipe(docs):
            pass
        total = time.perf_counter() - start
    print(
        f"\nB. component.pipe over {len(docs)} annotated validation docs, {n_ents} entities: {total:.2f} s "
        f"({1e3 * total / n_ents:.3f} ms/entity; {load()}); inclusive, nested entries overlap"
    )
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {label:30}{seconds:8.2f} s {100 * seconds / total:6.1f} %")


if __name__ == "__main__":
    main()
