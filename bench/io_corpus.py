"""find-errors on an IO-tagged corpus (issue 12, item 5): the demo corpus with its tags
written without B-/I- prefixes (as EBM-NLP's PICO spans are), converted with the scheme
detected, a tok2vec crf_ner trained on it, the default cross-fitted `find-errors`, and
`evaluate-errors` against the IO copy of the corrected labels. The demo's 41 injected
errors stay errors in IO except where a wrong boundary only split or merged two touching
entities of one label, which IO cannot express (counted and printed).

    python bench/io_corpus.py [--workdir bench/output/io_corpus] [--steps 300]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"


def io_tags(tags: List[str]) -> List[str]:
    return [tag if tag == "O" else tag[2:] for tag in tags]


def write_io(src: Path, out: Path) -> List[dict]:
    records = [json.loads(line) for line in src.read_text(encoding="utf8").splitlines() if line.strip()]
    for record in records:
        record["ner_tags"] = io_tags(record["ner_tags"])
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
    return records


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spacy_segment_influence", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "io_corpus")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    original = write_io(DEMO / "train.jsonl", work / "train.jsonl")
    corrected = write_io(DEMO / "train_corrected.jsonl", work / "train_corrected.jsonl")
    write_io(DEMO / "dev.jsonl", work / "dev.jsonl")
    changed_io = sum(a["ner_tags"] != b["ner_tags"] for a, b in zip(original, corrected))
    print(f"{len(original)} sentences, {changed_io} of them with a corrected IO tag", flush=True)
    for name in ("train", "dev"):
        cli("convert", str(work / f"{name}.jsonl"), str(work / f"{name}.spacy"))
    model = work / "model"
    if not (model / "model-best" / "meta.json").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "spacy",
                "train",
                str(ROOT / "configs" / "crf_ner_tok2vec.cfg"),
                "--output",
                str(model),
            ]
            + ["--paths.train", str(work / "train.spacy"), "--paths.dev", str(work / "dev.spacy")]
            + ["--training.max_steps", str(args.steps), "--training.eval_frequency", "100"],
            check=True,
        )
    ranking = work / "ranking.jsonl"
    cli(
        "find-errors",
        str(model / "model-best"),
        str(work / "train.spacy"),
        "--dev",
        str(work / "dev.spacy"),
        "--out",
        str(ranking),
    )
    cli(
        "evaluate-errors",
        str(ranking),
        str(work / "train.jsonl"),
        str(work / "train_corrected.jsonl"),
        "--out",
        str(work / "errors.json"),
    )


if __name__ == "__main__":
    main()
