"""Convert a CoNLL-2003 column file into the project's BIO JSONL.

    python scripts/conll_to_jsonl.py train.txt train_original.jsonl --split train
    python scripts/conll_to_jsonl.py conll2003.zip train_original.jsonl --member train.txt --split train

Reads whitespace-separated columns (token first, NER tag last), documents separated by
`-DOCSTART-` lines and sentences by blank lines. Tags in IOB1 (an entity starts with I- unless it
follows one of the same type) are rewritten as BIO. Each sentence becomes
`{"id": "conll_<split>_<doc>_<sent>", "tokens": [...], "ner_tags": [...]}`. Standard library only.
"""

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple

Sentence = Tuple[List[str], List[str]]


def iob_to_bio(tags: List[str]) -> List[str]:
    """Make every entity start with B-; BIO input comes back unchanged."""
    out = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def read_conll(lines: Iterable[str]) -> Iterator[Tuple[int, int, Sentence]]:
    """Yield (doc index, sentence index within the doc, (tokens, tags))."""
    doc, sent = -1, 0
    tokens: List[str] = []
    tags: List[str] = []

    def flush():
        nonlocal tokens, tags, sent
        if tokens:
            item = (max(doc, 0), sent, (tokens, iob_to_bio(tags)))
            tokens, tags = [], []
            sent += 1
            return item
        return None

    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            item = flush()
            if item:
                yield item
            continue
        if fields[0] == "-DOCSTART-":
            item = flush()
            if item:
                yield item
            doc, sent = doc + 1, 0
            continue
        if len(fields) < 2:
            raise ValueError(f"line {line_no}: expected a token and a tag, got {line!r}")
        tokens.append(fields[0])
        tags.append(fields[-1])
    item = flush()
    if item:
        yield item


def open_lines(path: Path, member: str = "") -> List[str]:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if Path(n).name == member]
            if not member or not names:
                raise SystemExit(f"{path}: name the file to read with --member (one of {archive.namelist()})")
            with archive.open(names[0]) as raw:
                return io.TextIOWrapper(raw, encoding="utf8").read().splitlines()
    return path.read_text(encoding="utf8").splitlines()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="CoNLL column file, or a .zip holding one")
    parser.add_argument("output", type=Path, help="JSONL file to write")
    parser.add_argument("--split", required=True, help="split name used in the ids (train, validation, test)")
    parser.add_argument("--member", default="", help="file inside the .zip (train.txt, valid.txt, test.txt)")
    args = parser.parse_args(argv)
    lines = open_lines(args.input, args.member)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with args.output.open("w", encoding="utf8") as out:
        for doc, sent, (tokens, tags) in read_conll(lines):
            record = {"id": f"conll_{args.split}_{doc}_{sent}", "tokens": tokens, "ner_tags": tags}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    print(f"Wrote {n} sentences to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
