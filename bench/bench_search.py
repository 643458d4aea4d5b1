"""Search latency and memory of SegmentIndex against a dense per-token baseline.

Synthetic data shaped like a full CoNLL-2003 train index: 23,500 segments over
34,000 token rows, E = 385 (384 features + bias), C = 17 tags, D = 323.

    python bench/bench_search.py [--device cpu] [--repeats 20] [--queries 5900]

Figures, side by side for float16 and float32 indexes:
(a) single-query top_k latency (median over repeats);
(b) a dense baseline storing each token's full C * E gradient as float32, as
    the paper's code does: one query is a product with that matrix plus a
    segment sum;
(c) the memory-bandwidth floor: one numpy read pass over the index's bytes;
(d) all dev-sized queries (5,900) through top_k end to end.
"""
import argparse
import itertools
import os
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from spacy_segment_influence.curvature import KFACCurvature
from spacy_segment_influence.gradients import FactoredGradients
from spacy_segment_influence.index import SegmentIndex

S, N, E, C, D = 23_500, 34_000, 385, 17, 323
K = 10


def synthetic(rng: np.random.Generator, n_segments: int, n_rows: int):
    """Segments of >= 1 token, features with a bias column, r = marginal - one-hot."""
    lengths = 1 + np.bincount(rng.integers(0, n_segments, n_rows - n_segments), minlength=n_segments)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    h = np.concatenate([rng.standard_normal((n_rows, E - 1), dtype=np.float32), np.ones((n_rows, 1), np.float32)], 1)
    logits = 3 * rng.standard_normal((n_rows, C), dtype=np.float32)
    marginals = np.exp(logits - logits.max(1, keepdims=True))
    marginals /= marginals.sum(1, keepdims=True)
    r = marginals - np.eye(C, dtype=np.float32)[rng.integers(0, C, n_rows)]
    dense = 0.1 * rng.standard_normal((n_segments, D), dtype=np.float32)
    return FactoredGradients(h, r, offsets, dense), marginals


def timed(fn: Callable[[], object], repeats: int) -> Tuple[float, float]:
    """(median, best) seconds over repeats, after one warm-up call. The best
    is the figure least disturbed by other processes on a shared machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def read_floor(arrays: List[np.ndarray], repeats: int) -> float:
    """One pass reading every byte: integer sums over 8-byte views are
    memory-bound, unlike float16 arithmetic in numpy."""
    views = [a.reshape(-1).view(np.int64 if a.nbytes % 8 == 0 else np.uint8) for a in arrays]
    return timed(lambda: [v.sum() for v in views], repeats)[0]


class DenseBaseline:
    """Every token's flattened gradient kron(r_t, h_t) as a float32 row."""

    def __init__(self, grads: FactoredGradients, rows_per_chunk: int = 2048):
        n_weights = grads.n_tags * grads.width
        self.matrix = np.empty((grads.h.shape[0], n_weights), dtype=np.float32)
        for t0 in range(0, len(self.matrix), rows_per_chunk):
            h, r = grads.h[t0 : t0 + rows_per_chunk], grads.r[t0 : t0 + rows_per_chunk]
            self.matrix[t0 : t0 + len(h)] = np.einsum("nc,ne->nce", r, h).reshape(len(h), n_weights)
        self.dense = np.ascontiguousarray(grads.dense, dtype=np.float32)
        self.starts = grads.offsets[:-1]
        self.n_weights = n_weights

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes + self.dense.nbytes + self.starts.nbytes

    def top_k(self, query: np.ndarray, k: int) -> np.ndarray:
        per_token = self.matrix @ query[: self.n_weights]
        scores = np.add.reduceat(per_token, self.starts) + self.dense @ query[self.n_weights :]
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])]


def bench_index(index: SegmentIndex, queries: FactoredGradients, args) -> Dict[str, float]:
    singles = itertools.cycle([queries.select(i, i + 1) for i in range(args.repeats)])
    single, best = timed(lambda: index.top_k(next(singles), K, args.device), args.repeats)
    start = time.perf_counter()
    index.top_k(queries, K, args.device)
    batched = time.perf_counter() - start
    stored = index.grads
    floor = read_floor([stored.h, stored.r, stored.dense], args.repeats)
    return {"single": single, "best": best, "batched": batched, "floor": floor, "nbytes": index.nbytes}


def row(label: str, values: Sequence[float], fmt: str) -> None:
    print(f"{label:40}" + "".join(f"{v:{fmt}}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--queries", type=int, default=5900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    train, marginals = synthetic(rng, S, N)
    queries, _ = synthetic(rng, args.queries, int(args.queries * N / S))
    start = time.perf_counter()
    curvature = KFACCurvature.fit(train.h, marginals, train.dense, damping=1e-3)
    metadata = [{"id": i} for i in range(S)]
    indexes = {
        dtype: SegmentIndex.build(train, metadata, curvature, normalize=False, dtype=dtype)
        for dtype in ("float16", "float32")
    }
    build_s = (time.perf_counter() - start) / 2
    figures = {dtype: bench_index(index, queries, args) for dtype, index in indexes.items()}

    baseline = DenseBaseline(indexes["float32"].grads)
    dense_queries = itertools.cycle(
        curvature.prepare_queries(queries.select(0, args.repeats)).to_dense().astype(np.float32)
    )
    dense_single, dense_best = timed(lambda: baseline.top_k(next(dense_queries), K), args.repeats)
    ours_ids = [i for i, _ in indexes["float32"].top_k(queries.select(0, 1), K)[0].supporters]
    first_query = curvature.prepare_queries(queries.select(0, 1)).to_dense()[0].astype(np.float32)
    agree = list(baseline.top_k(first_query, K)[: len(ours_ids)]) == ours_ids

    f16, f32 = figures["float16"], figures["float32"]
    print(f"S={S} segments, N={N} token rows, E={E}, C={C}, D={D}; k={K}; device={args.device}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    print(f"KFAC fit + build: {build_s:.2f} s per index")
    print(f"{'':40}{'float16':>12}{'float32':>12}{'dense f32':>12}")
    row("index memory (MB)", [f16["nbytes"] / 1e6, f32["nbytes"] / 1e6, baseline.nbytes / 1e6], "12.1f")
    row("(a,b) single-query latency, median (ms)", [f16["single"] * 1e3, f32["single"] * 1e3, dense_single * 1e3], "12.2f")
    row("      best of repeats (ms)", [f16["best"] * 1e3, f32["best"] * 1e3, dense_best * 1e3], "12.2f")
    row("(c) read-pass floor (ms)", [f16["floor"] * 1e3, f32["floor"] * 1e3], "12.2f")
    row(f"(d) {args.queries} queries end to end (s)", [f16["batched"], f32["batched"]], "12.2f")
    row("    per query (ms)", [f16["batched"] / args.queries * 1e3, f32["batched"] / args.queries * 1e3], "12.3f")
    row("dense / ours latency (median)", [dense_single / f16["single"], dense_single / f32["single"]], "12.1f")
    row("dense / ours memory", [baseline.nbytes / f16["nbytes"], baseline.nbytes / f32["nbytes"]], "12.1f")
    row("ours / floor latency (median)", [f16["single"] / f16["floor"], f32["single"] / f32["floor"]], "12.1f")
    print(f"dense baseline top-{K} == ours (float32, query 0): {agree}")


if __name__ == "__main__":
    main()
