"""What `curvature = "exact"` costs against the default `kfac` (issue 4's proposal).

    python bench/exact_cost.py MODEL_DIR [--train TRAIN.jsonl] [--dev VALIDATION.jsonl]
        [--n-train 2000] [--n-hessian 200] [--n-autograd 16] [--n-queries 100]

1. The exact head Hessian: closed form (`hessian.head_hessian`) over --n-hessian training
   sentences vs reverse-over-reverse autograd (`hessian.head_hessian_autograd`) over the
   first --n-autograd of them, seconds per sentence, and their agreement on those.
2. `segment_influence` over the first --n-train training sentences with each curvature:
   build time, index size, and single-query `top_k` CPU time over --n-queries predicted
   validation entities (the two indexes queried alternately, 2 rounds).
3. `refine = true` on the exact index (`removal`): `pipe` CPU time over validation docs
   holding the first --n-refine predicted entities, refine off and on (k = 5: up to 10
   hits per entity, each a leverage-corrected removal step by CG; cold cache).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import spacy
import torch
from influence_common import load, load_docs, query_gradients, write_spacy  # noqa: E402

from spacy_segment_influence.influence.hessian import head_hessian, head_hessian_autograd  # noqa: E402
from spacy_segment_influence.ner import bridge  # noqa: E402
from spacy_segment_influence.ner.bridge import LabelledBatch, labelled_batch  # noqa: E402

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--train", default=str(CONLL / "train_original.jsonl"))
    parser.add_argument("--dev", default=str(CONLL / "validation_original.jsonl"))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-hessian", type=int, default=200)
    parser.add_argument("--n-autograd", type=int, default=16, help="0 skips the autograd reference")
    parser.add_argument("--n-queries", type=int, default=100)
    parser.add_argument("--n-refine", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    nlp = spacy.load(args.model)
    train_docs = load_docs(args.train, nlp.vocab, args.n_train)
    ner = nlp.get_pipe("crf_ner")
    print(f"model {args.model}; P = {len(bridge.flat_head(ner))}; {load()}")

    batch = labelled_batch(nlp, "crf_ner", train_docs[: args.n_hessian])
    start = time.process_time()
    head_hessian(ner, batch)  # timed only
    closed_s = time.process_time() - start
    print(f"1. Hessian CPU s per sentence: closed form {closed_s / args.n_hessian:.3f} ({args.n_hessian} sentences)")
    if args.n_autograd:  # P reverse-over-reverse passes: minutes for a MiniLM head, so optional
        few = LabelledBatch(batch.features[: args.n_autograd], batch.tags[: args.n_autograd])
        start = time.process_time()
        reference = head_hessian_autograd(ner, few)
        autograd_s = time.process_time() - start
        error = np.abs(head_hessian(ner, few) - reference).max() / np.abs(reference).max()
        print(
            f"   autograd {autograd_s / args.n_autograd:.3f} ({args.n_autograd}); max relative difference {error:.1e}"
        )

    train_path = write_spacy(train_docs, Path(tempfile.mkdtemp()) / "train.spacy")
    indexes = {}
    for curvature in ("kfac", "exact"):
        name = f"si_{curvature}"
        component = nlp.add_pipe("segment_influence", name=name, config={"curvature": curvature})
        start = time.perf_counter()
        component.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)
        print(
            f"2. {curvature:5} build {time.perf_counter() - start:6.1f} s wall, "
            f"index {component.index.nbytes / 1e6:.1f} MB"
        )
        nlp.remove_pipe(name)
        indexes[curvature] = component
    dev = load_docs(args.dev, nlp.vocab)
    docs = list(nlp.pipe(bridge.unannotated(d) for d in dev[: 3 * args.n_queries]))
    ents = [(i, ent) for i, doc in enumerate(docs) for ent in doc.ents][: args.n_queries]
    grads = query_gradients(indexes["kfac"], docs, ents)
    queries = [grads.select(q, q + 1) for q in range(len(ents))]
    cpu = {name: [] for name in indexes}
    for _ in range(2):
        for name, component in indexes.items():
            start = time.process_time()
            for query in queries:
                component.index.top_k(query, k=5)
            cpu[name].append((time.process_time() - start) / len(queries) * 1e3)
    for name, times in cpu.items():
        print(f"   {name:5} single-query top_k CPU ms per round: {', '.join(f'{t:.2f}' for t in times)}")

    exact = indexes["exact"]
    first_docs = sorted({i for i, _ in ents[: args.n_refine]})
    refine_docs = [docs[i] for i in first_docs]
    n_entities = sum(len(doc.ents) for doc in refine_docs)
    seconds = {}
    for refine in (False, True):
        exact.cfg["refine"] = refine
        exact._removal_steps = None  # cold cache
        start = time.process_time()
        out = list(exact.pipe(refine_docs))
        seconds[refine] = time.process_time() - start
    n_hits = sum(len(r["supporters"]) + len(r["opposers"]) for doc in out for r in doc._.influences)
    print(
        f"3. refine: {n_entities} entities, {n_hits} hits; "
        f"pipe CPU s off {seconds[False]:.2f}, on {seconds[True]:.2f}: "
        f"{(seconds[True] - seconds[False]) / n_hits * 1e3:.0f} ms per refined hit"
    )
    print(f"   {load()}")


if __name__ == "__main__":
    main()
