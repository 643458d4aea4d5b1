"""Cost of `segment_influence` with layers = "embeddings" against the head index (issue 23):
build time beside a plain `nlp.pipe` over the same corpus, and single-entity query latency.

    python bench/embedding_index.py --model bench/output/lds/full/model-last --n-train 12527

Needs ../shared/data/conll2003 beside the checkout (or --data); the model from bench/lds.py.
"""

import argparse
import statistics
import time
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from spacy_segment_influence.corpus import read_jsonl_docs

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "output" / "lds" / "full" / "model-last")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--n-train", type=int, default=12527)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    docs = []
    for doc in read_jsonl_docs(args.data / "train_original.jsonl", nlp.vocab):
        docs.append(doc)
        if len(docs) >= args.n_train:
            break
    path = ROOT / "bench" / "output" / "embedding_index_train.spacy"
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs).to_disk(path)
    texts = [doc.text for doc in docs]
    clock = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=256):
        pass
    pipe_s = time.perf_counter() - clock
    print(f"{len(docs)} sentences, {sum(len(d.ents) for d in docs)} gold entities; nlp.pipe {pipe_s:.1f} s")
    queries = [d for d in nlp.pipe(texts[: args.queries * 3]) if d.ents][: args.queries]
    for layers in ("head", "embeddings"):
        name = f"influence_{layers}"
        component = nlp.add_pipe("segment_influence", name=name, config={"layers": layers, "k": 5})
        clock = time.perf_counter()
        component.initialize(lambda: [], nlp=nlp, train_path=path, show_progress=False)
        build_s = time.perf_counter() - clock
        times = []
        for doc in queries:
            clock = time.perf_counter()
            component.explain(doc.ents[0])
            times.append(time.perf_counter() - clock)
        print(
            f"{layers:<10} build {build_s:.1f} s = {build_s / pipe_s:.2f}x nlp.pipe; "
            f"explain one entity median {1000 * statistics.median(times):.1f} ms (p90 "
            f"{1000 * sorted(times)[int(0.9 * len(times))]:.1f} ms, {len(times)} queries)"
        )
        nlp.remove_pipe(name)


if __name__ == "__main__":
    main()
