"""Fidelity of segment influence on a small tok2vec crf_ner (issue 4), in one run.

    python bench/fidelity.py --n-train 150 --n-dev 40 --n-segments 6 --pairs 200

Trains the test suite's small tok2vec crf_ner on 300 sentences of the shipped demo corpus
(clean labels), then runs `validate` (refit head, exact Hessian, retrain without each
chosen segment) and prints the correlations per method and pair group.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from spacy.training import Example
from thinc.api import fix_random_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spacy_segment_influence.corpus import read_jsonl_docs  # noqa: E402
from spacy_segment_influence.validate import validate  # noqa: E402
from tests.conftest import tok2vec_nlp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=150)
    parser.add_argument("--n-dev", type=int, default=40)
    parser.add_argument("--n-segments", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    nlp = tok2vec_nlp()
    docs = list(read_jsonl_docs(ROOT / "assets/demo/train_corrected.jsonl", nlp.vocab))
    dev = list(read_jsonl_docs(ROOT / "assets/demo/dev.jsonl", nlp.vocab))
    examples = [Example(doc.copy(), doc) for doc in docs[:300]]
    fix_random_seed(args.seed)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(15):
        for first in range(0, len(examples), 50):
            nlp.update(examples[first : first + 50], sgd=optimizer, losses={})
    print("dev ents_f", round(nlp.evaluate([Example(d.copy(), d) for d in dev])["ents_f"], 4))
    start = time.perf_counter()
    result = validate(
        nlp, docs[: args.n_train], dev[: args.n_dev], n_segments=args.n_segments, pairs=args.pairs,
        l2=args.l2, seed=args.seed, show_progress=False,
    )
    print(f"validate: {time.perf_counter() - start:.0f} s; settings {json.dumps(result['settings'])}")
    print("| method | group | pearson | spearman | kendall | sign agreement | n |")
    print("|---|---|---|---|---|---|---|")
    for method, groups in result["methods"].items():
        for group, m in groups.items():
            print(f"| {method} | {group} | {m['pearson']:.3f} | {m['spearman']:.3f} | {m['kendall']:.3f} | "
                  f"{m['sign_agreement']:.3f} | {m['n']} |")
    if args.out:
        args.out.write_text(json.dumps({k: result[k] for k in ("methods", "settings")}, indent=2))


if __name__ == "__main__":
    main()
