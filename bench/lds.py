"""LDS of the attributions on CoNLL-2003 (issue 23): a tok2vec crf_ner trained on the
first --n-train training sentences, M subsets retrained with the same config.

    python bench/lds.py --n-train 1000 --subsets 16 --steps 500 --jobs 2

Needs ../shared/data/conll2003 beside the checkout (or --data). Writes under
bench/output/lds/ (models reused on a rerun) and prints `segment-influence lds`'s table.
"""

import argparse
from pathlib import Path

import spacy
from spacy.tokens import DocBin
from thinc.api import Config

from spacy_segment_influence.corpus import read_jsonl_docs
from spacy_segment_influence.fidelity.lds import run_lds
from spacy_segment_influence.training import TrainingJob, run_training_jobs

ROOT = Path(__file__).resolve().parent.parent


def first(path: Path, n: int, vocab) -> list:
    docs = []
    for doc in read_jsonl_docs(path, vocab):
        docs.append(doc)
        if len(docs) >= n:
            break
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "crf_ner_tok2vec.cfg")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--subsets", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed-repeats", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--inits", type=int, default=4)
    parser.add_argument("--methods", default="string-count,head,embeddings")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "output" / "lds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = spacy.blank("en").vocab
    train_path, dev_path = args.out / "train.spacy", args.out / "dev.spacy"
    DocBin(docs=first(args.data / "train_original.jsonl", args.n_train, vocab), store_user_data=True).to_disk(
        train_path
    )
    DocBin(docs=first(args.data / "validation_original.jsonl", args.n_test, vocab), store_user_data=True).to_disk(
        dev_path
    )
    config = Config().from_disk(args.config, interpolate=False)
    job = TrainingJob(args.out / "full", train_path.read_bytes(), 0, args.steps, "model-last")
    (model,) = run_training_jobs(config, [job], dev_path)
    nlp = spacy.load(model)
    result = run_lds(
        nlp,
        config,
        train_path,
        dev_path,
        args.out / "subsets",
        ner_name="crf_ner",
        methods=[m for m in args.methods.split(",") if m],
        n_subsets=args.subsets,
        max_steps=args.steps,
        n_test=args.n_test,
        seed_repeats=args.seed_repeats,
        jobs=args.jobs,
        n_inits=args.inits,
    )
    settings = result["settings"]
    print(
        f"{settings['n_test_predictions']} test predictions, {settings['n_subsets']} subsets of {settings['n_train']}"
    )
    print(f"seed noise share {settings['seed_variance_share']}, ceiling {settings['noise_ceiling']}")
    for name, entry in result["methods"].items():
        print(
            name,
            "LDS",
            entry["lds"],
            "| baseline-defined",
            entry.get("lds_where_baseline_defined"),
            "| minus baseline",
            entry.get("minus_baseline"),
        )


if __name__ == "__main__":
    main()
