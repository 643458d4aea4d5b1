"""How long `spacy.load` takes for a pipeline with and without its segment index.

    python bench/load_time.py MODEL_DIR INDEXED_DIR [--repeats 5] [--text "..."]

INDEXED_DIR is MODEL_DIR plus a `segment_influence` component (`segment-influence index`).
Loads alternate between the two (after one warm-up load of each, so imports and the page
cache do not favour either), and the medians and their ratio are printed, in wall and
process CPU seconds. With --text, also the first call of the loaded indexed pipeline on it
(the first query reads the memory-mapped index), and two `explain` calls on its first
two tokens.
"""

import argparse
import statistics
import time
from pathlib import Path

import spacy


def timed_load(path: Path):
    wall, cpu = time.perf_counter(), time.process_time()
    nlp = spacy.load(path)
    return nlp, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("indexed", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--text", default="")
    args = parser.parse_args()
    sizes = {
        path: sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6 for path in (args.model, args.indexed)
    }
    times = {args.model: [], args.indexed: []}
    for path in times:
        timed_load(path)
    for _ in range(args.repeats):
        for path in times:
            times[path].append(timed_load(path)[1:])
    for path, runs in times.items():
        wall, cpu = (statistics.median(column) for column in zip(*runs))
        print(f"{path}  {sizes[path]:.1f} MB on disk  load: {wall:.2f} s wall, {cpu:.2f} s CPU (median of {len(runs)})")
    (plain_wall, plain_cpu), (indexed_wall, indexed_cpu) = (
        [statistics.median(column) for column in zip(*runs)] for runs in times.values()
    )
    print(f"ratio indexed / plain: {indexed_wall / plain_wall:.2f} wall, {indexed_cpu / plain_cpu:.2f} CPU")
    if args.text:
        nlp, _, _ = timed_load(args.indexed)
        wall = time.perf_counter()
        doc = nlp(args.text)
        print(f"first call after load: {time.perf_counter() - wall:.2f} s wall ({len(doc.ents)} entities explained)")
        influence = nlp.get_pipe("segment_influence")
        label = nlp.get_pipe(influence.cfg["ner"]).labels[0]
        for _ in range(2):
            wall = time.perf_counter()
            influence.explain(doc[0:2], label=label)
            print(f"explain({doc[0:2].text!r}, label={label!r}): {time.perf_counter() - wall:.2f} s wall")


if __name__ == "__main__":
    main()
