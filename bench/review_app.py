"""The review app (issue 26) against a simulated reviewer: the corrected labels answer each
card (accept when the correction changed one of its tokens, as bench/review_loop.py), one
card at a time through the app's own `ReviewSession` and SQLite store.

    python bench/review_app.py --model M/model-best --train train.spacy --dev dev.spacy \\
        --original train_original.jsonl --corrected train_corrected.jsonl [--ranking R.jsonl]

The review is prepared as `segment-influence review` prepares it (`prepare`: the
find-errors ranking given, else the in-sample one by --method), its time reported. Then
four reviewers, each for --decisions answers:
- static: the ranking read top down (the app with --no-learn, no groups);
- features: re-ranked after each answer by feature similarity (`ReviewLoop`'s, the app);
- static+groups, features+groups: when the card's pattern (same string, same current
  label) has undecided members and the corrected labels give every one of them the
  card's answer, the reviewer applies the decision to the group: one decision.
Prints errors fixed (accepted candidates that are errors) after 100, 250 and 500
decisions, per 100 decisions, the ratios to static and to features, and the time of an
answer (store, re-rank, next card: median and 95th percentile).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy
import spacy

from spacy_segment_influence.annotation_errors import Corrections, ranked_regions
from spacy_segment_influence.bridge import default_ner
from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.review_app import ReviewSession, ReviewStore
from spacy_segment_influence.review_app.prepare import Prepared, labels_of, prepare

CHECKPOINTS = (100, 250, 500)


def review(db: Path, prepared: Prepared, labels: List[str], is_error: numpy.ndarray, learn: bool, groups: bool, n: int):
    """Errors fixed after each decision, and the seconds each answer took."""
    store = ReviewStore(db)
    store.fill(prepared.records, prepared.patterns, {"features": prepared.features}, labels=labels)
    session = ReviewSession(store, learn=learn)
    fixed, seconds, total = [], [], 0
    card = session.card()
    while len(fixed) < n and not card["done"]:
        wrong = bool(is_error[card["id"]])
        decided = store.decisions()
        members = [m for m in session.groups[session.candidates[card["id"]].pattern] if m not in decided]
        group = groups and len(members) > 1 and all(bool(is_error[m]) == wrong for m in members)
        start = time.perf_counter()
        card = session.answer(card["id"], "accept" if wrong else "reject", group=group)
        seconds.append(time.perf_counter() - start)
        total += int(wrong) * (len(members) if group else 1)
        fixed.append(total)
    store.close()
    return {"fixed": fixed, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--dev", type=Path)
    parser.add_argument("--ranking", type=Path, help="a find-errors ranking (e.g. cross-fitted) to review")
    parser.add_argument("--method", default="combined")
    parser.add_argument("--original", type=Path, required=True, help="JSONL the train corpus was converted from")
    parser.add_argument("--corrected", type=Path, required=True)
    parser.add_argument("--decisions", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    ner = default_ner(nlp)
    train = read_docbin(args.train, nlp.vocab)
    dev = read_docbin(args.dev, nlp.vocab) if args.dev else None
    start = time.perf_counter()
    prepared = prepare(nlp, train, ner=ner, ranking=args.ranking, dev_docs=dev, method=args.method)
    prepare_seconds = time.perf_counter() - start
    corrections = Corrections.from_files(args.original, args.corrected)
    is_error = numpy.array([corrections.is_error(region) for region in ranked_regions(prepared.records)])
    print(
        f"{len(is_error)} candidates, {int(is_error.sum())} errors; prepared in {prepare_seconds:.0f} s "
        f"({args.ranking or args.method})",
        flush=True,
    )
    results: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, learn, groups in (
            ("static", False, False),
            ("features", True, False),
            ("static+groups", False, True),
            ("features+groups", True, True),
        ):
            results[name] = review(
                Path(tmp) / f"{name}.sqlite", prepared, labels_of(nlp, ner), is_error, learn, groups, args.decisions
            )
            print(f"{name}: {results[name]['fixed'][-1]} errors fixed in {len(results[name]['fixed'])}", flush=True)
    report(results)
    if args.out:
        args.out.write_text(json.dumps({"prepare_seconds": prepare_seconds, **results}, indent=1))


def report(results: Dict[str, dict]) -> None:
    print("\n| reviewer | " + " | ".join(f"fixed after {n} (per 100)" for n in CHECKPOINTS) + " | answer ms p50 / p95 |")
    print("|---|" + "---:|" * (len(CHECKPOINTS) + 1))
    for name, result in results.items():
        cells = []
        for n in CHECKPOINTS:
            found = result["fixed"][min(n, len(result["fixed"])) - 1]
            cells.append(f"{found} ({100 * found / min(n, len(result['fixed'])):.1f})")
        ms = 1000 * numpy.array(result["seconds"])
        print(f"| {name} | " + " | ".join(cells) + f" | {numpy.median(ms):.0f} / {numpy.percentile(ms, 95):.0f} |")
    for n in CHECKPOINTS:
        at = {name: r["fixed"][min(n, len(r["fixed"])) - 1] for name, r in results.items()}
        print(
            f"after {n}: features+groups {at['features+groups'] / max(at['static'], 1):.2f}x static, "
            f"{at['features+groups'] / max(at['features'], 1):.2f}x features; "
            f"features {at['features'] / max(at['static'], 1):.2f}x static"
        )


if __name__ == "__main__":
    main()
