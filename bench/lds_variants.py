"""The attribution variants behind the `embeddings` default of `lds` (issue 23), scored on
the subset models `bench/lds.py` trained (run it first, same --out):

    python bench/lds_variants.py --subsets 16 --inits 16

Where the gradients are taken (the trained weights or the initial ones), how embedding
rows are weighted (none, 1/hits), which training segments carry them (gold entities
or whole sentences), and how many initialisations the scores sum over (1, 2, 4, ...
--inits); the string-count baseline beside them.
"""

import argparse
from pathlib import Path

import numpy
import spacy
from thinc.api import Config

from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.fidelity import lds
from spacy_segment_influence.influence.encoder_influence import (
    embedding_gradients_of,
    embedding_scores,
    initial_pipelines,
)
from spacy_segment_influence.influence.segments import Segment

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "output" / "lds")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "crf_ner_tok2vec.cfg")
    parser.add_argument("--subsets", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--inits", type=int, default=16, help="the largest ensemble of initialisations")
    args = parser.parse_args()
    nlp = spacy.load(args.out / "full" / "model-last")
    train = read_docbin(args.out / "train.spacy", nlp.vocab)
    dev = read_docbin(args.out / "dev.spacy", nlp.vocab)[: args.n_test]
    masks = lds.subset_masks(len(train), args.subsets, 0.5, seed=0)
    test_docs, test_segments = lds.predicted_test_segments(nlp, "crf_ner", dev)
    paths = [args.out / "subsets" / f"subset-{m}" / "model-last" for m in range(args.subsets)]
    actual = lds.subset_losses(paths, "crf_ner", test_docs, test_segments)
    count = lds.string_count_scores(train, test_docs, test_segments)
    defined = ~numpy.isnan(lds.lds_per_prediction(actual, masks, count))

    def show(name: str, scores: numpy.ndarray) -> None:
        values = lds.lds_per_prediction(actual, masks, scores)
        print(f"{name:52s} {lds.summarize(values)}   where string-count defined {lds.summarize(values[defined])}")

    print(f"{len(test_segments)} test predictions, {args.subsets} subsets of {len(train)} sentences")
    show("string-count", count)
    entities = [Segment(i, e.start, e.end) for i, doc in enumerate(train) for e in doc.ents]
    sentences = [Segment(i, 0, len(doc)) for i, doc in enumerate(train) if len(doc)]
    config = Config().from_disk(args.config, interpolate=False)
    starts = initial_pipelines(config, args.out / "train.spacy", args.inits)
    start = starts[0]  # the pipeline's own initialisation
    for where, model in (("trained", nlp), ("initial", start)):
        queries = embedding_gradients_of(model, "crf_ner", test_docs, test_segments)
        for unit, segments in (("entities", entities), ("sentences", sentences)):
            stored = embedding_gradients_of(model, "crf_ner", train, segments)
            for weighting in ("none", "hits"):
                scores = embedding_scores(queries, stored, weighting)
                per_sentence = lds.per_sentence(scores, [s.doc_index for s in segments], len(train))
                show(f"embeddings, {where} weights, {unit}, weighting {weighting}", per_sentence)
    summed = numpy.zeros((len(test_segments), len(entities)))
    for n, initial in enumerate(starts, 1):
        queries = embedding_gradients_of(initial, "crf_ner", test_docs, test_segments)
        summed += embedding_scores(queries, embedding_gradients_of(initial, "crf_ner", train, entities))
        if n & (n - 1) == 0 or n == len(starts):  # 1, 2, 4, 8, ... and the last
            per_sentence = lds.per_sentence(summed, [s.doc_index for s in entities], len(train))
            show(f"embeddings, initial weights, entities, 1/hits, {n} inits", per_sentence)


if __name__ == "__main__":
    main()
