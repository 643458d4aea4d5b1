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
- minilm (not in the default set): the MiniLM crf_ner of the fidelity benchmark
  (configs/crf_ner_trf.cfg, 300 steps on the first 3,000 train_original sentences,
  bench/output/fidelity/minilm/train_cmd.sh; --minilm-model) scored on those 3,000
  sentences against the same sentences of train_corrected; dev = the first 500
  validation_original sentences. In-sample only unless --minilm-crossfit (two more
  MiniLM trainings, 300 steps each on the fold corpora).

With --config crf_ner_trf.cfg the demo, conll and systematic models are MiniLM crf_ners instead
(directories crf_ner_trf and folds/model_<k>_crf_ner_trf, metrics_<experiments>_crf_ner_trf.json),
the full-corpus MiniLM benchmark that issue 5 asks for. Three MiniLM trainings per corpus are
hours on CPU; with a GPU (and cupy installed) add --gpu-id 0, which only training uses:

    python bench/find_errors.py --experiment conll --config crf_ner_trf.cfg --gpu-id 0

Rows: every method (`METHODS`), plus the held-out harm that `influence` combines with the loss,
on its own, each twice: in-sample (`ErrorFinder`: the model trained on the whole corpus
finds and scores the candidates) and cross-fitted (`CrossFitFinder`: the corpus split
into 2 folds of whole documents, `split_folds`, seed 0; a model trained on the other
fold, same config with --fold-steps, finds and scores each fold's candidates; its
`influence` is the Fisher combination of the full model's harm and the out-of-fold
loss). Two diagnostic cross-fitted rows: the fold models' own harm, and its Fisher
combination with the out-of-fold loss.
Prints one table per experiment (AP, P@100, recall at 1/5/10 % of the candidates,
document recall@100/200/400 and AUC) and writes all metrics to WORKDIR/metrics.json; then each
`influence` row against the best baseline row by a paired document bootstrap
(WORKDIR/comparisons.json).
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

from spacy_segment_influence.annotation_errors import (
    METHODS,
    Corrections,
    CrossFitFinder,
    ErrorFinder,
    compare_rankings,
    evaluate_ranking,
    held_out_indices,
    write_folds,
)
from spacy_segment_influence.annotation_errors.crossfit import document_of
from spacy_segment_influence.annotation_errors.methods import neg_log_tail
from spacy_segment_influence.tag_schemes import bio_to_spans

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT.parent / "shared" / "data" / "conll2003"
DEMO = ROOT / "assets" / "demo"
TOK2VEC_CONFIG, MINILM_CONFIG = "crf_ner_tok2vec.cfg", "crf_ner_trf.cfg"
COLUMNS = [
    "span_ap",
    "sentence_ap",
    "token_ap",
    "p@100",
    "recall@1%",
    "recall@5%",
    "recall@10%",
    "doc_recall@100",
    "doc_recall@200",
    "doc_recall@400",
    "doc_auc",
]


def run(cmd: List[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def convert(jsonl: Path, out: Path) -> Path:
    if not out.exists():
        run([sys.executable, "-m", "spacy_segment_influence", "convert", str(jsonl), str(out)])
    return out


def config_suffix(config: str) -> str:
    """'' for the tok2vec config, else '_<config stem>': keeps another config's fold models
    and metrics files apart from the tok2vec ones."""
    return "" if config == TOK2VEC_CONFIG else "_" + Path(config).stem


def trained_model(
    output: Path,
    train: Path,
    dev: Path,
    max_steps: int,
    eval_frequency: int,
    config: str = TOK2VEC_CONFIG,
    gpu_id: int = -1,
) -> Path:
    """model-best of configs/<config> trained on `train`, trained when missing. The MiniLM
    config warms up for a tenth of the steps, as bench/output/fidelity/minilm/train_cmd.sh."""
    if not (output / "model-best").exists():
        warmup = (
            ["--training.optimizer.learn_rate.warmup_steps", str(max_steps // 10)] if config == MINILM_CONFIG else []
        )
        run(
            [
                sys.executable,
                "-m",
                "spacy",
                "train",
                str(ROOT / "configs" / config),
                "--output",
                str(output),
                "--paths.train",
                str(train),
                "--paths.dev",
                str(dev),
                "--training.max_steps",
                str(max_steps),
                "--training.eval_frequency",
                str(eval_frequency),
                "--gpu-id",
                str(gpu_id),
                *warmup,
            ]
        )
    return output / "model-best"


def systematic_copy(corrected: Path, out: Path, n_docs: int = 20, seed: int = 0) -> Path:
    """train_corrected with ORG -> LOC for city-named clubs in `n_docs` seeded documents."""
    records = list(srsly.read_jsonl(corrected))
    loc_texts = {
        _text(r, s, e).lower() for r in records for s, e, label in bio_to_spans(r["ner_tags"])[0] if label == "LOC"
    }

    def club_mentions(record) -> List[Tuple[int, int]]:
        return [
            (s, e)
            for s, e, label in bio_to_spans(record["ner_tags"])[0]
            if label == "ORG" and _text(record, s, e).lower() in loc_texts
        ]

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
    print(
        f"systematic noise: {n_mentions} ORG mentions relabelled LOC in {len(chosen)} docs: {', '.join(sorted(chosen))}"
    )
    return out


def _text(record: dict, start: int, end: int) -> str:
    return " ".join(record["tokens"][start:end])


def evaluate_methods(
    finder, train_docs, original: Path, corrected: Path, suffix: str = ""
) -> Tuple[Dict[str, dict], Dict[str, list]]:
    """Metrics per method, and the ranked (sentence id, start, end) regions behind them."""
    ids = [train_docs[c.doc_index].user_data["id"] for c in finder.candidates]
    corrections = Corrections.from_files(original, corrected)
    results, rankeds = {}, {}
    rankings = {method: lambda m=method: finder.scores(m) for method in METHODS}
    rankings["(held-out harm alone)"] = finder.harm
    if isinstance(finder, CrossFitFinder):
        rankings["(fold models' held-out harm)"] = finder.fold_harm
        rankings["(Fisher: fold models' harm + loss)"] = lambda: finder.fold_harm() + neg_log_tail(finder.losses())
    for method, scores_of in rankings.items():
        start = time.perf_counter()
        scores = scores_of()
        order = numpy.argsort(-scores, kind="stable")
        ranked = [(ids[i], finder.candidates[i].start, finder.candidates[i].end) for i in order]
        metrics = evaluate_ranking(ranked, corrections)
        results[method + suffix] = {**metrics, "seconds": time.perf_counter() - start}
        rankeds[method + suffix] = ranked
    return results, rankeds


def comparisons(results: Dict[str, dict], rankeds: Dict[str, list], original: Path, corrected: Path) -> Dict[str, dict]:
    """Each `combined` and `influence` row against the best baseline row (loss, margin,
    confidence, self-influence; in-sample or cross-fitted) by span AP, sentence AP and doc AUC."""
    corrections = Corrections.from_files(original, corrected)
    baselines = [m for m in results if m.split(" (")[0] in ("self-influence", "loss", "margin", "confidence")]
    out = {}
    for method in (m for m in results if m.split(" (")[0] in ("combined", "influence")):
        for metric in ("span_ap", "sentence_ap", "doc_auc"):
            best = max(baselines, key=lambda m: results[m][metric])
            diff = compare_rankings(rankeds[method], rankeds[best], corrections)[metric]
            out[f"{method} vs {best}: {metric}"] = {"difference": diff[0], "ci95": list(diff[1:])}
    return out


def table(results: Dict[str, dict]) -> str:
    lines = [
        "| method | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method, metrics in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{metrics[c]:.3f}" for c in COLUMNS) + " |")
    first = next(iter(results.values()))
    lines.append(
        f"\n{first['n_error_docs']} of {first['n_docs']} documents have errors. Candidates: "
        + "; ".join(
            f"{kind} {m['n_candidates']}, {m['n_error_candidates']} of them errors, in "
            f"{m['n_error_docs_with_candidates']} of the error documents"
            for kind, m in (
                ("in-sample", first),
                ("cross-fitted", next((m for k, m in results.items() if k.endswith("(cross-fitted)")), None)),
            )
            if m is not None
        )
        + "."
    )
    return "\n".join(lines)


def first_sentences(jsonl: Path, n: int, out: Path, ids: List[str] = None) -> Path:
    """The first `n` records of `jsonl` (or, with `ids`, the records with those ids, in order)."""
    if not out.exists():
        records = list(srsly.read_jsonl(jsonl))
        if ids is not None:
            by_id = {r["id"]: r for r in records}
            records = [by_id[i] for i in ids]
        srsly.write_jsonl(out, records[:n])
    return out


def minilm_corpora(workdir: Path) -> Tuple[Path, Path, Path]:
    """train_original[:3000], the same sentences of train_corrected, validation_original[:500]."""
    original = first_sentences(CONLL / "train_original.jsonl", 3000, workdir / "train_original_3000.jsonl")
    ids = [r["id"] for r in srsly.read_jsonl(original)]
    corrected = first_sentences(CONLL / "train_corrected.jsonl", 3000, workdir / "train_corrected_3000.jsonl", ids)
    dev = first_sentences(CONLL / "validation_original.jsonl", 500, workdir / "validation_original_500.jsonl")
    return original, corrected, dev


def experiment(name: str, workdir: Path, args) -> Tuple[Dict[str, dict], Dict[str, dict]]:
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "minilm":
        original, corrected, dev_jsonl = minilm_corpora(workdir)
        frequency = 100
    elif name == "demo":
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
    if name == "minilm":
        model = args.minilm_model
        if not (model / "meta.json").exists():
            raise SystemExit(f"No MiniLM model at {model}: train it with bench/output/fidelity/minilm/train_cmd.sh")
    else:
        model = trained_model(workdir / Path(args.config).stem, train, dev, steps, frequency, args.config, args.gpu_id)
    nlp = spacy.load(model)
    train_docs = list(DocBin().from_disk(train).get_docs(nlp.vocab))
    dev_docs = list(DocBin().from_disk(dev).get_docs(nlp.vocab))
    start = time.perf_counter()
    finder = ErrorFinder(nlp, train_docs, dev_docs)
    print(
        f"{len(finder.candidates)} candidates from {len(train_docs)} sentences in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    results, rankeds = evaluate_methods(finder, train_docs, original, corrected)
    if name == "minilm" and not args.minilm_crossfit:
        return results, comparisons(results, rankeds, original, corrected)
    # cross-fitting: fold k is scored by the model trained on train_k.spacy (all other folds)
    folds_dir = workdir / ("folds" if args.folds == 2 else f"folds_k{args.folds}")
    fold_paths = sorted(folds_dir.glob("train_*.spacy")) or write_folds(train_docs, folds_dir, args.folds, seed=0)
    fold_steps = {"demo": args.demo_steps, "minilm": 300}.get(name, args.fold_steps)
    config = MINILM_CONFIG if name == "minilm" else args.config
    suffix = "" if name == "minilm" else config_suffix(config)
    fold_models = [
        spacy.load(
            trained_model(
                folds_dir / (path.stem.replace("train", "model") + suffix),
                path,
                dev,
                fold_steps,
                frequency,
                config,
                args.gpu_id,
            )
        )
        for path in fold_paths
    ]
    seen = [list(DocBin().from_disk(path).get_docs(nlp.vocab)) for path in fold_paths]
    start = time.perf_counter()
    folds = list(zip(fold_models, held_out_indices(train_docs, seen)))
    crossfit = CrossFitFinder(folds, train_docs, dev_docs, model=nlp)
    print(f"{len(crossfit.candidates)} cross-fitted candidates in {time.perf_counter() - start:.0f} s", flush=True)
    crossfit_results, crossfit_rankeds = evaluate_methods(crossfit, train_docs, original, corrected, " (cross-fitted)")
    results, rankeds = {**results, **crossfit_results}, {**rankeds, **crossfit_rankeds}
    return results, comparisons(results, rankeds, original, corrected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="append", choices=["demo", "conll", "systematic", "minilm"])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "find_errors")
    parser.add_argument("--demo-steps", type=int, default=600)
    parser.add_argument("--folds", type=int, default=2, help="folds of the cross-fitted rows (2, 5, 10 reported)")
    parser.add_argument("--conll-steps", type=int, default=3000)
    parser.add_argument(
        "--fold-steps", type=int, default=1500, help="max_steps of the CoNLL fold models (half the data)"
    )
    parser.add_argument(
        "--config",
        default=TOK2VEC_CONFIG,
        choices=[TOK2VEC_CONFIG, MINILM_CONFIG],
        help="configs/ file of the demo, conll and systematic models (crf_ner_trf.cfg: MiniLM, wants a GPU)",
    )
    parser.add_argument(
        "--gpu-id", type=int, default=-1, help="spacy train --gpu-id (training only; scoring runs on CPU)"
    )
    parser.add_argument(
        "--minilm-model", type=Path, default=ROOT / "bench" / "output" / "fidelity" / "minilm" / "model" / "model-best"
    )
    parser.add_argument(
        "--minilm-crossfit",
        action="store_true",
        help="minilm: also cross-fit (trains two MiniLM fold models, 300 steps each: ~20-40 min each on 2 CPU cores)",
    )
    args = parser.parse_args()
    all_results, all_comparisons = {}, {}
    for name in args.experiment or ["demo", "conll", "systematic"]:
        all_results[name], all_comparisons[name] = experiment(name, args.workdir / name, args)
        print(f"\n### {name}\n\n{table(all_results[name])}\n", flush=True)
        for what, c in all_comparisons[name].items():
            print(f"{what}: {c['difference']:+.3f} (95 % CI {c['ci95'][0]:+.3f} .. {c['ci95'][1]:+.3f})", flush=True)
    # one file per set of experiments, so that a partial rerun keeps the others' figures
    suffix = "" if not args.experiment else "_" + "_".join(args.experiment)
    suffix += config_suffix(args.config) + ("" if args.folds == 2 else f"_k{args.folds}")
    srsly.write_json(args.workdir / f"metrics{suffix}.json", all_results)
    srsly.write_json(args.workdir / f"comparisons{suffix}.json", all_comparisons)


if __name__ == "__main__":
    main()
