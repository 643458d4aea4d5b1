"""The index build as map and reduce: shards of a corpus merge into what one pass over it
computes, and fit into the same index."""

import numpy
import pytest

from spacy_segment_influence.influence.index_build import IndexShard, build_shard, fit_index

from ..conftest import make_examples, tok2vec_nlp, train

SETTINGS = {"ner": "crf_ner", "granularity": "entities", "batch_size": 2, "damping": 0.01, "normalize": True}


@pytest.fixture(scope="module")
def nlp():
    nlp = tok2vec_nlp()
    return train(nlp, make_examples(nlp), steps=30)


def statistics_arrays(statistics):
    return {k: v for k, v in vars(statistics).items() if v is not None}


@pytest.mark.parametrize("curvature", ["identity", "kfac", "exact"])
@pytest.mark.parametrize("cuts", [(2,), (1, 3), (4,)])
def test_merged_shards_equal_one_pass(nlp, curvature, cuts):
    settings = {**SETTINGS, "curvature": curvature, "dtype": "float32"}
    docs = [eg.reference for eg in make_examples(nlp)]
    whole = build_shard(nlp, settings, docs)
    bounds = [0, *cuts, len(docs)]
    merged = IndexShard.merge([build_shard(nlp, settings, docs[a:b], a) for a, b in zip(bounds, bounds[1:])])

    assert merged.metadata == whole.metadata
    for name in ("h", "r", "offsets", "dense"):
        numpy.testing.assert_allclose(getattr(merged.grads, name), getattr(whole.grads, name), rtol=1e-6, atol=1e-9)
    if curvature == "exact":
        numpy.testing.assert_array_equal(merged.windows.tags, whole.windows.tags)
        numpy.testing.assert_array_equal(merged.windows.bounds, whole.windows.bounds)
    one, many = statistics_arrays(whole.statistics), statistics_arrays(merged.statistics)
    assert one.keys() == many.keys()
    for key in one:
        numpy.testing.assert_allclose(many[key], one[key], rtol=1e-9, atol=1e-12)

    index_one, index_many = (fit_index(nlp, settings, s, "si") for s in (whole, merged))
    numpy.testing.assert_allclose(index_many.scores(whole.grads), index_one.scores(whole.grads), atol=1e-5)
