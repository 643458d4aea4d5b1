"""Are the entity probabilities calibrated? crf_ner's exact span marginals against
spaCy's beam_ner (`scored_ents`, the beam's share of each entity), both trained on the
same CoNLL sentences with the same tok2vec, batching and steps.

    python bench/entity_calibration.py --n-train 2000 --max-steps 1000

For every predicted entity on CoNLL validation: its probability, and whether it is
correct (same span and label in gold). crf_ner also with a temperature
(`calibration.calibrate`) fitted on the even validation docs and measured on the odd
ones. Reports expected calibration error over 10 equal-width bins (sum over bins of
|bin| / N * |accuracy - mean probability|), and writes a reliability plot when
matplotlib is installed.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import ner_quality
import numpy
import spacy
from ner_quality import convert, run
from spacy.tokens import Doc, DocBin

from spacy_segment_influence.ner.calibration import calibrate

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"crf_ner": "crf_ner_tok2vec.cfg", "beam_ner": "ner_beam_tok2vec.cfg"}


def corpus(name: str, workdir: Path, limit: int) -> Path:
    """The first `limit` sentences (0: all) of a CoNLL JSONL file as .spacy, converted once."""
    path = workdir / f"{name}.spacy"
    return path if path.exists() else convert(name, workdir, limit)


def train(config: str, out: Path, train_path: Path, dev_path: Path, max_steps: int) -> Path:
    if not (out / "model-last").exists():
        cmd = [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / config), "--output", str(out)]
        cmd += ["--paths.train", str(train_path), "--paths.dev", str(dev_path)]
        cmd += ["--training.max_steps", str(max_steps), "--training.eval_frequency", str(max_steps)]
        run(cmd)
    return out / "model-last"


def crf_ner_scores(nlp, docs) -> List[Dict[Tuple[int, int, str], float]]:
    ner = nlp.get_pipe("crf_ner")
    out = []
    for doc in nlp.pipe(docs, batch_size=256):
        group = doc.spans[ner.scores_key]
        out.append({(s.start, s.end, s.label_): float(p) for s, p in zip(group, group.attrs["scores"])})
    return out


def beam_ner_scores(nlp, docs) -> List[Dict[Tuple[int, int, str], float]]:
    ner = nlp.get_pipe("ner")
    out = []
    with nlp.select_pipes(disable=["ner"]):
        encoded = list(nlp.pipe(docs, batch_size=256))
    for first in range(0, len(encoded), 256):
        batch = encoded[first : first + 256]
        beams = ner.predict(batch)
        scored = ner.scored_ents(beams)
        ner.set_annotations(batch, beams)
        for doc, scores in zip(batch, scored):
            ents = [(e.start, e.end, e.label_) for e in doc.ents]
            out.append({ent: float(scores.get(ent, 0.0)) for ent in ents})
    return out


def calibration(probs: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> dict:
    probs, correct = numpy.asarray(probs), numpy.asarray(correct, dtype=float)
    bins = numpy.minimum((probs * n_bins).astype(int), n_bins - 1)
    table = []
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            conf, acc = float(probs[inside].mean()), float(correct[inside].mean())
            ece += inside.mean() * abs(acc - conf)
            table.append({"bin": b, "n": int(inside.sum()), "confidence": conf, "accuracy": acc})
    return {
        "ece": float(ece),
        "n_entities": len(probs),
        "precision": float(correct.mean()),
        "mean_probability": float(probs.mean()),
        "brier": float(((probs - correct) ** 2).mean()),
        "bins": table,
    }


def evaluate(nlp, name: str, gold: Sequence) -> dict:
    """Calibration of the predicted entities' probabilities on reference docs `gold`."""
    texts = [Doc(nlp.vocab, words=[t.text for t in doc]) for doc in gold]
    scores = crf_ner_scores(nlp, texts) if name == "crf_ner" else beam_ner_scores(nlp, texts)
    probs, correct = [], []
    for doc, predicted in zip(gold, scores):
        truth = {(e.start, e.end, e.label_) for e in doc.ents}
        for ent, p in predicted.items():
            probs.append(p)
            correct.append(ent in truth)
    result = calibration(probs, correct)
    result["ents_f"] = 2 * sum(correct) / (len(correct) + sum(len(doc.ents) for doc in gold))
    return result


def plot(results: Dict[str, dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no reliability plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, result in results.items():
        if "odd docs" not in name:
            continue
        bins = result["bins"]
        label = f"{name} (ECE {result['ece']:.3f})"
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=label)
    ax.set_xlabel("predicted entity probability")
    ax.set_ylabel("share of entities correct")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"Wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "entity_calibration")
    parser.add_argument("--data", type=Path, default=ner_quality.DATA, help="folder of the CoNLL-2003 JSONL files")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--full", action="store_true", help="also measure on all validation docs")
    args = parser.parse_args()
    ner_quality.DATA = args.data
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_path = corpus("train_original", args.workdir, args.n_train)
    dev_path = corpus("validation_original", args.workdir, 0)
    results = {}
    for name in args.models:
        config = MODELS[name]
        nlp = spacy.load(train(config, args.workdir / name, train_path, dev_path, args.max_steps))
        gold = list(DocBin().from_disk(dev_path).get_docs(nlp.vocab))
        runs = {f"{name} (odd docs)": (gold[1::2], None)}
        if args.full:
            runs[name] = (gold, None)
        if name == "crf_ner":  # temperature fitted on the even validation docs, measured on the odd ones
            runs[f"{name} + temperature (odd docs)"] = (gold[1::2], calibrate(nlp, gold[0::2]))
        for run_name, (docs, temperature) in runs.items():
            if name == "crf_ner":  # `calibrate` above already set the fitted one: the raw runs need 1
                nlp.get_pipe("crf_ner").cfg["temperature"] = temperature if temperature is not None else 1.0
            results[run_name] = evaluate(nlp, name, docs)
            results[run_name]["temperature"] = temperature
            print(run_name, json.dumps({k: v for k, v in results[run_name].items() if k != "bins"}), flush=True)
    out = args.workdir / f"calibration_{'_'.join(args.models)}.json"
    out.write_text(json.dumps(results, indent=2))
    plot(results, args.workdir / "reliability.png")


if __name__ == "__main__":
    main()
