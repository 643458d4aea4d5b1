"""How every cost of the index grows with the corpus (issue 14), on one machine.

    python bench/scaling.py [--model MODEL_DIR] [--n-docs 2000] [--sizes 20000,200000]
        [--full] [--huge] [--dtypes float32,float16] [--queries 20] [--batch 256]
        [--ray-docs 1000] [--no-ray] [--no-curve] [--out bench/output/scaling]

Source: a crf_ner pipeline (--model; without it a small tok2vec one is trained on the
first --n-docs CoNLL-2003 train sentences and cached under --out) indexes --n-docs CoNLL
train sentences in one process (kfac; build seconds per sentence).
Cost curve: for each size (default 20k and 200k segments; --full adds 2M, --huge 20M)
and dtype, a synthetic index of that many segments drawn with replacement from the
real index's stored factors is written to disk, then a fresh subprocess memory-maps it
and measures: bytes per segment, single-query latency (median over --queries real
segment gradients, k = 5, after one warm-up) against the memory-bandwidth floor (the
bytes search reads divided by the bandwidth of a large numpy copy, measured in the same
process), batched queries per second (--batch queries per call), and peak RSS (VmHWM).
Ray (unless --no-ray): a local cluster (`ray.init(num_cpus=2)`) builds the index of the
first --ray-docs docs with 1 and then 2 workers (the cluster's and the actors' start,
which loads the pipeline, timed apart; top-5 compared with the one-process index for
every source segment), and a sharded search over a synthetic index of the first size
(float32) runs on 1 and 2 shard actors.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import spacy
import srsly
from influence_common import load, load_docs, maxrss_mb  # noqa: E402

from spacy_segment_influence.influence.gradients import FactoredGradients  # noqa: E402
from spacy_segment_influence.influence.index import SegmentIndex  # noqa: E402
from spacy_segment_influence.influence.index_build import build_shard, fit_index  # noqa: E402
from spacy_segment_influence.storage import checksums  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT.parent / "shared" / "data" / "conll2003"  # the shared data beside the checkout
SETTINGS = {
    "ner": "crf_ner",
    "granularity": "entities",
    "curvature": "kfac",
    "damping": 0.001,
    "normalize": True,
    "dtype": "float32",
    "batch_size": 64,
}
# Search reads these arrays; the rest (offsets, norms) is small and read once.
SEARCHED = ("h", "r", "dense_indptr", "dense_columns", "dense_values")


def source_model(args) -> Path:
    """--model, or a small tok2vec crf_ner trained on CoNLL (cached)."""
    if args.model:
        return Path(args.model)
    path = Path(args.out) / "model"
    if (path / "meta.json").exists():
        return path
    from spacy.training import Example
    from thinc.api import Config, fix_random_seed

    fix_random_seed(0)
    config = Config().from_disk(ROOT / "configs" / "crf_ner_tok2vec.cfg")
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    docs = load_docs(CONLL / "train_original.jsonl", nlp.vocab, args.n_docs)
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(args.train_steps):
        nlp.update(random.sample(examples, 32), sgd=optimizer, drop=0.1, losses={})
    nlp.to_disk(path)
    return path


def build_source(args, model: Path):
    """The real index of --n-docs CoNLL sentences, and its raw gradients (queries)."""
    nlp = spacy.load(model)
    docs = load_docs(CONLL / "train_original.jsonl", nlp.vocab, args.n_docs)
    start = time.perf_counter()
    shard = build_shard(nlp, SETTINGS, docs)
    index = fit_index(nlp, SETTINGS, shard, "segment_influence")
    seconds = time.perf_counter() - start
    records = len(srsly.json_dumps(index.metadata)) / len(index)
    print(
        f"source: {model}; {len(docs)} CoNLL sentences, {len(index)} segments; one-process build "
        f"{seconds:.1f} s = {1e3 * seconds / len(docs):.2f} ms per sentence ({load()}); records "
        f"{records:.0f} B per segment as JSON (the synthetic indexes store null records)",
        flush=True,
    )
    return index, shard.grads, {"docs": len(docs), "segments": len(index), "build_s": seconds, "record_b": records}


def write_synthetic(source: SegmentIndex, n_segments: int, dtype: str, path: Path, chunk: int = 1 << 18) -> None:
    """An index of n_segments segments drawn with replacement from `source`, written
    chunk by chunk straight into .npy files (never the whole index in memory)."""
    if path.exists():
        shutil.rmtree(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    source.to_disk(tmp)  # settings, curvature arrays; its big arrays are replaced below
    settings = srsly.read_json(tmp / "settings.json")
    stored = source.stored
    rng = np.random.default_rng(n_segments)
    picks = rng.integers(0, len(source), n_segments)
    lengths = np.diff(stored.offsets)[picks]
    nnz = np.diff(stored.dense.indptr)[picks]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    n_rows, n_entries = int(offsets[-1]), int(indptr[-1])
    out = {
        "h": np.lib.format.open_memmap(tmp / "h.npy", "w+", dtype, (n_rows, stored.h.shape[1])),
        "r": np.lib.format.open_memmap(tmp / "r.npy", "w+", dtype, (n_rows, stored.r.shape[1])),
        "dense_columns": np.lib.format.open_memmap(tmp / "dense_columns.npy", "w+", np.int32, (n_entries,)),
        "dense_values": np.lib.format.open_memmap(tmp / "dense_values.npy", "w+", dtype, (n_entries,)),
    }
    for s0 in range(0, n_segments, chunk):
        ids = picks[s0 : s0 + chunk]
        rows = _rows(stored.offsets, ids)
        t0, t1 = offsets[s0], offsets[min(s0 + chunk, n_segments)]
        out["h"][t0:t1] = stored.h[rows]
        out["r"][t0:t1] = stored.r[rows]
        entries = _rows(stored.dense.indptr, ids)
        n0, n1 = indptr[s0], indptr[min(s0 + chunk, n_segments)]
        out["dense_columns"][n0:n1] = stored.dense.columns[entries]
        out["dense_values"][n0:n1] = stored.dense.values[entries]
    for array in out.values():
        array.flush()
    del out
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "dense_indptr.npy", indptr)
    np.save(tmp / "norms.npy", np.asarray(source.norms)[picks])
    srsly.write_json(tmp / "metadata.json", [None] * n_segments)  # records: see BENCHMARKS.md
    srsly.write_json(tmp / "settings.json", settings)
    checksums.write_manifest(tmp)  # the source's manifest describes the arrays replaced above
    os.replace(tmp, path)


def _rows(offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The rows offsets[i]:offsets[i + 1] of each id, concatenated."""
    lengths = np.diff(offsets)[ids]
    starts = np.repeat(offsets[ids], lengths)
    return starts + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def copy_bandwidth(n_bytes: int = 1 << 28, repeats: int = 5) -> Tuple[float, float]:
    """Bytes per second of a large numpy copy (each byte read once, counted as read
    bandwidth, the search's only traffic), by wall clock and by process CPU time (best
    of the repeats)."""
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    times = [_timed(lambda: np.copyto(dst, src)) for _ in range(repeats)]
    return n_bytes / min(t[0] for t in times), n_bytes / min(t[1] for t in times)


def _timed(fn) -> Tuple[float, float]:
    """Wall and process CPU seconds of fn(): on a shared machine the wall time includes
    waiting for a core, the CPU time does not."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(args) -> dict:
    """--measure: in this fresh process, memory-map the index and time queries."""
    import torch

    rss_start = maxrss_mb()
    index = SegmentIndex.from_disk(args.measure)
    rss_loaded = maxrss_mb()
    queries = _load_queries(Path(args.queries_file))
    searched = sum(np.asarray(getattr(index.stored, n, None)).nbytes for n in ("h", "r"))
    searched += index.stored.dense.nbytes
    costs = search_costs(index, queries, args.n_queries, args.batch)
    on_disk = sum(f.stat().st_size for f in Path(args.measure).iterdir())
    peak_rss, anonymous = maxrss_mb(), _rss_anon_mb()
    wall_bandwidth, cpu_bandwidth = copy_bandwidth()  # last: its buffers would count in the peak RSS
    return {
        "segments": len(index),
        "dtype": index.dtype,
        "bytes_per_segment": index.nbytes / len(index),
        "disk_bytes_per_segment": on_disk / len(index),
        "searched_mb": searched / 1e6,
        "copy_gb_s": wall_bandwidth / 1e9,
        "copy_cpu_gb_s": cpu_bandwidth / 1e9,
        "floor_ms": 1e3 * searched / wall_bandwidth,
        "floor_cpu_ms": 1e3 * searched / cpu_bandwidth,
        **costs,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": peak_rss,
        "rss_anon_mb": anonymous,
        "torch_threads": torch.get_num_threads(),
        "load": load(),
    }


def same_top_k(one: SegmentIndex, other: SegmentIndex, queries: FactoredGradients, k: int = 5) -> str:
    """How many queries get the same top-k supporters and opposers (ids, in order)."""
    pairs = zip(one.top_k(queries, k=k), other.top_k(queries, k=k))
    same = sum(
        [i for i, _ in a.supporters] == [i for i, _ in b.supporters]
        and [i for i, _ in a.opposers] == [i for i, _ in b.opposers]
        for a, b in pairs
    )
    return f"{same}/{len(queries)}"


def search_costs(index, queries: FactoredGradients, n_queries: int, batch_size: int) -> dict:
    """Median single-query wall and CPU milliseconds over n_queries (after one warm-up
    query), and queries per second with batch_size queries per call; k = 5."""
    index.top_k(queries.select(0, 1), k=5)
    single = [_timed(lambda q=q: index.top_k(queries.select(q, q + 1), k=5)) for q in range(n_queries)]
    batch = queries.take(np.arange(batch_size) % len(queries))
    wall, cpu = _timed(lambda: index.top_k(batch, k=5, batch_size=batch_size))
    return {
        "single_ms": 1e3 * statistics.median(t[0] for t in single),
        "single_cpu_ms": 1e3 * statistics.median(t[1] for t in single),
        "batched_qps": batch_size / wall,
        "batched_cpu_qps": batch_size / cpu,
    }


def _rss_anon_mb() -> float:
    """Resident private memory now (RssAnon): VmHWM also counts the mapped index's
    pages, which are page cache the kernel reclaims under pressure."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _save_queries(grads: FactoredGradients, path: Path) -> None:
    np.savez(path, h=grads.h, r=grads.r, offsets=grads.offsets, dense=grads.dense)


def _load_queries(path: Path) -> FactoredGradients:
    data = np.load(path)
    return FactoredGradients(data["h"], data["r"], data["offsets"], data["dense"])


def cost_curve(args, source: SegmentIndex, queries: FactoredGradients) -> list:
    out = Path(args.out)
    queries_file = out / "queries.npz"
    _save_queries(queries.select(0, min(len(queries), max(args.n_queries, args.batch))), queries_file)
    rows = []
    print(
        f"\n{'segments':>10} {'dtype':>8} {'B/seg':>6} {'disk':>6} {'read MB':>8} {'GB/s':>5} {'floor':>6} "
        f"{'query':>7} {'CPU':>7} {'xfloor':>6} {'q/s':>6} {'CPU q/s':>7} {'VmHWM':>6} {'anon':>5}  load"
    )
    for size in args.sizes:
        for dtype in args.dtypes:
            path = out / f"synthetic_{size}_{dtype}"
            write_synthetic(source, size, dtype, path)
            cmd = [sys.executable, __file__, "--measure", str(path), "--queries-file", str(queries_file)]
            cmd += ["--n-queries", str(args.n_queries), "--batch", str(args.batch)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['segments']:>10} {dtype:>8} {row['bytes_per_segment']:6.0f} "
                f"{row['disk_bytes_per_segment']:6.0f} "
                f"{row['searched_mb']:8.1f} {row['copy_cpu_gb_s']:5.2f} {row['floor_cpu_ms']:6.2f} "
                f"{row['single_ms']:7.2f} {row['single_cpu_ms']:7.2f} "
                f"{row['single_cpu_ms'] / row['floor_cpu_ms']:6.2f} "
                f"{row['batched_qps']:6.1f} {row['batched_cpu_qps']:7.1f} {row['peak_rss_mb']:6.0f} "
                f"{row['rss_anon_mb']:5.0f}  {row['load']}",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(path)
    return rows


def ray_runs(args, model: Path, queries: FactoredGradients, synthetic: Path) -> dict:
    """The Ray build (1 and 2 workers) and the sharded search (1 and 2 shard actors)."""
    import ray

    from spacy_segment_influence.scale.distributed import ShardWorkers
    from spacy_segment_influence.scale.sharded_index import ShardedIndex, write_sharded

    nlp = spacy.load(model)
    docs = load_docs(CONLL / "train_original.jsonl", nlp.vocab, args.ray_docs)
    results: dict = {"docs": len(docs)}
    start = time.perf_counter()
    single = fit_index(nlp, SETTINGS, build_shard(nlp, SETTINGS, docs), "single")
    results["one_process_s"] = one_process = time.perf_counter() - start
    print(f"One-process build and fit of {len(docs)} docs: {one_process:.1f} s ({load()})", flush=True)
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}
    )
    try:
        for workers in (1, 2):
            start = time.perf_counter()
            with ShardWorkers(nlp, SETTINGS, workers) as pool:
                started = time.perf_counter()
                on_ray = fit_index(nlp, SETTINGS, pool.build(docs, show_progress=False), "ray")
                seconds = time.perf_counter() - started
            results[f"start_{workers}_workers_s"] = start_s = started - start
            results[f"build_{workers}_workers_s"] = seconds
            same = same_top_k(single, on_ray, queries)
            results[f"same_top5_{workers}_workers"] = same
            print(
                f"Ray build, {workers} worker(s): actors started (pipeline loaded) in {start_s:.1f} s, then build "
                f"and fit {seconds:.1f} s ({load()}); identical top-5: {same}",
                flush=True,
            )
        results["speedup"] = results["build_1_workers_s"] / results["build_2_workers_s"]
        index = SegmentIndex.from_disk(synthetic)
        for shards in (1, 2):
            write_sharded(index, synthetic.with_name(synthetic.name + f"_sharded{shards}"), shards)
            sharded = ShardedIndex(synthetic.with_name(synthetic.name + f"_sharded{shards}"), on_ray=True)
            costs = search_costs(sharded, queries, args.n_queries, args.batch)  # wall: the work is in the actors
            results[f"search_{shards}_shards_ms"] = costs["single_ms"]
            results[f"search_{shards}_shards_qps"] = costs["batched_qps"]
            sharded.close()
            print(
                f"Ray sharded search over {len(index)} segments, {shards} shard actor(s): single query "
                f"{results[f'search_{shards}_shards_ms']:.1f} ms, batched {results[f'search_{shards}_shards_qps']:.1f} "
                f"q/s ({load()})",
                flush=True,
            )
    finally:
        ray.shutdown()
    print(
        f"Ray build of {len(docs)} docs (cluster and actor start not counted): one process {one_process:.1f} s; "
        f"1 worker {results['build_1_workers_s']:.1f} s; 2 workers {results['build_2_workers_s']:.1f} s; "
        f"speedup {results['speedup']:.2f} (target >= 1.6)"
    )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="crf_ner pipeline (default: train a small one)")
    parser.add_argument("--n-docs", type=int, default=2000, help="CoNLL train sentences indexed (0 = all)")
    parser.add_argument("--train-steps", type=int, default=100, help="steps of the small model, without --model")
    parser.add_argument("--sizes", default="20000,200000", help="comma-separated segment counts")
    parser.add_argument("--full", action="store_true", help="add 2,000,000 segments")
    parser.add_argument("--huge", action="store_true", help="add 20,000,000 segments (about 9-17 GB on disk)")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--n-queries", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ray-docs", type=int, default=1000)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray build and search")
    parser.add_argument("--no-curve", action="store_true", help="skip the cost curve")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic indexes")
    parser.add_argument("--out", default=str(ROOT / "bench" / "output" / "scaling"))
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    args.sizes = [int(s) for s in args.sizes.split(",")] + [2_000_000] * args.full + [20_000_000] * args.huge
    args.dtypes = args.dtypes.split(",")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs; {load()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    model = source_model(args)
    source, grads, build = build_source(args, model)
    report = {"source": build, "curve": [] if args.no_curve else cost_curve(args, source, grads)}
    if not args.no_ray:
        args.keep = True
        synthetic = Path(args.out) / f"synthetic_{args.sizes[0]}_float32"
        write_synthetic(source, args.sizes[0], "float32", synthetic)
        report["ray"] = ray_runs(args, model, grads, synthetic)
    srsly.write_json(Path(args.out) / "scaling.json", report)


if __name__ == "__main__":
    main()
