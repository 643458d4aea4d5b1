"""Explaining a pipeline with spaCy's built-in ner through a CRF surrogate (issue 13).

    python bench/surrogate.py --n-train 2000 --max-steps 1000 --validate-train 500

Trains tok2vec + built-in ner (configs/ner_builtin_tok2vec.cfg) on the first N CoNLL
train sentences, then `nlp.add_pipe("segment_influence")` + initialize with no other step.
Reports the surrogate's agreement on CoNLL validation (its F1 and the pipeline's against
gold, the share of the pipeline's correct entities it predicts), the cost of fitting and
indexing against a plain nlp.pipe over the same corpus, and `validate` (exact, refined)
on the surrogate.
"""

import argparse
import json
import time
from pathlib import Path

import ner_quality
import spacy
from entity_calibration import corpus, train
from spacy.tokens import Doc, DocBin

from spacy_segment_influence.fidelity.validate import validate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--validate-train", type=int, default=200, help="sentences validate refits on (0: skip)")
    parser.add_argument("--validate-dev", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "surrogate")
    parser.add_argument("--data", type=Path, default=ner_quality.DATA, help="folder of the CoNLL-2003 JSONL files")
    args = parser.parse_args()
    ner_quality.DATA = args.data
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_path = corpus("train_original", args.workdir, args.n_train)
    dev_path = corpus("validation_original", args.workdir, 0)
    nlp = spacy.load(train("ner_builtin_tok2vec.cfg", args.workdir / "ner", train_path, dev_path, args.max_steps))
    train_docs = list(DocBin().from_disk(train_path).get_docs(nlp.vocab))
    dev_docs = list(DocBin().from_disk(dev_path).get_docs(nlp.vocab))
    results: dict = {"n_train": len(train_docs), "n_dev": len(dev_docs), "max_steps": args.max_steps}

    texts = [Doc(nlp.vocab, words=[t.text for t in doc]) for doc in train_docs]
    clock = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=64):
        pass
    results["pipe_s"] = time.perf_counter() - clock
    component = nlp.add_pipe("segment_influence")
    clock = time.perf_counter()
    component.initialize(lambda: [], nlp=nlp, train_path=train_path, dev_path=dev_path, show_progress=False)
    results["initialize_s"] = time.perf_counter() - clock  # fit + index + agreement on the dev corpus
    clock = time.perf_counter()
    component._build_index(train_docs, show_progress=False, ray_address=None, ray_workers=None)  # as nlp.pipe
    results["index_s"] = time.perf_counter() - clock
    results["index_vs_pipe"] = results["index_s"] / results["pipe_s"]
    results["agreement"] = component.cfg["surrogate_agreement"]
    print(json.dumps(results, indent=2), flush=True)

    if args.validate_train:
        found = validate(
            nlp,
            train_docs,
            dev_docs,
            ner_name="ner",
            ner=component.surrogate,
            n_train=args.validate_train,
            n_dev=args.validate_dev,
            show_progress=False,
        )
        results["validate"] = {
            method: found["methods"][method] for method in ("exact", "refined", "kfac") if method in found["methods"]
        }
        results["validate_settings"] = found["settings"]
        print(json.dumps(results["validate"], indent=2), flush=True)
    (args.workdir / "surrogate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
