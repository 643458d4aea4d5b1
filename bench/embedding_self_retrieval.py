"""Self-retrieval of `segment_influence` with layers = "embeddings" (issue 23): index the
training corpus of a tok2vec crf_ner pipeline, query every gold entity the pipeline
predicts correctly in the first --n training sentences, and report the share whose top
supporter is its own training segment (strict: the arg-max; tie-aware: its score equals
the top score), with the scores' median latency.

    python bench/embedding_self_retrieval.py --model bench/output/lds/full/model-last \
        --train bench/output/lds/train.spacy --n 400 --inits 4
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy
import spacy
from spacy.tokens import Doc

from spacy_segment_influence.corpus import read_docbin

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "output" / "lds" / "full" / "model-last")
    parser.add_argument("--train", type=Path, default=ROOT / "bench" / "output" / "lds" / "train.spacy")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--inits", type=int, default=4)
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    train = read_docbin(args.train, nlp.vocab)
    influence = nlp.add_pipe("segment_influence", config={"layers": "embeddings", "inits": args.inits})
    clock = time.perf_counter()
    influence.initialize(lambda: [], nlp=nlp, train_path=args.train, show_progress=False)
    print(f"{len(train)} sentences indexed with {args.inits} initialisations in {time.perf_counter() - clock:.1f} s")
    own = {(m["doc_index"], m["start"], m["end"]): j for j, m in enumerate(influence.index.metadata)}
    strict = tie_aware = 0
    times = []
    for i, reference in enumerate(train[: args.n]):
        doc = Doc(nlp.vocab, words=[t.text for t in reference], spaces=[bool(t.whitespace_) for t in reference])
        for name, component in nlp.pipeline:
            if name != "segment_influence":
                doc = component(doc)
        gold = {(e.start, e.end, e.label_) for e in reference.ents}
        for entity in doc.ents:
            if (entity.start, entity.end, entity.label_) not in gold:
                continue
            clock = time.perf_counter()
            scores = influence.scores([entity], [entity.label_])[0]
            times.append(time.perf_counter() - clock)
            mine = scores[own[(i, entity.start, entity.end)]]
            strict += int(numpy.argmax(scores) == own[(i, entity.start, entity.end)])
            tie_aware += int(mine >= scores.max() * (1 - 1e-6))
    n = len(times)
    print(
        f"self-retrieval strict {strict / n:.3f}, tie-aware {tie_aware / n:.3f} ({n} entities); "
        f"scores() median {1000 * statistics.median(times):.1f} ms"
    )


if __name__ == "__main__":
    main()
