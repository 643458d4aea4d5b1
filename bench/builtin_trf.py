"""A transformer + spaCy's built-in `ner`, explained through the CRF surrogate (issue 27).

    HF_HUB_OFFLINE=1 python bench/builtin_trf.py --n-train 300 --max-steps 80

What most spaCy users have: `transformer` + `ner` (configs/ner_builtin_trf.cfg on the
packaged all-MiniLM-L6-v2), trained briefly on the first N sentences of the demo corpus
(with its injected annotation errors). Then `segment_influence` is added with no other
step: it fits the CRF surrogate on the ner's own features (through the transformer
listener) and indexes the corpus. Reports the surrogate's agreement on the demo dev set
(its F1 against the pipeline's predictions, each model's F1 against gold, the share of the
pipeline's correct entities the surrogate predicts), how often a training entity queried in
its own sentence ranks itself first, and an in-sample `find-errors` ranking (`influence`
and `loss`) scored against the injected errors. tests/test_builtin_trf.py runs it small.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import spacy
import srsly
from spacy.cli.train import train
from spacy.language import Language
from spacy.tokens import DocBin

from spacy_segment_influence.annotation_errors import ErrorFinder, evaluate_ranking, rank
from spacy_segment_influence.annotation_errors.metrics import Corrections, ranked_regions
from spacy_segment_influence.corpus import convert_corpus, read_docbin

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"


def _first_lines(source: Path, target: Path, n: int) -> Path:
    """The first n sentences of a JSONL corpus (0: all)."""
    lines = source.read_text(encoding="utf8").splitlines()
    target.write_text("\n".join(lines[:n] if n else lines) + "\n", encoding="utf8")
    return target


def train_pipeline(workdir: Path, n_train: int, n_dev: int, max_steps: int) -> Dict[str, Path]:
    """Train transformer + ner on the first n_train demo sentences; the corpus paths and
    the pipeline's."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "train_jsonl": _first_lines(DEMO / "train.jsonl", workdir / "train.jsonl", n_train),
        "corrected_jsonl": _first_lines(DEMO / "train_corrected.jsonl", workdir / "train_corrected.jsonl", n_train),
        "dev_jsonl": _first_lines(DEMO / "dev.jsonl", workdir / "dev.jsonl", n_dev),
    }
    for split in ("train", "dev"):
        paths[split] = workdir / f"{split}.spacy"
        convert_corpus(paths[f"{split}_jsonl"], paths[split])
    overrides = {
        "paths.train": str(paths["train"]),
        "paths.dev": str(paths["dev"]),
        "training.max_steps": max_steps,
        "training.eval_frequency": max(1, max_steps // 2),
        # the config's warm-up (250 steps) is meant for 2000 steps
        "training.optimizer.learn_rate.warmup_steps": max(1, max_steps // 5),
        "training.logger.progress_bar": False,
    }
    train(ROOT / "configs" / "ner_builtin_trf.cfg", workdir / "ner", overrides=overrides)
    paths["model"] = workdir / "ner" / "model-best"
    return paths


def self_retrieval(nlp: Language, docs: List[Any], n_queries: int) -> float:
    """Share of training entities (their gold label, in their own sentence) whose top
    supporter is that very segment."""
    component: Any = nlp.get_pipe("segment_influence")
    hits = total = 0
    for doc_index, reference in enumerate(docs):
        doc = nlp(reference.text)
        for ent in reference.ents:
            if total == n_queries:
                return hits / max(total, 1)
            best = component.explain(doc[ent.start : ent.end], label=ent.label_, k=1)["supporters"]
            hits += bool(best) and (best[0]["doc_index"], best[0]["start"], best[0]["end"]) == (
                doc_index,
                ent.start,
                ent.end,
            )
            total += 1
    return hits / max(total, 1)


def explain_and_rank(paths: Dict[str, Path], n_queries: int = 50) -> Dict[str, Any]:
    """Add segment_influence (surrogate fit + index + agreement on dev), explain and rank."""
    nlp = spacy.load(paths["model"])
    results: Dict[str, Any] = {}
    component: Any = nlp.add_pipe("segment_influence")
    clock = time.perf_counter()
    component.initialize(lambda: [], nlp=nlp, train_path=paths["train"], dev_path=paths["dev"], show_progress=False)
    results["initialize_s"] = round(time.perf_counter() - clock, 1)
    results["agreement"] = component.cfg["surrogate_agreement"]
    results["n_segments"] = len(component.index)
    train_docs, dev_docs = read_docbin(paths["train"], nlp.vocab), read_docbin(paths["dev"], nlp.vocab)
    records = [record for doc in nlp.pipe(d.text for d in dev_docs) for record in doc._.influences]
    results["dev_entities"] = len(records)
    results["dev_entities_with_supporters"] = sum(bool(r["supporters"]) for r in records)
    results["dev_surrogate_agrees"] = sum(r["surrogate_agrees"] for r in records) / max(len(records), 1)
    results["self_retrieval"] = self_retrieval(nlp, train_docs, n_queries)
    clock = time.perf_counter()
    finder = ErrorFinder(nlp, train_docs, dev_docs, ner="ner")
    corrections = Corrections.from_files(paths["train_jsonl"], paths["corrected_jsonl"])
    for method in ("influence", "loss"):
        ranked = ranked_regions(rank(finder, method, k=0))
        metrics = evaluate_ranking(ranked, corrections)
        results[f"{method}_span_ap"], results[f"{method}_sentence_ap"] = metrics["span_ap"], metrics["sentence_ap"]
    results["find_errors_s"] = round(time.perf_counter() - clock, 1)
    results["n_candidates"] = len(finder.candidates)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-dev", type=int, default=151)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "builtin_trf")
    args = parser.parse_args()
    clock = time.perf_counter()
    paths = train_pipeline(args.workdir, args.n_train, args.n_dev, args.max_steps)
    train_s = round(time.perf_counter() - clock, 1)
    results = {"n_train": args.n_train, "max_steps": args.max_steps, "train_s": train_s}
    results.update(explain_and_rank(paths))
    results["ents_f"] = srsly.read_json(paths["model"] / "meta.json")["performance"]["ents_f"]
    results["n_dev"] = len(DocBin().from_disk(paths["dev"]))
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
