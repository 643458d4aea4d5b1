"""Readers loading a pipeline while `index` replaces it (issue 24): how many answers are
mixed (match neither the old pipeline nor the new one).

    python bench/snapshot_race.py [--loads 1000] [--readers 4] [--interval 0.3] [--plain]

Two tok2vec crf_ner pipelines of the test corpus (trained 60 and 30 steps) are indexed by
`segment-influence index` (k = 3 and k = 2), so every file differs between them. A writer
replaces OUT with one and then the other through the same swap `index` uses
(`atomic.replaced_dir`), every --interval seconds, until the readers are done.
--readers processes load OUT --loads times in all (`load_snapshot`, or plain `spacy.load`
with --plain) and compare each load's answers (k and the influences of the test
sentences) with the two pipelines'. Prints one line of counts: consistent, mixed,
refused (an error of the package's hierarchy), crashed (anything else).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # this checkout's package and its test corpus

import spacy  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from spacy_segment_influence import SegmentInfluenceError  # noqa: E402
from spacy_segment_influence.cli import app  # noqa: E402
from spacy_segment_influence.pipeline.indexing import INDEX_OWNER  # noqa: E402
from spacy_segment_influence.storage.atomic import MARKER, replaced_dir  # noqa: E402
from spacy_segment_influence.storage.snapshot import load_snapshot  # noqa: E402
from tests.conftest import TRAIN_DATA, make_examples, tok2vec_nlp, train  # noqa: E402

TEXTS = [text for text, _ in TRAIN_DATA]


def answers(nlp) -> str:
    return json.dumps([nlp.get_pipe("segment_influence").cfg["k"], *(doc._.influences for doc in nlp.pipe(TEXTS))])


def build(root: Path) -> list:
    """Two indexed pipelines whose every file differs."""
    nlp = tok2vec_nlp()
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(root / "train.spacy")
    built = []
    for name, steps, k in (("a", 60, 3), ("b", 30, 2)):
        nlp = tok2vec_nlp()
        train(nlp, make_examples(nlp), steps=steps).to_disk(root / f"model_{name}")
        out = root / f"indexed_{name}"
        args = ["index", str(root / f"model_{name}"), str(root / "train.spacy"), str(out), "--k", str(k)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        built.append(out)
    return built


def replace_with(out: Path, source: Path) -> None:
    with replaced_dir(out, INDEX_OWNER) as building:
        for entry in source.iterdir():
            if entry.is_dir():
                shutil.copytree(entry, building / entry.name)
            elif entry.name != MARKER:
                shutil.copy(entry, building / entry.name)


def read(out: Path, expected: set, loads: int, plain: bool) -> Counter:
    counts: Counter = Counter()
    for _ in range(loads):
        try:
            nlp = spacy.load(out) if plain else load_snapshot(out)
            counts["consistent" if answers(nlp) in expected else "mixed"] += 1
        except SegmentInfluenceError as err:
            counts[f"refused: {type(err).__name__}"] += 1
        except Exception as err:  # a bug, or plain spacy.load reading a half-swapped pipeline
            counts[f"crashed: {type(err).__name__}"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=1000)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--plain", action="store_true", help="readers use spacy.load instead of load_snapshot")
    parser.add_argument("--reader", nargs=3, metavar=("OUT", "EXPECTED", "LOADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        out, expected, loads = args.reader
        counts = read(Path(out), set(json.loads(Path(expected).read_text())), int(loads), args.plain)
        print(json.dumps(counts))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = build(root)
        (root / "expected.json").write_text(json.dumps([answers(spacy.load(source)) for source in sources]))
        out = root / "out"
        replace_with(out, sources[0])
        share = [args.loads // args.readers + (i < args.loads % args.readers) for i in range(args.readers)]
        command = [sys.executable, __file__, *(["--plain"] if args.plain else []), "--reader", str(out)]
        readers = [
            subprocess.Popen([*command, str(root / "expected.json"), str(n)], stdout=subprocess.PIPE, text=True)
            for n in share
        ]
        replacements, start = 0, time.perf_counter()
        while any(reader.poll() is None for reader in readers):
            time.sleep(args.interval)
            replace_with(out, sources[(replacements + 1) % 2])
            replacements += 1
        counts: Counter = Counter()
        for reader in readers:
            counts.update(json.loads(reader.communicate()[0].strip().splitlines()[-1]))
        seconds = time.perf_counter() - start
    loads = sum(counts.values())
    cells = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    print(
        f"{'spacy.load' if args.plain else 'load_snapshot'}: {loads} loads by {args.readers} readers against "
        f"{replacements} replacements in {seconds:.0f} s: {cells}; mixed {counts['mixed']}"
    )


if __name__ == "__main__":
    main()
