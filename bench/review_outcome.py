"""The user's outcome of the review (issue 26): retrain on the corpus corrected after N
simulated decisions and score validation F1 against the corrected validation labels.

    python bench/review_outcome.py --work W --config configs/crf_ner_tok2vec.cfg \\
        --train train_original.spacy --train-corrected train_corrected.spacy \\
        --original train_original.jsonl --corrected train_corrected.jsonl \\
        --dev validation_original.spacy --eval validation_corrected.spacy --steps 600 --seeds 3

Arms, each N decisions by a simulated reviewer who answers from the corrected labels
(accept = fix the card's region to its corrected entity, or O; reject when the
correction left the region's tokens alone):
- app: the review app's learning queue as bench/review_app.py drives it (prepared as
  `segment-influence review` prepares it without --ranking, in-sample --method, from the
  baseline seed-0 model; re-ranked by feature similarity every 10th decision), with
  group answers when every undecided member of the card's pattern gets the same fix
  (one decision, as in bench/review_app.py);
- loss: the out-of-fold loss ranking (2 fold models of whole documents, `find-errors`'s
  cross-fitting) read top down, one candidate a decision;
- random: the app's candidates in a seeded random order;
- oracle (--oracle): every correction, the most a review could gain.
Each arm's decisions are stored in a review database and the corrected corpus written by
`apply-decisions`' own function (`write_decisions`). Every corpus (and the uncorrected
baseline) trains the same config for --steps steps (model-last) on each seed, --jobs at
a time; trainings are cached under WORK/<run>/models (a rerun with more seeds trains only the
new ones). Prints each arm's F1 gain over the baseline, paired by seed (same seed: same
initialisation and batches), with a t interval over seeds.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy
import spacy
from review_app import Reviewer, prepared_store, review, store_errors
from scipy import stats
from spacy.tokens import Doc, DocBin
from thinc.api import Config

from spacy_segment_influence.annotation_errors import Corrections, CrossFitFinder, rank
from spacy_segment_influence.annotation_errors.crossfit import fold_corpus, split_folds
from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.review_app import ReviewSession, ReviewStore, write_decisions
from spacy_segment_influence.review_app.prepare import pattern
from spacy_segment_influence.training import TrainingJob, run_training_jobs


def by_corrections(is_error: numpy.ndarray, corrected: Sequence[Doc], groups: bool) -> Reviewer:
    """The reviewer who knows the corrected labels: accept an error with the fix the
    corrected corpus gives its region (its first corrected entity there, else O); reject
    the rest. With `groups`, one answer for the card's pattern when every undecided
    member gets exactly that answer from the corrected labels."""

    def region(session: ReviewSession, candidate: int):
        record = session.candidates[candidate].record
        span = record["spans"][0]
        start, end = span["token_start"], span["token_end"] + 1
        doc = corrected[record["meta"]["doc_index"]]
        return [(e.start, e.end, e.label_) for e in doc.ents if e.start < end and start < e.end], (start, end)

    def answer(session: ReviewSession, card: dict, members: List[int]) -> dict:
        wrong = bool(is_error[card["id"]])
        body = {"candidate": card["id"], "answer": "accept" if wrong else "reject", "group": False}
        if wrong:
            entities, (start, end) = region(session, card["id"])
            start, end, label = entities[0] if entities else (start, end, "O")
            body.update(label=label, start=start, end=end)
        if groups and len(members) > 1:
            if wrong:
                fixes = [sorted(session._relabelled(m, body["label"])) for m in members]
                body["group"] = all(is_error[m] and fix == region(session, m)[0] for m, fix in zip(members, fixes))
            else:
                body["group"] = not any(is_error[m] for m in members)
        return body

    return answer


def static_store(path: Path, records: List[dict], patterns: List[str], labels: List[str]) -> Path:
    """A review database of `records` in this order (reviewed top down, no learning)."""
    path.unlink(missing_ok=True)
    store = ReviewStore(path)
    store.fill(records, patterns, {}, labels=labels)
    store.close()
    return path


def loss_store(path: Path, folds: List[Path], held_out: List[List[int]], docs: List[Doc], labels: List[str]) -> Path:
    """The out-of-fold loss ranking as a review database (cached)."""
    if path.exists() and ReviewStore(path).prepared:
        return path
    start = time.perf_counter()
    finder = CrossFitFinder([(spacy.load(m), h) for m, h in zip(folds, held_out)], docs)
    records = rank(finder, "loss", k=0)
    order = numpy.argsort(-finder.scores("loss"), kind="stable")
    patterns = [pattern(docs[finder.candidates[i].doc_index], finder.candidates[i]) for i in order]
    print(f"Out-of-fold loss ranking: {len(records)} candidates ({time.perf_counter() - start:.0f} s)", flush=True)
    return static_store(path, records, patterns, labels)


def random_store(path: Path, template: Path, seed: int) -> Path:
    """The app's candidates in a seeded random order."""
    source = ReviewStore(template)
    candidates = source.candidates()
    order = numpy.random.default_rng(seed).permutation(len(candidates))
    records = [candidates[i].record for i in order]
    return static_store(path, records, [candidates[i].pattern for i in order], source.info("labels"))


def corpora(args: argparse.Namespace, run: Path):
    """The training corpus (its first --limit sentences when given, written to the run's
    folder), its corrected twin, and the vocab they were read with."""
    vocab = spacy.blank("en").vocab
    train, corrected = read_docbin(args.train, vocab), read_docbin(args.train_corrected, vocab)
    if [d.text for d in train] != [d.text for d in corrected]:
        raise SystemExit(f"{args.train} and {args.train_corrected} hold other sentences")
    path = args.train
    if args.limit:
        train, corrected = train[: args.limit], corrected[: args.limit]
        path = run / "train.spacy"
        path.write_bytes(DocBin(docs=train, store_user_data=True).to_bytes())
    return path, train, corrected


def label_differences(docs: Sequence[Doc], corrected: Sequence[Doc]) -> int:
    """Tokens whose BILUO tag differs from the corrected corpus'."""
    return sum(
        a.ent_iob_ != b.ent_iob_ or a.ent_type_ != b.ent_type_ for x, y in zip(docs, corrected) for a, b in zip(x, y)
    )


def jobs_for(name: str, corpus: bytes, seeds: Sequence[int], run: Path, steps: int) -> List[TrainingJob]:
    return [
        TrainingJob(run / "models" / f"{name}-seed-{s}", corpus, s, steps, "model-last", f"{name} seed {s}")
        for s in seeds
    ]


def f1_of(job: TrainingJob) -> float:
    """ents_f on the eval corpus at the last step (spaCy's last evaluation, written to
    model-last's meta: eval_frequency is the step count)."""
    return float(json.loads((job.model_path / "meta.json").read_text())["performance"]["ents_f"])


def simulate(args: argparse.Namespace, run: Path, train: List[Doc], corrected: List[Doc], trained) -> Dict[str, dict]:
    """Prepare the three arms' reviews and let the reviewer take --decisions in each."""
    baseline, folds, held_out = trained
    app = prepared_store(
        argparse.Namespace(
            work=run, model=baseline, train=args.train_path, dev=args.dev, ranking=None, method=args.method
        )
    )
    labels = ReviewStore(app).info("labels")
    stores = {
        "app": app,
        "loss": loss_store(run / "loss_prepared.sqlite", folds, held_out, train, labels),
        "random": random_store(run / "random_prepared.sqlite", app, args.random_seed),
    }
    corrections = Corrections.from_files(args.original, args.corrected)
    out: Dict[str, dict] = {}
    for arm, template in stores.items():
        is_error = store_errors(template, corrections)
        reviewer = by_corrections(is_error, corrected, groups=arm == "app")
        db = run / f"{arm}.sqlite"
        result = review(template, db, is_error, reviewer, arm == "app", 10, args.decisions, False)
        corpus = run / f"{arm}.spacy"
        counts = write_decisions(args.train_path, db, corpus)
        fixed = read_docbin(corpus, spacy.blank("en").vocab)
        out[arm] = {
            "candidates": len(is_error),
            "errors": int(is_error.sum()),
            "errors fixed": result["fixed"][-1],
            "decisions": len(result["fixed"]),
            **counts,
            "tokens differing from corrected": label_differences(fixed, corrected),
            "corpus": corpus,
        }
        print(f"{arm}: {json.dumps({k: v for k, v in out[arm].items() if k != 'corpus'})}", flush=True)
    return out


def interval(values: Sequence[float], level: float = 0.95):
    """Mean and the t interval's half width (0 for one value)."""
    values = numpy.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / numpy.sqrt(len(values))
    return float(values.mean()), float(half)


def report(f1: Dict[str, List[float]], reviews: Dict[str, dict]) -> None:
    print(
        "\n| arm | errors fixed | tokens differing from corrected | F1 per seed | mean F1 "
        "| gain over baseline (95 % t) |"
    )
    print("|---|---:|---:|---|---:|---:|")
    base = numpy.array(f1["baseline"])
    for arm, scores in f1.items():
        info = reviews.get(arm, {})
        mean, _ = interval(scores)
        gain, half = interval(100 * (numpy.array(scores) - base))
        print(
            f"| {arm} | {info.get('errors fixed', 0)} | {info.get('tokens differing from corrected', '')} | "
            + " ".join(f"{100 * s:.2f}" for s in scores)
            + f" | {100 * mean:.2f} | {gain:+.2f} ± {half:.2f} |"
        )
    for a, b in (("app", "loss"), ("app", "random"), ("loss", "random")):
        diff, half = interval(100 * (numpy.array(f1[a]) - numpy.array(f1[b])))
        print(f"{a} - {b}: {diff:+.2f} ± {half:.2f} F1 points (paired by seed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="models, reviews and corpora (reused by a rerun)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True, help="the uncorrected training corpus (.spacy)")
    parser.add_argument("--train-corrected", type=Path, required=True, help="its corrected labels (.spacy)")
    parser.add_argument("--original", type=Path, required=True, help="JSONL --train was converted from")
    parser.add_argument("--corrected", type=Path, required=True, help="JSONL --train-corrected was converted from")
    parser.add_argument("--dev", type=Path, required=True, help="dev corpus the app's ranking uses (uncorrected)")
    parser.add_argument("--eval", type=Path, required=True, help="the corrected validation corpus scored")
    parser.add_argument("--method", default="combined", help="the app's in-sample ranking")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=500)
    parser.add_argument("--limit", type=int, default=0, help="only the first N sentences (0: all)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="also train on every correction (the upper bound)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    run = args.work / f"n{args.limit or 'all'}-steps{args.steps}-d{args.decisions}"
    run.mkdir(parents=True, exist_ok=True)
    args.train_path, train, corrected = corpora(args, run)
    config = Config().from_disk(args.config, interpolate=False)
    config["training"]["eval_frequency"] = args.steps
    seeds = list(range(args.seeds))
    base_jobs = jobs_for("baseline", args.train_path.read_bytes(), seeds, run, args.steps)
    held_out = split_folds(train, 2, 0)
    fold_jobs = [
        jobs_for(f"fold{k}", fold_corpus(train, h).to_bytes(), [0], run, args.steps)[0] for k, h in enumerate(held_out)
    ]
    first = [base_jobs[0], *fold_jobs, *base_jobs[1:2]]
    run_training_jobs(config, first, args.eval, n_processes=args.jobs)
    trained = (base_jobs[0].model_path, [j.model_path for j in fold_jobs], held_out)
    reviews = simulate(args, run, train, corrected, trained)
    if args.oracle:
        reviews["oracle"] = {
            "errors fixed": "all",
            "tokens differing from corrected": 0,
            "corpus": run / "oracle.spacy",
        }
        reviews["oracle"]["corpus"].write_bytes(DocBin(docs=corrected, store_user_data=True).to_bytes())
    arm_jobs = {arm: jobs_for(arm, r["corpus"].read_bytes(), seeds, run, args.steps) for arm, r in reviews.items()}
    run_training_jobs(
        config, base_jobs[2:] + [j for js in arm_jobs.values() for j in js], args.eval, n_processes=args.jobs
    )
    f1 = {"baseline": [f1_of(j) for j in base_jobs], **{arm: [f1_of(j) for j in js] for arm, js in arm_jobs.items()}}
    report(f1, reviews)
    if args.out:
        summary = {arm: {k: v for k, v in r.items() if k != "corpus"} for arm, r in reviews.items()}
        args.out.write_text(json.dumps({"f1": f1, "reviews": summary, "steps": args.steps}, indent=1))


if __name__ == "__main__":
    main()
