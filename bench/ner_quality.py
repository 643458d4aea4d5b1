"""crf_ner vs spaCy's built-in ner on the same encoder, steps and batching (CoNLL-2003).

    python bench/ner_quality.py --encoder tok2vec --n-train 2000 --max-steps 2000

Trains both pipelines with `spacy train`, then reports dev/test ents_f and nlp.pipe
words/s measured side by side (interleaved repeats) in one run.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import spacy
from spacy.tokens import DocBin

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "conll2003"
CONFIGS = {
    "tok2vec": ("crf_ner_tok2vec.cfg", "ner_builtin_tok2vec.cfg"),
    "trf": ("crf_ner_trf.cfg", "ner_builtin_trf.cfg"),
}


def convert(name: str, out_dir: Path, limit: int) -> Path:
    src = out_dir / f"{name}.jsonl"
    with (DATA / f"{name}.jsonl").open() as f_in, src.open("w") as f_out:
        for i, line in enumerate(f_in):
            if limit and i >= limit:
                break
            f_out.write(line)
    dst = out_dir / f"{name}.spacy"
    run([sys.executable, "-m", "spacy_segment_influence", "convert", str(src), str(dst)])
    return dst


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def words_per_second(nlp, texts, n_words: int) -> float:
    start = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=256):
        pass
    return n_words / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=sorted(CONFIGS), default="tok2vec")
    parser.add_argument("--n-train", type=int, default=2000, help="0 = full train set")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--eval-frequency", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "output" / "ner_quality")
    parser.add_argument("--gpu-id", type=int, default=-1)
    args = parser.parse_args()
    work = args.workdir / args.encoder
    work.mkdir(parents=True, exist_ok=True)
    train = convert("train_original", work, args.n_train)
    dev = convert("validation_original", work, 0)
    test = convert("test_original", work, 0)
    results = {}
    for config in CONFIGS[args.encoder]:
        out = work / Path(config).stem
        start = time.perf_counter()
        run(
            [
                sys.executable,
                "-m",
                "spacy",
                "train",
                str(ROOT / "configs" / config),
                "--paths.train",
                str(train),
                "--paths.dev",
                str(dev),
                "-o",
                str(out),
                "--training.max_steps",
                str(args.max_steps),
                "--training.eval_frequency",
                str(args.eval_frequency),
                "--gpu-id",
                str(args.gpu_id),
            ]
        )
        train_seconds = time.perf_counter() - start
        scores = {}
        for split, path in (("dev", dev), ("test", test)):
            metrics = out / f"{split}_metrics.json"
            run(
                [
                    sys.executable,
                    "-m",
                    "spacy",
                    "evaluate",
                    str(out / "model-best"),
                    str(path),
                    "--output",
                    str(metrics),
                    "--gpu-id",
                    str(args.gpu_id),
                ]
            )
            scores[split] = json.loads(metrics.read_text())["ents_f"]
        results[config] = {"train_seconds": train_seconds, **scores, "model": out / "model-best"}
    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    docs = list(DocBin().from_disk(test).get_docs(spacy.blank("en").vocab))
    texts = [doc.text for doc in docs]
    n_words = sum(len(doc) for doc in docs)
    pipelines = {config: spacy.load(results[config]["model"]) for config in results}
    speeds = {config: [] for config in results}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        for config, nlp in pipelines.items():
            speeds[config].append(words_per_second(nlp, texts, n_words))
    crf_cfg, ner_cfg = CONFIGS[args.encoder]
    print(f"\nencoder={args.encoder} n_train={args.n_train or 'full'} max_steps={args.max_steps}")
    print("| pipeline | dev ents_f | test ents_f | nlp.pipe words/s (median) | train s |")
    print("|---|---|---|---|---|")
    for config in results:
        r = results[config]
        print(
            f"| {Path(config).stem} | {r['dev']:.4f} | {r['test']:.4f} | "
            f"{statistics.median(speeds[config]):,.0f} | {r['train_seconds']:.0f} |"
        )
    ratio = statistics.median(speeds[crf_cfg]) / statistics.median(speeds[ner_cfg])
    print(f"crf_ner / built-in ner speed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
