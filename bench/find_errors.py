"""Annotation-error ranking: every `find-errors` method in one run, scored against
corrected labels (issue 5).

    python bench/find_errors.py                     # demo, conll and systematic
    python bench/find_errors.py --experiment demo --experiment conll

Experiments (tok2vec + crf_ner, configs/crf_ner_tok2vec.cfg, trained here when missing):
- demo: assets/demo/train.jsonl (41 injected errors) against train_corrected.jsonl.
- conll: CoNLL-2003 train_original (the real errors Reiss et al. 2020 corrected) against
  train_corrected; dev = validation_original.
- systematic: a copy of CoNLL train_corrected where, in 20 documents chosen by a seeded
  draw, every ORG mention whose text is also annotated LOC somewhere in the corpus (clubs
  named after their city: SEATTLE, Barcelona, Hamburg, ...) is relabelled LOC; the model
  trained on that copy is scored against train_corrected. Dev = validation_corrected.

Rows: the six methods, plus the held-out harm that `influence` combines with the loss,
on its own. Prints one table per experiment (AP, P@100, recall at 1/5/10 % of the candidates,
document recall@100/200/400 and AUC) and writes all metrics to WORKDIR/metrics.json.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import spacy
import srsly
from spacy.tokens import DocBin

from spacy_segment_influence.corpus import bio_to_spans
from spacy_segment_influence.errors import METHODS, ErrorFinder, document_of, evaluate_ranking, read_tags

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT.parent / "shared" / "data" / "conll2003"
DEMO = ROOT / "assets" / "demo"
COLUMNS = ["ap", "p@100", "recall@1%", "recall@5%", "recall@10%", "doc_recall@100", "doc_recall@200", "doc_recall@400", "doc_auc"]


def run(cmd: List[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def convert(jsonl: Path, out: Path) -> Path:
    if not out.exists():
        run([sys.executable, "-m", "spacy_segment_influence", "convert", str(jsonl), str(out)])
    return out


def trained_model(workdir: Path, train: Path, dev: Path, max_steps: int, eval_frequency: int) -> Path:
    """model-best of configs/crf_ner_tok2vec.cfg trained on `train`, trained when missing."""
    output = workdir / "crf_ner_tok2vec"
    if not (output / "model-best").exists():
        run([
            sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "crf_ner_tok2vec.cfg"),
            "--output", str(output), "--paths.train", str(train), "--paths.dev", str(dev),
            "--training.max_steps", str(max_steps), "--training.eval_frequency", str(eval_frequency), "--gpu-id", "-1",
        ])
    return output / "model-best"


def systematic_copy(corrected: Path, out: Path, n_docs: int = 20, seed: int = 0) -> Path:
    """train_corrected with ORG -> LOC for city-named clubs in `n_docs` seeded documents."""
    records = list(srsly.read_jsonl(corrected))
    loc_texts = {_text(r, s, e).lower() for r in records for s, e, label in bio_to_spans(r["ner_tags"])[0] if label == "LOC"}

    def club_mentions(record) -> List[Tuple[int, int]]:
        return [(s, e) for s, e, label in bio_to_spans(record["ner_tags"])[0] if label == "ORG" and _text(record, s, e).lower() in loc_texts]

    eligible = sorted({document_of(r["id"]) for r in records if club_mentions(r)})
    chosen = set(random.Random(seed).sample(eligible, n_docs))
    n_mentions = 0
    with out.open("w", encoding="utf8") as file_:
        for record in records:
            if document_of(record["id"]) in chosen:
                for s, e in club_mentions(record):
                    record["ner_tags"][s:e] = ["B-LOC"] + ["I-LOC"] * (e - s - 1)
                    n_mentions += 1
            file_.write(json.dumps(record) + "\n")
    print(f"systematic noise: {n_mentions} ORG mentions relabelled LOC in {len(chosen)} docs: {', '.join(sorted(chosen))}")
    return out


def _text(record: dict, start: int, end: int) -> str:
    return " ".join(record["tokens"][start:end])


def evaluate_methods(model: Path, train: Path, dev: Path, original: Path, corrected: Path) -> Dict[str, dict]:
    nlp = spacy.load(model)
    train_docs = list(DocBin().from_disk(train).get_docs(nlp.vocab))
    dev_docs = list(DocBin().from_disk(dev).get_docs(nlp.vocab))
    start = time.perf_counter()
    finder = ErrorFinder(nlp, train_docs, dev_docs)
    print(f"{len(finder.candidates)} candidates from {len(train_docs)} sentences in {time.perf_counter() - start:.0f} s", flush=True)
    ids = [train_docs[c.doc_index].user_data["id"] for c in finder.candidates]
    original_tags, corrected_tags = read_tags(original), read_tags(corrected)
    results = {}
    rankings = {method: lambda m=method: finder.scores(m) for method in METHODS}
    rankings["(held-out harm alone)"] = finder.harm
    for method, scores_of in rankings.items():
        start = time.perf_counter()
        scores = scores_of()
        order = numpy.argsort(-scores, kind="stable")
        ranked = [(ids[i], finder.candidates[i].start, finder.candidates[i].end) for i in order]
        results[method] = {**evaluate_ranking(ranked, original_tags, corrected_tags), "seconds": time.perf_counter() - start}
    return results


def table(results: Dict[str, dict]) -> str:
    lines = [
        "| method | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method, metrics in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{metrics[c]:.3f}" for c in COLUMNS) + " |")
    first = next(iter(results.values()))
    lines.append(
        f"\n{first['n_candidates']} candidates, {first['n_error_candidates']} of them errors; "
        f"{first['n_error_docs']} of {first['n_docs']} documents have errors "
        f"({first['n_error_docs_with_candidates']} of them have an error candidate)."
    )
    return "\n".join(lines)


def experiment(name: str, workdir: Path, args) -> Dict[str, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "demo":
        original, corrected, dev_jsonl = DEMO / "train.jsonl", DEMO / "train_corrected.jsonl", DEMO / "dev.jsonl"
        steps, frequency = args.demo_steps, 100
    elif name == "conll":
        original, corrected = CONLL / "train_original.jsonl", CONLL / "train_corrected.jsonl"
        dev_jsonl, steps, frequency = CONLL / "validation_original.jsonl", args.conll_steps, 500
    else:
        corrected, dev_jsonl = CONLL / "train_corrected.jsonl", CONLL / "validation_corrected.jsonl"
        original = workdir / "train_systematic.jsonl"
        if not original.exists():
            systematic_copy(corrected, original)
        steps, frequency = args.conll_steps, 500
    train = convert(original, workdir / f"{original.stem}.spacy")
    dev = convert(dev_jsonl, workdir / f"{dev_jsonl.stem}.spacy")
    model = trained_model(workdir, train, dev, steps, frequency)
    return evaluate_methods(model, train, dev, original, corrected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="append", choices=["demo", "conll", "systematic"])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "find_errors")
    parser.add_argument("--demo-steps", type=int, default=600)
    parser.add_argument("--conll-steps", type=int, default=3000)
    args = parser.parse_args()
    all_results = {}
    for name in args.experiment or ["demo", "conll", "systematic"]:
        all_results[name] = experiment(name, args.workdir / name, args)
        print(f"\n### {name}\n\n{table(all_results[name])}\n", flush=True)
    srsly.write_json(args.workdir / "metrics.json", all_results)


if __name__ == "__main__":
    main()
