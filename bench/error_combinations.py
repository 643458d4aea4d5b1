"""Which combination of error signals to make the default (issue 12): the candidate
rankings `combined` was chosen among, on one corpus, from the same cached scores.

    python bench/error_combinations.py --model FULL/model-best --train train.spacy --dev dev.spacy \\
        --original train_original.jsonl --corrected train_corrected.jsonl \\
        --fold-model folds/model_0/model-best --fold-train folds/train_0.spacy \\
        --fold-model folds/model_1/model-best --fold-train folds/train_1.spacy

Fold models given with the same --fold-train form one fold's seed ensemble (`SeedEnsemble`),
as `find-errors --seeds N` builds it. Rows, in-sample and cross-fitted (span AP / sentence
AP): `influence` = Fisher(harm, loss), `consistency`, `combined` = Fisher(harm, loss,
consistency), a two-source weighting Fisher(consistency, tail of Fisher(harm, loss)),
Fisher(loss, consistency) and the loss; then `combined` with the prior of `consistency`'s
denominator at each --priors value.
"""

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy
import spacy

from spacy_segment_influence.annotation_errors import (
    Corrections,
    CrossFitFinder,
    ErrorFinder,
    disagreement,
    evaluate_ranking,
    held_out_indices,
)
from spacy_segment_influence.annotation_errors.methods import fisher
from spacy_segment_influence.corpus import read_docbin


def rows(finder) -> Dict[str, numpy.ndarray]:
    harm, loss, consistency = finder.harm(), finder.losses(), finder.consistency()
    return {
        "influence = Fisher(harm, loss)": fisher(harm, loss),
        "consistency": consistency,
        "combined = Fisher(harm, loss, consistency)": fisher(harm, loss, consistency),
        "Fisher(consistency, tail of Fisher(harm, loss))": fisher(consistency, fisher(harm, loss)),
        "Fisher(loss, consistency)": fisher(loss, consistency),
        "loss": loss,
    }


def metrics(scores: numpy.ndarray, finder, docs, corrections: Corrections) -> str:
    order = numpy.argsort(-scores, kind="stable")
    regions = [
        (docs[finder.candidates[i].doc_index].user_data["id"], finder.candidates[i].start, finder.candidates[i].end)
        for i in order
    ]
    found = evaluate_ranking(regions, corrections)
    return f"{found['span_ap']:.3f} / {found['sentence_ap']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--model", "--train", "--dev", "--original", "--corrected"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--fold-model", type=Path, action="append", default=[])
    parser.add_argument("--fold-train", type=Path, action="append", default=[])
    parser.add_argument("--priors", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    docs, dev = read_docbin(args.train, nlp.vocab), read_docbin(args.dev, nlp.vocab)
    corrections = Corrections.from_files(args.original, args.corrected)
    finders = {"in-sample": ErrorFinder(nlp, docs, dev)}
    if args.fold_model:
        by_corpus: Dict[Path, List[Path]] = defaultdict(list)
        for model, corpus in zip(args.fold_model, args.fold_train):
            by_corpus[corpus].append(model)
        seen = [read_docbin(corpus, nlp.vocab) for corpus in by_corpus]
        folds = [
            ([spacy.load(m) for m in models], held)
            for models, held in zip(by_corpus.values(), held_out_indices(docs, seen))
        ]
        finders["cross-fitted"] = CrossFitFinder(folds, docs, dev, model=nlp)
    print("| ranking | " + " | ".join(finders) + " |\n|---|" + "---:|" * len(finders))
    tables = {setting: rows(finder) for setting, finder in finders.items()}
    for name in next(iter(tables.values())):
        cells = [metrics(tables[s][name], f, docs, corrections) for s, f in finders.items()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for prior in args.priors:
        cells = []
        for finder in finders.values():
            consistency = disagreement(finder.docs, finder.candidates, prior)
            cells.append(metrics(fisher(finder.harm(), finder.losses(), consistency), finder, docs, corrections))
        print(f"| combined, consistency prior {prior:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
