"""Annotation-error finding against the peers, side by side (issue 12, item 2): the
product's rankings and every cleanlab 2.9 / nessie 0.1.1 detector, run through their
own libraries (bench/peers), on the same model outputs and the same candidates, scored by
`evaluate_ranking` and compared by the paired document bootstrap of `compare_rankings`.

    python bench/error_peers.py --model full/model-best --train train.spacy --dev dev.spacy \\
        --original train_original.jsonl --corrected train_corrected.jsonl \\
        --fold-model folds/model_0/model-best --fold-train folds/train_0.spacy \\
        --fold-model folds/model_1/model-best --fold-train folds/train_1.spacy \\
        --peers-python bench/peers/.venv/bin/python --workdir bench/output/error_peers

Two settings, each with its own candidates (those the scoring models find, as
`find-errors` does): in-sample (the model trained on all of TRAIN scores everything) and,
with fold models, cross-fitted (each sentence scored by the fold model that did not see
it; the product's `influence`, and so `combined`, take the held-out harm from the full model). The peers get
the scoring models' exact CRF token marginals (BILUO columns summed into BIO: B = B + U,
I = I + L), their Viterbi tags, the encoder's token features, and one member (the scoring
model), so nessie's ensemble detectors report "not applicable". A peer's span and sentence
scores are its own (bench/peers/README.md); its "own sentence AP" ranks sentences by its
sentence score, next to the sentence AP read from its candidate ranking as for ours.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy
import spacy

from spacy_segment_influence.annotation_errors import (
    METHODS,
    Corrections,
    CrossFitFinder,
    ErrorFinder,
    compare_rankings,
    evaluate_ranking,
    held_out_indices,
)
from spacy_segment_influence.annotation_errors.metrics import average_precision
from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.influence.segments import token_marginals

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers"))
from peer_input import save_peer_input  # noqa: E402

DEFAULT = "combined"  # find-errors' default method
Region = Tuple[str, int, int]


def bio_columns(tags: Sequence[str]) -> Tuple[List[str], numpy.ndarray]:
    """BIO tag names ("O" first) and, per model tag, the BIO column it adds to."""
    names = ["O"] + sorted({f"{p}-{t[2:]}" for t in tags if t != "O" for p in "BI"})
    index = {name: i for i, name in enumerate(names)}
    prefix = {"B": "B", "U": "B", "I": "I", "L": "I"}
    return names, numpy.array([0 if t == "O" else index[f"{prefix[t[0]]}-{t[2:]}"] for t in tags])


def export(pieces: Sequence[Tuple[ErrorFinder, Sequence[int]]], docs, candidates, out: Path) -> None:
    """Write a peer input directory: sentence i of `docs` is scored by the finder whose
    indices hold i."""
    ner = pieces[0][0].ner
    names, column = bio_columns(ner.tags)
    n_bio = len(names)
    sizes = numpy.array([len(doc) for doc in docs])
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)])
    n_tokens, width = int(offsets[-1]), pieces[0][0].train.batch.features[0].shape[1]
    probs = numpy.zeros((n_tokens, n_bio), "float32")
    gold = numpy.zeros(n_tokens, "int64")
    pred = numpy.zeros(n_tokens, "int64")
    features = numpy.zeros((n_tokens, width), "float32")
    for finder, indices in pieces:
        _, marginals = token_marginals(finder.ner, finder.train.batch.features)
        bio = numpy.zeros((len(marginals), n_bio), "float32")
        numpy.add.at(bio.T, column, marginals.T)
        local_offsets = numpy.concatenate([[0], numpy.cumsum([len(x) for x in finder.train.batch.features])])
        predicted: Dict[int, List[Tuple[int, int, str]]] = {}
        for c in finder.candidates:
            predicted.setdefault(c.doc_index, []).extend(c.predicted)
        for local, i in enumerate(indices):
            rows = slice(offsets[i], offsets[i + 1])
            probs[rows] = bio[local_offsets[local] : local_offsets[local + 1]]
            features[rows] = finder.train.batch.features[local]
            tags = numpy.asarray(finder.train.batch.tags[local])
            gold[rows] = numpy.where(tags >= 0, column[numpy.maximum(tags, 0)], 0)
            sentence = numpy.zeros(sizes[i], "int64")
            for start, end, label in set(predicted.get(local, [])):
                sentence[start] = names.index(f"B-{label}")
                sentence[start + 1 : end] = names.index(f"I-{label}")
            pred[rows] = sentence
    # float32 rows can sum to 1 + 1e-7 after the BIO columns are added; cleanlab refuses p > 1
    probs = numpy.clip(probs.astype("float64") / probs.sum(axis=1, keepdims=True), 0.0, 1.0).astype("float32")
    meta = {
        "tag_names": names,
        "class_names": ["O"] + sorted({n[2:] for n in names[1:]}),
        "sentence_ids": [doc.user_data["id"] for doc in docs],
        "tokens": [[t.text for t in doc] for doc in docs],
        "members": ["scoring model"],
    }
    arrays = {
        "offsets": offsets,
        "gold": gold,
        "probs": probs,
        "pred": pred,
        "member_probs": probs[None],
        "member_pred": pred[None],
        "features": features,
        "candidates": numpy.array([(c.doc_index, c.start, c.end) for c in candidates], "int64"),
    }
    save_peer_input(out, meta, arrays)


def ranking(scores: numpy.ndarray, regions: Sequence[Region]) -> List[Region]:
    return [regions[i] for i in numpy.argsort(-numpy.asarray(scores, "float64"), kind="stable")]


def own_sentence_ap(scores: Sequence[float], sentence_ids: Sequence[str], corrections: Corrections) -> float:
    order = numpy.argsort(-numpy.asarray(scores, "float64"), kind="stable")
    return average_precision([sentence_ids[i] in corrections.changed for i in order])


def run_setting(name: str, finder, pieces, docs, args, corrections: Corrections) -> dict:
    workdir = args.workdir / name
    regions = [(docs[c.doc_index].user_data["id"], c.start, c.end) for c in finder.candidates]
    start = time.perf_counter()
    rankings = {method: ranking(finder.scores(method), regions) for method in METHODS}
    seconds = {"product": round(time.perf_counter() - start, 1)}
    export(pieces, docs, finder.candidates, workdir)
    peer_file = workdir / "peer_scores.json"
    if not peer_file.exists() or args.rerun_peers:
        start = time.perf_counter()
        cmd = [str(args.peers_python), str(ROOT / "bench" / "peers" / "run_peers.py"), str(workdir)]
        subprocess.run(cmd + (["--skip", *args.skip] if args.skip else []), check=True)
        seconds["peers"] = round(time.perf_counter() - start, 1)
    peers = json.loads(peer_file.read_text())
    sentence_ids = [doc.user_data["id"] for doc in docs]
    whole_sentences = [(doc.user_data["id"], 0, len(doc)) for doc in docs]
    own_sentence, sentence_rankings = {}, {}
    for method, entry in peers.items():
        if method == "_failed":
            continue
        rankings[method] = ranking(entry["span"], regions)
        own_sentence[method] = own_sentence_ap(entry["sentence"], sentence_ids, corrections)
        # its sentence scores as a ranking of whole-sentence regions: the bootstrap's sentence AP is then its own
        sentence_rankings[method] = ranking(entry["sentence"], whole_sentences)
    metrics = {method: evaluate_ranking(ranked, corrections) for method, ranked in rankings.items()}
    for method, value in own_sentence.items():
        metrics[method]["own_sentence_ap"] = value
    peers_run = [m for m in rankings if m in peers]  # "<library>:<detector>"

    def sentence(m: str) -> float:
        return max(metrics[m]["sentence_ap"], metrics[m].get("own_sentence_ap", 0.0))

    best_span = max(peers_run, key=lambda m: metrics[m]["span_ap"])
    best_sentence = max(peers_run, key=sentence)
    others = [m for m in METHODS if m not in (DEFAULT, "random")]
    comparisons = {
        m: compare_rankings(rankings[DEFAULT], rankings[m], corrections, n_boot=args.n_boot)
        for m in dict.fromkeys([best_span, best_sentence, *others])
    }
    own = compare_rankings(rankings[DEFAULT], sentence_rankings[best_sentence], corrections, n_boot=args.n_boot)
    comparisons[f"{best_sentence} (own sentence scores)"] = {"sentence_ap": own["sentence_ap"]}
    return {
        "metrics": metrics,
        "failed": peers.get("_failed", {}),
        "best_span": best_span,
        "best_sentence": best_sentence,
        "comparisons": comparisons,
        "seconds": seconds,
    }


def table(result: dict) -> str:
    rows = [
        "| method | span AP | sentence AP | own sentence AP | token AP | P@100 | doc AUC |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    metrics = result["metrics"]
    for method in sorted(metrics, key=lambda m: -metrics[m]["span_ap"]):
        m = metrics[method]
        own = f"{m['own_sentence_ap']:.3f}" if "own_sentence_ap" in m else ""
        rows.append(
            f"| {method} | {m['span_ap']:.3f} | {m['sentence_ap']:.3f} | {own} | {m['token_ap']:.3f} | "
            f"{m['p@100']:.2f} | {m['doc_auc']:.3f} |"
        )
    for other, diffs in result["comparisons"].items():
        cells = ", ".join(f"{k} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for k, (d, lo, hi) in diffs.items())
        rows.append(f"\n{DEFAULT} - {other}: {cells}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--original", type=Path, required=True)
    parser.add_argument("--corrected", type=Path, required=True)
    parser.add_argument("--fold-model", type=Path, action="append", default=[])
    parser.add_argument("--fold-train", type=Path, action="append", default=[])
    parser.add_argument("--peers-python", type=Path, default=ROOT / "bench" / "peers" / ".venv" / "bin" / "python")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "error_peers")
    parser.add_argument("--skip", nargs="*", default=[], help="peer methods to skip (run_peers.py --skip)")
    parser.add_argument("--setting", action="append", choices=["in-sample", "cross-fitted"])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--rerun-peers", action="store_true")
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    docs = read_docbin(args.train, nlp.vocab)
    dev = read_docbin(args.dev, nlp.vocab)
    corrections = Corrections.from_files(args.original, args.corrected)
    settings = args.setting or (["in-sample", "cross-fitted"] if args.fold_model else ["in-sample"])
    results = {}
    for name in settings:
        if name == "in-sample":
            finder = ErrorFinder(nlp, docs, dev)
            pieces = [(finder, list(range(len(docs))))]
        else:
            models = [spacy.load(path) for path in args.fold_model]
            held_out = held_out_indices(docs, [read_docbin(path, nlp.vocab) for path in args.fold_train])
            finder = CrossFitFinder(list(zip(models, held_out)), docs, dev, model=nlp)
            pieces = list(zip(finder.finders, held_out))
        results[name] = run_setting(name, finder, pieces, docs, args, corrections)
        print(f"\n## {name}\n\n{table(results[name])}\n", flush=True)
        (args.workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
