"""The embedding index's block search and its pruned top k against the sparse reference
(`embedding_scores`) on random tables where ids collide on some or all rows."""

import numpy
import pytest

from spacy_segment_influence.exceptions import ConfigError
from spacy_segment_influence.influence import embedding_gradients as eg
from spacy_segment_influence.influence.embedding_index import EmbeddingIndex, top_k_of
from spacy_segment_influence.influence.encoder_influence import embedding_scores


def random_gradients(rng, n_segments: int, n_rows: int, n_ids: int = 8, width: int = 3) -> eg.EmbeddingGradients:
    """Gradients over a small table, so that ids collide on some or all of their rows;
    entry sizes spread over three decades, so that bounds differ between blocks."""
    counts = rng.integers(1, 6, n_segments)
    n = int(counts.sum())
    ids = rng.integers(0, n_ids, n).astype(numpy.uint64)
    rows = numpy.stack([(ids * 7 + j * (ids % 3 + 1)) % n_rows for j in range(4)], axis=1).astype(numpy.int64)
    vectors = rng.normal(size=(n, width)) * 10.0 ** rng.uniform(-2, 1, (n, 1))
    return eg.EmbeddingGradients(
        numpy.zeros(n, numpy.int16),
        ids,
        rows,
        vectors.astype(numpy.float32),
        numpy.concatenate([[0], numpy.cumsum(counts)]).astype(numpy.int64),
        n_rows,
    )


def with_copies(rng, grads: eg.EmbeddingGradients, n_copies: int) -> eg.EmbeddingGradients:
    """`grads` and copies of some of its segments appended: segments with tied scores."""
    copies = rng.choice(len(grads), n_copies)
    return eg.EmbeddingGradients.concat([grads] + [eg.slice_segments(grads, j, j + 1) for j in copies])


@pytest.mark.parametrize("seed", range(5))
def test_block_search_is_exact_under_collisions(seed):
    rng = numpy.random.default_rng(seed)
    stored, queries = random_gradients(rng, 200, 11), random_gradients(rng, 6, 11)
    index = EmbeddingIndex(stored)
    index.LARGE_BLOCK = int(rng.integers(1, 40))  # both the product and the gather path
    numpy.testing.assert_allclose(index.scores(queries), embedding_scores(queries, stored), rtol=1e-5, atol=1e-6)
    restored = EmbeddingIndex.from_bytes(index.to_bytes())  # the vectors back in their segments' order
    numpy.testing.assert_array_equal(restored.scores(queries), EmbeddingIndex(stored).scores(queries))


def assert_same_top(found, expected, row: numpy.ndarray) -> None:
    """`found` is the reference's top k up to float ties: the same number of hits, each at
    the reference's score for its rank, reported at its own reference score."""
    for got, want in ((found.supporters, expected.supporters), (found.opposers, expected.opposers)):
        assert len(got) == len(want)
        if not want:
            continue
        assert len({j for j, _ in got}) == len(got)
        scale = 1e-5 * max(1.0, numpy.abs(row).max())
        numpy.testing.assert_allclose([row[j] for j, _ in got], [s for _, s in want], rtol=1e-5, atol=scale)
        numpy.testing.assert_allclose([s for _, s in got], [row[j] for j, _ in got], rtol=1e-5, atol=scale)
        gaps = numpy.abs(numpy.diff([s for _, s in want], prepend=numpy.inf, append=numpy.inf))
        for rank, (j, _) in enumerate(got):
            if min(gaps[rank], gaps[rank + 1]) > scale:  # no tie: the very same segment
                assert j == want[rank][0]


@pytest.mark.parametrize("seed", range(12))
def test_pruned_top_k_is_the_exhaustive_one(seed):
    rng = numpy.random.default_rng(seed)
    n_rows = int(rng.integers(11, 400))
    n_ids = int(rng.integers(8, 300))
    stored = with_copies(rng, random_gradients(rng, int(rng.integers(1, 300)), n_rows, n_ids), int(rng.integers(0, 30)))
    queries = random_gradients(rng, 5, n_rows, n_ids)
    index = EmbeddingIndex(stored)
    index.LARGE_BLOCK = int(rng.integers(1, 40))
    index.STAGES = int(rng.integers(1, 12))
    index.CANDIDATES = int(rng.integers(1, 80))
    index.PRUNE_FROM = int(rng.choice([0, 100]))  # bounds from the first entry, or only on larger reads
    reference = embedding_scores(queries, stored)
    for k in (1, 3, len(stored), len(stored) + 5):
        for found, row in zip(index.top_k(queries, k), reference):
            assert_same_top(found, top_k_of(row, k), row)


def test_top_k_skips_what_cannot_matter(monkeypatch):
    """A common row with small vectors (one large block) and rare rows with large ones:
    the top k is certified from the rare rows without reading the common block."""
    rng = numpy.random.default_rng(0)
    n = 400
    ids = numpy.stack([numpy.zeros(n), 1 + numpy.arange(n)], axis=1).reshape(-1).astype(numpy.uint64)
    rows = numpy.stack([ids * 4 + j for j in range(4)], axis=1).astype(numpy.int64)
    vectors = rng.normal(size=(2 * n, 3)).astype(numpy.float32)
    vectors[::2] *= 1e-3  # the common id's
    stored = eg.EmbeddingGradients(
        numpy.zeros(2 * n, numpy.int16), ids, rows, vectors, numpy.arange(0, 2 * n + 1, 2), 4 * (n + 1)
    )
    touched = numpy.arange(21)  # the common id and the rare ids of the first 10 segments
    query = eg.EmbeddingGradients(
        stored.table[touched],
        ids[touched],
        rows[touched],
        rng.normal(size=(21, 3)).astype(numpy.float32),
        numpy.array([0, 21]),
        stored.n_rows,
    )
    index = EmbeddingIndex(stored)
    index.PRUNE_FROM = 0
    read = []
    scored = index._block_scores
    monkeypatch.setattr(index, "_block_scores", lambda blocks, summed: read.append(blocks) or scored(blocks, summed))
    row = embedding_scores(query, stored)[0]
    assert_same_top(index.top_k(query, 2)[0], top_k_of(row, 2), row)
    common = index._row_blocks[index._row_start[0]]
    assert read and not any(common in blocks for blocks in read)


def test_top_k_refuses_k_below_one():
    stored = random_gradients(numpy.random.default_rng(0), 10, 11)
    with pytest.raises(ConfigError):
        EmbeddingIndex(stored).top_k(stored, 0)
