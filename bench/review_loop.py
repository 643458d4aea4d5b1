"""The review loop (issue 12, item 4) against a simulated reviewer, as ActiveAED
(Weber & Plank, Findings of ACL 2023) benchmarks: the corrected labels answer each
reviewed candidate (accept when the correction changed one of its tokens), rounds of 50.

    python bench/review_loop.py --model M/model-best --train train.spacy --dev dev.spacy \\
        --original train_original.jsonl --corrected train_corrected.jsonl [--method loss]

Per round: errors found so far, and the span AP of the unreviewed remainder, for
- static: the `--method` ranking (cross-fitted with --fold-model/--fold-train), read top down;
- gradient: `ReviewLoop(similarity="gradient")`, the product's `find-errors --reviewed`;
- features: the same loop with encoder-feature similarity (nearest neighbours of the
  decided candidates by mean token features instead of gradients).
Prints a table and the ratio of errors found after `--target-round` rounds to the static
ranking's; writes JSON with --out.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy
import spacy
from spacy.tokens import DocBin

from spacy_segment_influence.annotation_errors import (
    Corrections,
    CrossFitFinder,
    ErrorFinder,
    ReviewLoop,
    held_out_indices,
)
from spacy_segment_influence.annotation_errors.metrics import average_precision


def simulate(
    static: numpy.ndarray, loop: Optional[ReviewLoop], is_error: numpy.ndarray, rounds: int, batch: int
) -> Dict[str, List[float]]:
    scores = static.copy()
    reviewed = numpy.zeros(0, dtype=numpy.int64)
    found, remainder_ap = [], []
    for _ in range(rounds):
        open_ = numpy.setdiff1d(numpy.arange(len(scores)), reviewed)
        top = open_[numpy.argsort(-scores[open_], kind="stable")[:batch]]
        reviewed = numpy.concatenate([reviewed, top])
        labels = is_error[reviewed]
        if loop is not None:
            scores = loop.rerank(static, reviewed, labels)
        open_ = numpy.setdiff1d(numpy.arange(len(scores)), reviewed)
        rest = open_[numpy.argsort(-scores[open_], kind="stable")]
        found.append(int(labels.sum()))
        remainder_ap.append(average_precision(is_error[rest]))
    return {"found": found, "remainder_ap": remainder_ap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--dev", type=Path)
    parser.add_argument("--original", type=Path, required=True, help="JSONL the train corpus was converted from")
    parser.add_argument("--corrected", type=Path, required=True)
    parser.add_argument("--method", default="loss")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--target-round", type=int, default=5)
    parser.add_argument("--fold-model", type=Path, action="append", default=[], help="cross-fitting, as find-errors")
    parser.add_argument("--fold-train", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    train = list(DocBin().from_disk(args.train).get_docs(nlp.vocab))
    dev = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab)) if args.dev else None
    start = time.perf_counter()
    finder: Union[ErrorFinder, CrossFitFinder]
    if args.fold_model:
        seen = [list(DocBin().from_disk(path).get_docs(nlp.vocab)) for path in args.fold_train]
        folds = list(zip(map(spacy.load, args.fold_model), held_out_indices(train, seen)))
        finder = CrossFitFinder(folds, train, dev, model=nlp)
    else:
        finder = ErrorFinder(nlp, train, dev)
    static = finder.scores(args.method)
    full = finder.full if isinstance(finder, CrossFitFinder) else finder
    corrections = Corrections.from_files(args.original, args.corrected)
    is_error = numpy.array(
        [corrections.is_error((train[c.doc_index].user_data["id"], c.start, c.end)) for c in finder.candidates]
    )
    print(
        f"{len(finder.candidates)} candidates, {int(is_error.sum())} errors ({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    results = {}
    for similarity in ("static", "gradient", "features"):
        start = time.perf_counter()
        loop = ReviewLoop(full, similarity) if similarity != "static" else None
        results[similarity] = simulate(static, loop, is_error, args.rounds, args.batch)
        results[similarity]["seconds"] = time.perf_counter() - start
    print("\n| round | reviewed | " + " | ".join(f"{s} found / rest AP" for s in results) + " |")
    print("|---:|---:|" + "---:|" * len(results))
    for r in range(args.rounds):
        cells = [f"{v['found'][r]} / {v['remainder_ap'][r]:.3f}" for v in results.values()]
        print(f"| {r + 1} | {(r + 1) * args.batch} | " + " | ".join(cells) + " |")
    t = args.target_round - 1
    base = max(results["static"]["found"][t], 1)
    for similarity in ("gradient", "features"):
        print(
            f"{similarity}: {results[similarity]['found'][t] / base:.2f}x the static ranking's errors",
            f"after {t + 1} rounds",
        )
    if args.out:
        args.out.write_text(json.dumps({"method": args.method, **results}, indent=1))


if __name__ == "__main__":
    main()
