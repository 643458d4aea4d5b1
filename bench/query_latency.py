"""Query latency and memory of the segment_influence index on a full CoNLL-2003 train
index (issue 3, 5b/5c).

    python bench/query_latency.py MODEL_DIR [--train TRAIN.jsonl] [--dev VALIDATION.jsonl]
        [--n-single 200] [--k 5] [--repeats 2] [--blas-threads B] [--skip-batched]

Indexes the train corpus with the model (curvature kfac, cosine-normalised: the
component's defaults), then:
(b) single-entity latency, median over --n-single predicted validation entities, each
    query timed under every method in turn (rotating order), with torch's default thread
    count and with torch.set_num_threads(1), interleaved query by query:
      explain       component.explain(span) end to end (fingerprint check, encoding the
                    sentence, its segment gradient, search, hit records)
      top_k         index.top_k on the precomputed query gradient (search alone)
      top_k f16     the same over a float16 copy of the index
      dense numpy   the paper-style baseline: an N_tokens x (C*E) float32 matrix of
                    per-token gradients kron(r_t, h_t) (+ the [S, D] transition block),
                    one matrix-vector product, a segment sum, top-k (numpy)
      dense torch   the same matrices, product and segment sum in torch
      floor         one numpy pass over the bytes the index search reads (h, r, the
                    dense block's CSR arrays)
    and the memory of each.
(c) all predicted validation entities in one run: nlp.pipe over the validation texts
    with and without segment_influence (interleaved repeats), and the component alone
    over already-annotated docs.
"""

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import spacy
import torch
from influence_common import (  # noqa: E402
    Clock,
    blas_threads,
    load,
    load_docs,
    maxrss_mb,
    query_gradients,
    read_floor,
    set_blas_threads,
    write_spacy,
)

from spacy_segment_influence.influence.index import SegmentIndex  # noqa: E402
from spacy_segment_influence.ner import bridge  # noqa: E402

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"  # ../shared next to the checkout


class DenseBaseline:
    """Per-token flattened W gradients kron(r_t, h_t) as float32 rows, plus the full
    [S, D] dense block, scored like the index (cosine with the index's own norms;
    queries come as `dense_queries` vectors, already divided by their norm)."""

    def __init__(self, index: SegmentIndex, rows_per_chunk: int = 4096):
        g = index.stored
        width, n_tags, _ = g.shape
        self.n_weights = n_tags * width
        self.matrix = np.empty((g.h.shape[0], self.n_weights), dtype=np.float32)
        for t0 in range(0, len(self.matrix), rows_per_chunk):
            h = np.asarray(g.h[t0 : t0 + rows_per_chunk], np.float32)
            r = np.asarray(g.r[t0 : t0 + rows_per_chunk], np.float32)
            self.matrix[t0 : t0 + len(h)] = np.einsum("nc,ne->nce", r, h).reshape(len(h), self.n_weights)
        self.dense = np.ascontiguousarray(g.dense.to_dense(), dtype=np.float32)
        self.starts = np.asarray(g.offsets[:-1])
        self.inv_norms = (1.0 / np.where(index.norms > 0, index.norms, np.inf)).astype(np.float32)
        self.normalize = index.normalize
        self.t_matrix = torch.from_numpy(self.matrix)
        self.t_dense = torch.from_numpy(self.dense)
        self.t_segment = torch.from_numpy(np.repeat(np.arange(len(self.starts)), np.diff(g.offsets)))
        self.t_inv_norms = torch.from_numpy(self.inv_norms)

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes + self.dense.nbytes + self.starts.nbytes + self.inv_norms.nbytes

    def scores_numpy(self, query: np.ndarray) -> np.ndarray:
        per_token = self.matrix @ query[: self.n_weights]
        scores = np.add.reduceat(per_token, self.starts) + self.dense @ query[self.n_weights :]
        if self.normalize:
            scores *= self.inv_norms
        return scores

    def top_k_numpy(self, query: np.ndarray, k: int):
        scores = self.scores_numpy(query)
        top = np.argpartition(-scores, k)[:k]
        bottom = np.argpartition(scores, k)[:k]
        return top[np.argsort(-scores[top])], bottom[np.argsort(scores[bottom])]

    def top_k_torch(self, query: np.ndarray, k: int):
        q = torch.from_numpy(query)
        per_token = self.t_matrix @ q[: self.n_weights]
        scores = torch.zeros(len(self.starts)).index_add_(0, self.t_segment, per_token)
        scores += self.t_dense @ q[self.n_weights :]
        if self.normalize:
            scores *= self.t_inv_norms
        return scores.topk(k).indices, (-scores).topk(k).indices


def dense_queries_of(index: SegmentIndex, prepared) -> np.ndarray:
    """[Q, P] float32 query vectors for DenseBaseline: H^-1 applied as the index
    splits it, divided by sqrt(g^T H^-1 g) when the index is cosine-normalised."""
    vectors = prepared.to_dense()
    if index.normalize:
        vectors = vectors / np.sqrt(np.maximum(prepared.sq_norms, 1e-300))[:, None]
    return vectors.astype(np.float32)


def ms(x: float) -> str:
    return f"{1e3 * x:9.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--train", default=str(CONLL / "train_original.jsonl"))
    parser.add_argument("--dev", default=str(CONLL / "validation_original.jsonl"))
    parser.add_argument("--n-train", type=int, default=0, help="first N train docs (0 = all)")
    parser.add_argument("--n-single", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the batched run (c)")
    parser.add_argument("--blas-threads", type=int, default=0, help="numpy OpenBLAS threads (0 = default)")
    parser.add_argument("--batch-size", type=int, default=256, help="nlp.pipe batch size in (c)")
    parser.add_argument("--skip-batched", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.blas_threads:
        set_blas_threads(args.blas_threads)
    default_threads = torch.get_num_threads()

    nlp = spacy.load(args.model)
    train_docs = load_docs(args.train, nlp.vocab, args.n_train)
    tmp = Path(tempfile.mkdtemp(prefix="query_latency_"))
    train_path = write_spacy(train_docs, tmp / "train.spacy")
    component = nlp.add_pipe("segment_influence", config={"k": args.k})
    print(
        f"model {args.model}; torch threads {default_threads}; OpenBLAS threads {blas_threads()}; "
        f"{os.cpu_count()} CPUs; {load()}"
    )
    start = time.perf_counter()
    component.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)
    build_s = time.perf_counter() - start
    index = component.index
    g = index.stored
    width, n_tags, n_dense = g.shape
    print(
        f"indexed {len(train_docs)} train docs in {build_s:.1f} s ({load()}): {len(index)} segments, "
        f"{g.h.shape[0]} token rows; E={width} (with bias), C={n_tags}, D={n_dense}; "
        f"curvature {index.curvature.name}, normalize {index.normalize}, dtype {index.dtype}"
    )
    nnz = g.dense.values.size
    print(
        f"index arrays: h {g.h.nbytes / 1e6:.1f} MB, r {g.r.nbytes / 1e6:.1f} MB, dense block CSR "
        f"{g.dense.nbytes / 1e6:.1f} MB ({nnz / len(index):.1f} nonzeros per segment of {n_dense}, "
        f"{np.unique(g.dense.columns).size} columns used), offsets+norms "
        f"{(g.offsets.nbytes + index.norms.nbytes) / 1e6:.1f} MB; total {index.nbytes / 1e6:.1f} MB"
    )
    component16 = nlp.add_pipe(
        "segment_influence", name="segment_influence_f16", config={"k": args.k, "dtype": "float16"}
    )
    component16.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)
    nlp.remove_pipe("segment_influence_f16")
    index16 = component16.index

    # -- queries: predicted validation entities (gold tokens) ----------------------------------
    dev_gold = load_docs(args.dev, nlp.vocab)
    with nlp.select_pipes(disable=[component.name]):
        dev_docs = list(nlp.pipe((bridge.unannotated(d) for d in dev_gold), batch_size=args.batch_size))
    all_ents = [(i, ent) for i, doc in enumerate(dev_docs) for ent in doc.ents]
    chosen = sorted(random.Random(args.seed).sample(range(len(all_ents)), min(args.n_single, len(all_ents))))
    queries = [all_ents[j] for j in chosen]
    doc_ids = sorted({i for i, _ in queries})
    position = {i: p for p, i in enumerate(doc_ids)}
    grads = query_gradients(component, [dev_docs[i] for i in doc_ids], [(position[i], s) for i, s in queries])
    prepared = index.curvature.prepare_queries(grads)
    dense_queries = dense_queries_of(index, prepared)
    print(
        f"{len(all_ents)} predicted entities in {len(dev_docs)} validation docs; timing {len(queries)} of them "
        f"(mean {np.mean(grads.lengths):.2f} query rows); k={args.k}"
    )

    baseline = DenseBaseline(index)
    searched = [g.h, g.r, g.dense.values, g.dense.columns, g.dense.indptr]
    g16 = index16.stored
    floor_fn = read_floor(searched)
    floor16_fn = read_floor([g16.h, g16.r, g16.dense.values, g16.dense.columns, g16.dense.indptr])
    floor_float = lambda: [np.add.reduce(a, axis=None) for a in searched]  # noqa: E731

    # agreement of the dense baseline with the index (first 20 queries)
    agree_ids = agree_scores = 0
    n_check = min(20, len(queries))
    for q in range(n_check):
        ours = index.top_k(grads.select(q, q + 1), k=args.k)[0].supporters
        dense_top, _ = baseline.top_k_numpy(dense_queries[q], args.k)
        agree_ids += list(dense_top[: len(ours)]) == [i for i, _ in ours]
        theirs = baseline.scores_numpy(dense_queries[q])[dense_top[: len(ours)]]
        agree_scores += np.allclose([v for _, v in ours], theirs, rtol=1e-4, atol=1e-6)
    print(
        f"dense baseline vs index top_k, first {n_check} queries: same top-{args.k} scores (rtol 1e-4) "
        f"{agree_scores}/{n_check}, same ids in the same order {agree_ids}/{n_check} (ids differ on score ties)"
    )

    def explain(q):
        i, span = queries[q]
        return component.explain(span, k=args.k)

    methods = {
        "explain": explain,
        "top_k": lambda q: index.top_k(grads.select(q, q + 1), k=args.k),
        "top_k f16": lambda q: index16.top_k(grads.select(q, q + 1), k=args.k),
        "dense numpy": lambda q: baseline.top_k_numpy(dense_queries[q], args.k),
        "dense torch": lambda q: baseline.top_k_torch(dense_queries[q], args.k),
        "floor (int64 pass)": lambda q: floor_fn(),
        "floor (float sum)": lambda q: floor_float(),
        "floor f16 (int64)": lambda q: floor16_fn(),
        "fingerprint": lambda q: bridge.fingerprint(nlp, "crf_ner"),
    }
    variants = {f"T={default_threads}": default_threads, "T=1": 1}
    clock = Clock()
    for fn in methods.values():  # warm-up
        fn(0)
    names = list(methods)
    for q in range(len(queries)):
        order = list(variants.items()) if q % 2 == 0 else list(variants.items())[::-1]
        for vname, n_threads in order:
            torch.set_num_threads(n_threads)
            rot = q % len(names)
            for name in names[rot:] + names[:rot]:
                clock.run(f"{name} {vname}", lambda name=name, q=q: methods[name](q))
    torch.set_num_threads(default_threads)

    print(
        f"\n(b) single-entity latency, median over {len(queries)} queries (ms): wall clock and process CPU "
        f"time; {load()}"
    )
    vs = list(variants)
    print(f"{'method':22}" + "".join(f"{'wall ' + v:>12}{'CPU ' + v:>12}" for v in vs) + f"{'memory MB':>12}")
    memory = {
        "top_k": index.nbytes,
        "top_k f16": index16.nbytes,
        "dense numpy": baseline.nbytes,
        "dense torch": baseline.nbytes,
    }
    for name in names:
        mem = f"{memory[name] / 1e6:12.1f}" if name in memory else ""
        print(
            f"{name:22}"
            + "".join(ms(clock.median(f"{name} {v}")) + "   " + ms(clock.cpu_median(f"{name} {v}")) + "   " for v in vs)
            + mem
        )
    print("ratios (medians):")
    for v in vs:
        for kind, get in (("wall", clock.median), ("CPU ", clock.cpu_median)):
            t = {name: get(f"{name} {v}") for name in names}
            dense = min(t["dense numpy"], t["dense torch"])
            floor = min(t["floor (int64 pass)"], t["floor (float sum)"])
            print(
                f"  {v} {kind}: dense (faster of numpy/torch) / top_k = {dense / t['top_k']:.1f}x (target >= 5); "
                f"dense / explain = {dense / t['explain']:.1f}x; top_k / floor = {t['top_k'] / floor:.2f}x "
                f"(target <= 2); top_k f16 / f16 floor = {t['top_k f16'] / t['floor f16 (int64)']:.2f}x; "
                f"dense numpy / floor = {t['dense numpy'] / floor:.1f}x"
            )
    print(
        f"  memory: dense / index = {baseline.nbytes / index.nbytes:.1f}x (target >= 10), "
        f"dense / f16 index = {baseline.nbytes / index16.nbytes:.1f}x; "
        f"W block alone: dense matrix / (h + r) = {baseline.matrix.nbytes / (g.h.nbytes + g.r.nbytes):.1f}x; "
        f"dense block: [S, D] / CSR = {baseline.dense.nbytes / g.dense.nbytes:.1f}x"
    )
    print(f"  mean load during (b): {statistics.mean(x for loads in clock.loads.values() for x in loads):.2f}")

    if args.skip_batched:
        print(f"\npeak RSS {maxrss_mb():.0f} MB")
        return
    # -- (c) all validation entities batched ----------------------------------------------------
    texts = [d.text for d in dev_gold]
    annotated = dev_docs

    def pipe(with_influence: bool):
        disable = [] if with_influence else [component.name]
        with nlp.select_pipes(disable=disable):
            return sum(len(d.ents) for d in nlp.pipe(texts, batch_size=args.batch_size))

    def component_alone():
        return sum(len(d.ents) for d in component.pipe(annotated, batch_size=args.batch_size))

    batched = {
        "nlp.pipe without": lambda: pipe(False),
        "nlp.pipe with": lambda: pipe(True),
        "component alone": component_alone,
    }
    counts = {}
    bclock = Clock()
    for vname, n_threads in variants.items():
        torch.set_num_threads(n_threads)
        for rep in range(args.repeats):
            order = list(batched) if rep % 2 == 0 else list(batched)[::-1]
            for name in order:
                counts[name] = bclock.run(f"{name} {vname}", batched[name])
                print(
                    f"  {vname} repeat {rep}: {name:17} {bclock.times[f'{name} {vname}'][-1]:7.2f} s ({load()})",
                    flush=True,
                )
    torch.set_num_threads(default_threads)
    n_ents = counts["nlp.pipe with"]
    print(
        f"\n(c) {len(texts)} validation texts, {n_ents} predicted entities (texts tokenised by nlp; "
        f"{len(annotated)} gold-token docs with {counts['component alone']} entities for the component "
        f"alone); batch size {args.batch_size}; median of {args.repeats}"
    )
    print(f"{'':22}" + "".join(f"{'wall s ' + v:>12}{'ms/entity':>11}{'CPU s':>8}" for v in variants))
    for name in batched:
        n = counts[name] if name != "nlp.pipe without" else n_ents
        print(
            f"{name:22}"
            + "".join(
                f"{bclock.median(f'{name} {v}'):12.2f}{1e3 * bclock.median(f'{name} {v}') / n:11.3f}"
                f"{bclock.cpu_median(f'{name} {v}'):8.2f}"
                for v in variants
            )
        )
    for v in variants:
        over = bclock.median(f"nlp.pipe with {v}") - bclock.median(f"nlp.pipe without {v}")
        over_cpu = bclock.cpu_median(f"nlp.pipe with {v}") - bclock.cpu_median(f"nlp.pipe without {v}")
        print(
            f"  {v}: influence overhead {over:.2f} s wall = {1e3 * over / n_ents:.3f} ms/entity "
            f"({over_cpu:.2f} s CPU = {1e3 * over_cpu / n_ents:.3f} ms/entity); with/without = "
            f"{bclock.median(f'nlp.pipe with {v}') / bclock.median(f'nlp.pipe without {v}'):.2f}x wall, "
            f"{bclock.cpu_median(f'nlp.pipe with {v}') / bclock.cpu_median(f'nlp.pipe without {v}'):.2f}x CPU; "
            f"mean load {statistics.mean(bclock.loads[f'nlp.pipe with {v}']):.2f}"
        )
    print(f"\npeak RSS {maxrss_mb():.0f} MB")


if __name__ == "__main__":
    main()
