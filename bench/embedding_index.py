"""Cost of `segment_influence` with layers = "embeddings" against the head index (issue 23):
build time beside a plain `nlp.pipe` over the same corpus, single-entity `explain` latency end
to end, and the component's own search alone (the top k `explain` asks for, the query's
gradients computed beforehand; beside it the full score row), for each --inits.

    python bench/embedding_index.py --model bench/output/lds/full/model-last --n-train 12527 --inits 1,4

Needs ../shared/data/conll2003 beside the checkout (or --data); the model from bench/lds.py.
"""

import argparse
import statistics
import time
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from spacy_segment_influence.corpus import read_jsonl_docs
from spacy_segment_influence.influence.segments import Segment

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "output" / "lds" / "full" / "model-last")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--n-train", type=int, default=12527)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--inits", default="1,4", help="comma-separated ensemble sizes for layers = embeddings")
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
    settings = [("head", 1)] + [("embeddings", int(n)) for n in args.inits.split(",")]
    for layers, inits in settings:
        name = f"influence_{layers}_{inits}"
        component = nlp.add_pipe("segment_influence", name=name, config={"layers": layers, "k": 5, "inits": inits})
        clock = time.perf_counter()
        component.initialize(lambda: [], nlp=nlp, train_path=path, show_progress=False)
        build_s = time.perf_counter() - clock
        explain = timed([lambda doc=doc, c=component: c.explain(doc.ents[0]) for doc in queries])
        line = (
            f"{layers:<10} inits {inits}: build {build_s:.1f} s = {build_s / pipe_s:.2f}x nlp.pipe; explain {explain}"
        )
        if layers == "embeddings":
            line += search_alone(component, queries)
        print(line, flush=True)
        nlp.remove_pipe(name)


def timed(calls) -> str:
    times = []
    for call in calls:
        clock = time.perf_counter()
        call()
        times.append(time.perf_counter() - clock)
    times.sort()
    return f"median {1000 * statistics.median(times):.1f} ms (p90 {1000 * times[int(0.9 * len(times))]:.1f} ms)"


def search_alone(component, queries) -> str:
    """The component's own search (`explainer.index`), each query's gradients computed
    beforehand as `explain` computes them: the top k it asks for, and the full score row."""
    explainer = component.explainer
    grads = [
        explainer.query_gradients([d], [list(d.ents)], [Segment(0, d.ents[0].start, d.ents[0].end)]) for d in queries
    ]
    k = component.cfg["k"]
    top = timed([lambda g=g: explainer.index.top_k(g, k) for g in grads])
    row = timed([lambda g=g: explainer.index.scores(g) for g in grads])
    return f"; search alone: top {k} {top}, every score {row}"


if __name__ == "__main__":
    main()
