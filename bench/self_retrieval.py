"""Self-retrieval sanity figure (issue 3, item 6).

    python bench/self_retrieval.py MODEL_DIR [--train TRAIN.jsonl] [--n 2000] [--k 10]
        [--blas-threads B]

Indexes the first N train sentences (the ones the model was trained on), queries the
same sentences through nlp.pipe (Docs built from the training docs' own words and spaces,
so tokenisation matches) with a segment_influence component, and reports the share of
correctly predicted gold entities (same start, end, label) whose top supporter is their
own training segment (same doc_index, start, end). Target >= 0.95 for the default
config (kfac, normalize=True); also identity and normalize=False. MODEL_DIR may hold spaCy's
built-in ner: each component then explains it through its own CRF surrogate (issue 13).

strict       span._.influences["supporters"][0] is the own segment (the component path)
tie-aware    the own segment's score equals the top score (relative tolerance --tol),
             from index.scores() on the same query gradients (all scores, no top-k)
Misses are split by cause: the query's gradient differs from the stored one (cosine
< 1 - tol), an identical sentence elsewhere in the corpus, or neither.
"""

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import spacy
from influence_common import (  # noqa: E402
    blas_threads,
    load,
    load_docs,
    query_gradients,
    set_blas_threads,
    write_spacy,
)

from spacy_segment_influence.ner import bridge  # noqa: E402

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"  # ../shared next to the checkout
CONFIGS = [("kfac", True), ("identity", True), ("kfac", False), ("identity", False)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--train", default=str(CONLL / "train_original.jsonl"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-4, help="relative tolerance for score ties")
    parser.add_argument("--blas-threads", type=int, default=0)
    parser.add_argument("--examples", type=int, default=5, help="misses to print per config")
    parser.add_argument(
        "--default-only",
        action="store_true",
        help="only the default config (kfac, cosine): with a built-in ner every config fits its own CRF surrogate",
    )
    args = parser.parse_args()
    if args.blas_threads:
        set_blas_threads(args.blas_threads)

    nlp = spacy.load(args.model)
    gold = load_docs(args.train, nlp.vocab, args.n)
    train_path = write_spacy(gold, Path(tempfile.mkdtemp(prefix="self_retrieval_")) / "train.spacy")
    print(f"model {args.model}; {len(gold)} train docs; OpenBLAS threads {blas_threads()}; {load()}")
    base = list(nlp.pipe_names)
    with nlp.select_pipes(enable=base):
        predicted = list(nlp.pipe(bridge.unannotated(d) for d in gold))
    # correctly predicted gold entities: (doc index, start, end, label)
    targets = []
    n_gold = 0
    for i, (g, p) in enumerate(zip(gold, predicted)):
        pred = {(e.start, e.end, e.label_) for e in p.ents}
        for e in g.ents:
            n_gold += 1
            if (e.start, e.end, e.label_) in pred:
                targets.append((i, e.start, e.end, e.label_))
    sentence_count = Counter(d.text for d in gold)
    dup_targets = sum(sentence_count[gold[i].text] > 1 for i, *_ in targets)
    print(
        f"{n_gold} gold entities, {len(targets)} correctly predicted ({len(targets) / n_gold:.3f}); "
        f"{dup_targets} of those in a sentence that occurs more than once among the {len(gold)}; "
        f"{sum(c for c in sentence_count.values() if c > 1)} sentences have a duplicate"
    )

    rows = []
    for curvature, normalize in CONFIGS[:1] if args.default_only else CONFIGS:
        name = f"si_{curvature}_{'cos' if normalize else 'raw'}"
        component = nlp.add_pipe(
            "segment_influence", name=name, config={"curvature": curvature, "normalize": normalize, "k": args.k}
        )
        start = time.perf_counter()
        component.initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)
        build_s = time.perf_counter() - start
        index = component.index
        own_id = {(m["doc_index"], m["start"], m["end"]): s for s, m in enumerate(index.metadata)}

        # component path
        with nlp.select_pipes(enable=base + [name]):
            start = time.perf_counter()
            docs = list(nlp.pipe(bridge.unannotated(d) for d in gold))
            query_s = time.perf_counter() - start
        strict = 0
        for i, s, e, _ in targets:
            span = next(ent for ent in docs[i].ents if (ent.start, ent.end) == (s, e))
            sup = span._.influences["supporters"]
            strict += bool(sup) and (sup[0]["doc_index"], sup[0]["start"], sup[0]["end"]) == (i, s, e)

        # all scores for the same queries
        doc_ids = sorted({i for i, *_ in targets})
        pos = {i: p for p, i in enumerate(doc_ids)}
        spans = [(pos[i], docs[i][s:e]) for i, s, e, _ in targets]
        grads = query_gradients(component, [docs[i] for i in doc_ids], spans)
        scores = index.scores(grads)
        own = np.array([own_id[(i, s, e)] for i, s, e, _ in targets])
        own_score = scores[np.arange(len(own)), own]
        top = scores.max(axis=1)
        argmax = scores.argmax(axis=1)
        tol = args.tol * np.maximum(np.abs(top), 1e-30)
        tied = own_score >= top - tol
        strict_scores = argmax == own
        # cosine of the query with its own stored segment (the normalised score)
        if normalize:
            cos = own_score
        else:
            qn = np.sqrt(np.maximum(index.curvature.prepare_queries(grads).sq_norms, 0))
            cos = own_score / np.maximum(qn * np.asarray(index.norms)[own], 1e-300)
        misses = np.flatnonzero(~tied)
        changed = cos[misses] < 1 - args.tol
        dup = np.array([sentence_count[gold[targets[m][0]].text] > 1 for m in misses], dtype=bool)
        n_ties = int(np.sum(np.isclose(scores, top[:, None], rtol=args.tol, atol=0).sum(axis=1) > 1))
        rank = (scores > (own_score + tol)[:, None]).sum(axis=1)
        rows.append(
            (
                curvature,
                normalize,
                strict / len(targets),
                strict_scores.mean(),
                tied.mean(),
                len(misses),
                int(changed.sum()),
                int((~changed & dup).sum()),
                int((~changed & ~dup).sum()),
                n_ties,
                float(np.median(rank[misses])) if len(misses) else 0.0,
                build_s,
                query_s,
            )
        )
        print(f"\n{name}: index {len(index)} segments, built in {build_s:.1f} s, queried in {query_s:.1f} s ({load()})")
        print(
            f"  cosine(query, own stored segment): min {cos.min():.6f}, median {np.median(cos):.6f}; "
            f"{int((cos < 1 - args.tol).sum())} below 1 - tol"
        )
        for m in np.flatnonzero(tied & ~strict_scores)[: args.examples if normalize else 0]:
            i, s, e, label = targets[m]
            best = index.metadata[argmax[m]]
            print(
                f"  tie, not own: doc {i} {gold[i].text[:60]!r} [{s}:{e}] {label} score {own_score[m]:.6f}; "
                f"top: doc {best['doc_index']} {best['context'][:60]!r} score {top[m]:.6f}"
            )
        for m in misses[: args.examples]:
            i, s, e, label = targets[m]
            best = index.metadata[argmax[m]]
            print(
                f"  miss: doc {i} [{s}:{e}] {label} {gold[i][s:e].text!r} own score {own_score[m]:.4g} "
                f"(cos {cos[m]:.4f}, rank {rank[m]}) < top {top[m]:.4g}: doc {best['doc_index']} "
                f"{best['context']!r}"
            )
        nlp.remove_pipe(name)

    print(
        f"\nself-retrieval over {len(targets)} correctly predicted gold entities of the first {len(gold)} "
        f"train sentences (target >= 0.95); tie tolerance {args.tol:g} relative; {load()}"
    )
    head = (
        "curvature",
        "normalize",
        "strict",
        "strict(scores)",
        "tie-aware",
        "misses",
        "q!=stored",
        "dup sent",
        "other",
        "tied tops",
        "med rank",
        "build s",
        "query s",
    )
    print("".join(f"{h:>15}" for h in head))
    for r in rows:
        print(
            f"{r[0]:>15}{str(r[1]):>15}{r[2]:15.4f}{r[3]:15.4f}{r[4]:15.4f}{r[5]:15d}{r[6]:15d}{r[7]:15d}"
            f"{r[8]:15d}{r[9]:15d}{r[10]:15.0f}{r[11]:15.1f}{r[12]:15.1f}"
        )
    print(
        "misses = not tie-aware; q!=stored: query gradient differs from the stored one (cosine < 1 - tol); "
        "dup sent: otherwise, sentence occurs more than once; tied tops: queries whose top score is shared; "
        "med rank: median number of segments strictly above the own one, over misses"
    )


if __name__ == "__main__":
    main()
