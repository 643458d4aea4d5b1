"""The review app (issue 26) against a simulated reviewer: the corrected labels answer each
card (accept when the correction changed one of its tokens, as bench/review_loop.py), one
card at a time through the app's own `ReviewSession` and SQLite store.

    python bench/review_app.py --model M/model-best --train train.spacy --dev dev.spacy \\
        --original train_original.jsonl --corrected train_corrected.jsonl [--ranking R.jsonl]

The review is prepared as `segment-influence review` prepares it (`prepare`: the
find-errors ranking given, else the in-sample one by --method) into WORK/prepared.sqlite,
its time reported; a rerun with the same --work reuses it. Then each reviewer answers
--decisions cards on a copy:
- static: the ranking read top down (the app with --no-learn, no groups);
- features/N: re-ranked by feature similarity (`ReviewLoop`'s, as the app does) after
  every N-th decision (N = 1: after each answer; 50: the rounds of bench/review_loop.py);
- +groups: when the card's pattern (same string, same current label) has undecided
  members and the corrected labels give every one of them the card's answer, the
  reviewer applies the decision to the group: one decision.
Prints errors fixed (accepted candidates that are errors) after 100, 250 and 500
decisions, per 100 decisions, the ratios to static, and the time of an answer (store,
re-rank, next card: median and 95th percentile; with --http through the app's API, JSON
both ways, as the page posts it).
"""

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy
import spacy

from spacy_segment_influence.annotation_errors import Corrections, ranked_regions
from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.ner.bridge import default_ner
from spacy_segment_influence.review_app import ReviewSession, ReviewStore
from spacy_segment_influence.review_app.prepare import labels_of, prepare

CHECKPOINTS = (100, 250, 500)
EVERY = (1, 50)  # re-rank after every N-th decision: the default --every


def reviewers(every: Sequence[int]) -> List[Tuple[str, bool, int, bool]]:
    """(name, learn, re-rank every N decisions, groups) of each simulated reviewer."""
    learning = [(f"features/{n}", True, n) for n in every]
    return [
        (name + suffix, learn, n, groups)
        for groups, suffix in ((False, ""), (True, "+groups"))
        for name, learn, n in [("static", False, 1), *learning]
    ]


# A simulated reviewer: (session, card, the card's undecided pattern members, itself
# included) -> the answer's JSON body, as the page posts it (candidate, answer, label,
# start, end, group)
Reviewer = Callable[[ReviewSession, dict, List[int]], dict]


def by_errors(is_error: numpy.ndarray, groups: bool) -> Reviewer:
    """Accept (the app's suggestion) when the corrected labels changed a token of the
    card, else reject; with `groups`, for the whole pattern when every undecided member
    gets the same answer."""

    def answer(session: ReviewSession, card: dict, members: List[int]) -> dict:
        wrong = bool(is_error[card["id"]])
        group = groups and len(members) > 1 and all(bool(is_error[m]) == wrong for m in members)
        return {"candidate": card["id"], "answer": "accept" if wrong else "reject", "group": group}

    return answer


def review(
    template: Path, db: Path, is_error: numpy.ndarray, reviewer: Reviewer, learn: bool, every: int, n: int, http: bool
):
    """Errors fixed (accepted candidates that are errors) after each decision, and the
    seconds each answer took (with `http`, posted to the app and the next card read back
    as JSON, as the page does). The decisions stay in `db` (a copy of `template`)."""
    shutil.copy(template, db)
    store = ReviewStore(db)
    session = ReviewSession(store, learn=learn, rerank_every=every)
    post = session_answer(session) if not http else http_answer(session)
    fixed, seconds = [], []
    card = session.card()
    while len(fixed) < n and not card["done"]:
        decided = store.decisions()
        members = [m for m in session.groups[session.candidates[card["id"]].pattern] if m not in decided]
        body = reviewer(session, card, members)
        start = time.perf_counter()
        card = post(body)
        seconds.append(time.perf_counter() - start)
        fixed.append(sum(bool(is_error[c]) for c, d in store.decisions().items() if d.answer == "accept"))
    store.close()
    return {"fixed": fixed, "seconds": seconds}


def session_answer(session: ReviewSession) -> Callable[[dict], dict]:
    def post(body: dict) -> dict:
        span = (body["start"], body["end"]) if body.get("start") is not None else None
        return session.answer(body["candidate"], body["answer"], body.get("label"), span, body["group"])

    return post


def http_answer(session: ReviewSession) -> Callable[[dict], dict]:
    from fastapi.testclient import TestClient

    from spacy_segment_influence.review_app.server import create_app

    client = TestClient(create_app(session))
    return lambda body: json.loads(client.post("/api/answer", json=body).content)


def prepared_store(args: argparse.Namespace) -> Path:
    """WORK/prepared.sqlite, prepared as the review command does unless it is there."""
    template = args.work / "prepared.sqlite"
    if template.exists() and ReviewStore(template).prepared:
        print(f"Reusing {template}")
        return template
    template.unlink(missing_ok=True)
    nlp = spacy.load(args.model)
    ner = default_ner(nlp)
    train = read_docbin(args.train, nlp.vocab)
    dev = read_docbin(args.dev, nlp.vocab) if args.dev else None
    start = time.perf_counter()
    prepared = prepare(nlp, train, ner=ner, ranking=args.ranking, dev_docs=dev, method=args.method)
    print(f"Prepared in {time.perf_counter() - start:.0f} s ({args.ranking or args.method})", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    store = ReviewStore(template)
    store.fill(prepared.records, prepared.patterns, {"features": prepared.features}, labels=labels_of(nlp, ner))
    store.close()
    return template


def store_errors(template: Path, corrections: Corrections) -> numpy.ndarray:
    """Whether the correction changed a token of each candidate of a review database."""
    records = [c.record for c in ReviewStore(template).candidates()]
    return numpy.array([corrections.is_error(region) for region in ranked_regions(records)], dtype=bool)


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
    parser.add_argument("--work", type=Path, required=True, help="where the prepared review is kept and reused")
    parser.add_argument("--every", type=int, nargs="+", default=list(EVERY), help="re-ranking intervals to compare")
    parser.add_argument("--only", nargs="+", help="run only these reviewers (names as printed)")
    parser.add_argument("--http", action="store_true", help="answer through the app's HTTP API (times include it)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    template = prepared_store(args)
    is_error = store_errors(template, Corrections.from_files(args.original, args.corrected))
    print(f"{len(is_error)} candidates, {int(is_error.sum())} errors", flush=True)
    results: Dict[str, dict] = {}
    for name, learn, every, groups in reviewers(args.every):
        if args.only and name not in args.only:
            continue
        db = args.work / f"{name.replace('/', '_')}.sqlite"
        reviewer = by_errors(is_error, groups)
        results[name] = review(template, db, is_error, reviewer, learn, every, args.decisions, args.http)
        print(f"{name}: {results[name]['fixed'][-1]} errors fixed in {len(results[name]['fixed'])}", flush=True)
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def report(results: Dict[str, dict]) -> None:
    print(
        "\n| reviewer | " + " | ".join(f"fixed after {n} (per 100)" for n in CHECKPOINTS) + " | answer ms p50 / p95 |"
    )
    print("|---|" + "---:|" * (len(CHECKPOINTS) + 1))
    for name, result in results.items():
        cells = []
        for n in CHECKPOINTS:
            found = result["fixed"][min(n, len(result["fixed"])) - 1]
            cells.append(f"{found} ({100 * found / min(n, len(result['fixed'])):.1f})")
        ms = 1000 * numpy.array(result["seconds"])
        print(f"| {name} | " + " | ".join(cells) + f" | {numpy.median(ms):.0f} / {numpy.percentile(ms, 95):.0f} |")
    for n in CHECKPOINTS if "static" in results else ():
        at = {name: r["fixed"][min(n, len(r["fixed"])) - 1] for name, r in results.items()}
        ratios = ", ".join(
            f"{name} {found / max(at['static'], 1):.2f}x" for name, found in at.items() if name != "static"
        )
        print(f"after {n}, against static: {ratios}")


if __name__ == "__main__":
    main()
