"""SegmentIndex against brute force on explicit P x P curvature matrices."""

import numpy as np
import pytest
import srsly
import torch

from spacy_segment_influence import IndexFormatError
from spacy_segment_influence.influence.curvature import ExactCurvature, IdentityCurvature, KFACCurvature
from spacy_segment_influence.influence.gradients import FactoredGradients
from spacy_segment_influence.influence.index import SegmentIndex
from spacy_segment_influence.storage import atomic, index_storage
from spacy_segment_influence.storage.index_storage import SparseRows

from ..conftest import DAMPING, C, D, E, P, make_grads  # noqa: E402

CURVATURES = ["identity", "kfac", "exact"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train, marginals = make_grads(rng, 60)
    queries, _ = make_grads(rng, 12)
    root = rng.normal(size=(P, P))
    hessian = root @ root.T / P
    return train, marginals, queries, hessian


def explicit_kfac(train, marginals):
    """The K-FAC matrix written out from its definition, independently of
    KFACCurvature: per-token expectations, numpy.kron, block diagonal."""
    a = np.mean([np.outer(h, h) for h in train.h], axis=0)
    # E[r r^T] with the label drawn from the marginals, enumerated over labels.
    b = np.mean([sum(q[y] * np.outer(q - np.eye(C)[y], q - np.eye(C)[y]) for y in range(C)) for q in marginals], axis=0)
    dense_cov = np.mean([np.outer(x, x) for x in train.dense], axis=0)
    root = np.sqrt(DAMPING)
    matrix = np.zeros((P, P))
    matrix[: C * E, : C * E] = np.kron(b + root * np.eye(C), a + root * np.eye(E))
    matrix[C * E :, C * E :] = dense_cov + DAMPING * np.eye(D)
    return matrix


@pytest.fixture(scope="module")
def curvatures(data):
    """Each curvature with the explicit matrix H it claims to apply."""
    train, marginals, _, hessian = data
    return {
        "identity": (IdentityCurvature(), np.eye(P)),
        "kfac": (KFACCurvature.from_tokens(train.h, marginals, train.dense, DAMPING), explicit_kfac(train, marginals)),
        "exact": (ExactCurvature(hessian, DAMPING, C, E), hessian + DAMPING * np.eye(P)),
    }


def brute_force(train, queries, matrix, normalize):
    g_s, g_q = train.to_dense(), queries.to_dense()
    solved_s = np.linalg.solve(matrix, g_s.T)
    scores = g_q @ solved_s
    if normalize:
        q_norms = np.sqrt(np.einsum("qp,pq->q", g_q, np.linalg.solve(matrix, g_q.T)))
        s_norms = np.sqrt(np.einsum("sp,ps->s", g_s, solved_s))
        scores = scores / q_norms[:, None] / s_norms[None, :]
    return scores


@pytest.fixture(scope="module")
def build(data, curvatures):
    def build(name, normalize=True, dtype="float64"):
        train = data[0]
        metadata = [{"segment": i} for i in range(len(train))]
        return SegmentIndex.build(train, metadata, curvatures[name][0], normalize=normalize, dtype=dtype)

    return build


def test_to_dense_is_row_major_tags_by_features(data):
    train = data[0]
    expected = np.stack(
        [
            np.concatenate([sum(np.outer(train.r[t], train.h[t]) for t in range(a, b)).ravel(), x])
            for a, b, x in zip(train.offsets[:-1], train.offsets[1:], train.dense)
        ]
    )
    np.testing.assert_allclose(train.to_dense(), expected, rtol=1e-12)


def test_squared_norms_from_factors(data):
    train = data[0]
    dense = train.to_dense()
    np.testing.assert_allclose(train.squared_norms(), (dense**2).sum(1), rtol=1e-12)
    emission = (dense[:, : C * E] ** 2).sum(1)
    np.testing.assert_allclose(train.emission_squared_norms(pairs_per_chunk=7), emission, rtol=1e-12)
    single = FactoredGradients(train.h[:9], train.r[:9], np.arange(10), train.dense[:9])  # one row each
    np.testing.assert_allclose(single.emission_squared_norms(), (single.to_dense()[:, : C * E] ** 2).sum(1), rtol=1e-12)


def test_sparse_rows_round_trip_and_dot(data):
    dense = data[0].dense
    rows = SparseRows.from_dense(dense)
    assert rows.values.size == np.count_nonzero(dense) and len(rows) == len(dense)
    np.testing.assert_array_equal(rows.to_dense(), dense)
    vector = np.random.default_rng(1).normal(size=D)
    np.testing.assert_allclose(rows.dot(vector), dense @ vector, rtol=1e-12, atol=1e-12)


def test_index_stores_only_nonzero_dense_entries(data, build):
    index = build("kfac", dtype="float32")
    assert index.stored.dense.values.size == np.count_nonzero(data[0].dense)
    assert index.nbytes < data[0].h.nbytes // 2 + data[0].r.nbytes // 2 + data[0].dense.nbytes // 2


def test_concat_of_selections_is_identity(data):
    train = data[0]
    joined = FactoredGradients.concat([train.select(0, 17), train.select(17, 18), train.select(18, len(train))])
    np.testing.assert_array_equal(joined.to_dense(), train.to_dense())
    np.testing.assert_array_equal(joined.offsets, train.offsets)


def test_take_reorders_segments(data):
    train = data[0]
    order = np.random.default_rng(2).permutation(len(train))
    np.testing.assert_array_equal(train.take(order).to_dense(), train.to_dense()[order])


def test_invalid_offsets_rejected(data):
    train = data[0]
    with pytest.raises(ValueError):
        FactoredGradients(train.h, train.r, np.concatenate([[0, 0], train.offsets[1:]]), np.zeros((61, D)))


@pytest.mark.parametrize("name", CURVATURES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-6), ("float32", 1e-4)])
def test_scores_match_brute_force(data, name, normalize, dtype, rtol, build, curvatures):
    _, _, queries, _ = data
    matrix = curvatures[name][1]
    expected = brute_force(data[0], queries, matrix, normalize)
    got = build(name, normalize, dtype).scores(queries)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("name", CURVATURES)
@pytest.mark.parametrize("normalize", [True, False])
def test_top_k_matches_argsort(data, name, normalize, build, curvatures):
    _, _, queries, _ = data
    matrix = curvatures[name][1]
    expected = brute_force(data[0], queries, matrix, normalize)
    k = 6
    results = build(name, normalize).top_k(queries, k=k)
    assert len(results) == len(queries)
    for row, result in zip(expected, results):
        best = [i for i in np.argsort(-row)[:k] if row[i] > 0]
        worst = [i for i in np.argsort(row)[:k] if row[i] < 0]
        assert [i for i, _ in result.supporters] == best
        assert [i for i, _ in result.opposers] == worst
        np.testing.assert_allclose([s for _, s in result.supporters], row[best], rtol=1e-9)
        np.testing.assert_allclose([s for _, s in result.opposers], row[worst], rtol=1e-9)


@pytest.mark.parametrize("name", CURVATURES)
@pytest.mark.parametrize("normalize", [True, False])
def test_total_influence_is_unnormalised_column_sum(data, name, normalize, build, curvatures):
    """Influence on a summed loss ignores cosine normalisation: it is linear in the queries."""
    _, _, queries, _ = data
    expected = brute_force(data[0], queries, curvatures[name][1], normalize=False).sum(axis=0)
    np.testing.assert_allclose(build(name, normalize).total_influence(queries), expected, rtol=1e-8)


def test_supporters_positive_opposers_negative(data, build):
    results = build("identity").top_k(data[2], k=len(data[0]))
    for result in results:
        assert all(s > 0 for _, s in result.supporters) and all(s < 0 for _, s in result.opposers)
        assert len(result.supporters) + len(result.opposers) == len(data[0])


@pytest.mark.parametrize("name", CURVATURES)
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-12), ("float32", 1e-5), ("float16", 5e-3)])
def test_self_retrieval_scores_one(data, name, dtype, atol, build):
    train = data[0]
    for i, result in enumerate(build(name, normalize=True, dtype=dtype).top_k(train, k=1)):
        assert result.supporters[0][0] == i
        assert result.supporters[0][1] == pytest.approx(1.0, abs=atol)


@pytest.mark.parametrize("name", CURVATURES)
def test_float16_top_k_agrees_with_float32(data, name, build):
    queries, k = data[2], 5
    exact32 = build(name, dtype="float32").scores(queries)
    index16 = build(name, dtype="float16")
    np.testing.assert_allclose(index16.scores(queries), exact32, atol=1e-2)
    for row, result in zip(exact32, index16.top_k(queries, k=k)):
        # Ranks may swap within float16 error, but no returned segment may be
        # far below the true k-th best score.
        kth_best = np.sort(row)[-k]
        assert all(row[i] >= kth_best - 1e-2 for i, _ in result.supporters)
        assert result.supporters[0][0] == int(np.argmax(row)) or row.max() - row[result.supporters[0][0]] < 1e-2


@pytest.mark.parametrize("name", CURVATURES)
@pytest.mark.parametrize("mmap", [True, False])
def test_disk_round_trip(data, name, mmap, tmp_path, build):
    index = build(name, dtype="float32")
    index.to_disk(tmp_path / "index")
    loaded = SegmentIndex.from_disk(tmp_path / "index", mmap=mmap)
    assert isinstance(loaded.stored.h, np.memmap) == mmap
    assert loaded.metadata == index.metadata and len(loaded) == len(index)
    assert loaded.nbytes == index.nbytes
    np.testing.assert_array_equal(loaded.scores(data[2]), index.scores(data[2]))


def test_exact_index_loads_without_factorising(data, tmp_path, build, monkeypatch):
    """Loading keeps the saved eigendecomposition (memory-mapped) instead of factorising
    the P x P hessian again, which took minutes for a MiniLM head."""
    index = build("exact", dtype="float32")
    index.to_disk(tmp_path / "index")
    assert not (tmp_path / "index" / "curvature.hessian.npy").exists()

    def no_factorising(*args, **kwargs):
        raise AssertionError("the hessian was factorised on load")

    monkeypatch.setattr(np.linalg, "eigh", no_factorising)
    monkeypatch.setattr(torch.linalg, "eigh", no_factorising)
    loaded = SegmentIndex.from_disk(tmp_path / "index")
    vectors = loaded.curvature._vectors
    assert isinstance(vectors, np.memmap) or isinstance(vectors.base, np.memmap)
    np.testing.assert_array_equal(loaded.scores(data[2]), index.scores(data[2]))
    for mine, theirs in zip(loaded.curvature.eigen(), index.curvature.eigen()):
        torch.testing.assert_close(mine, theirs)


def test_index_of_an_older_format_asks_for_a_rebuild(data, tmp_path, build):
    build("identity").to_disk(tmp_path / "index")
    settings = srsly.read_json(tmp_path / "index" / "settings.json")
    srsly.write_json(tmp_path / "index" / "settings.json", {**settings, "format": 1})
    (tmp_path / "index" / "checksums.json").unlink()  # format 1 had none
    with pytest.raises(IndexFormatError, match="Unsupported index format 1.*rebuild the index"):
        SegmentIndex.from_disk(tmp_path / "index")


@pytest.mark.parametrize("name", CURVATURES)
def test_bytes_round_trip(data, name, build):
    index = build(name, normalize=False, dtype="float16")
    loaded = SegmentIndex.from_bytes(index.to_bytes())
    assert loaded.metadata == index.metadata and not loaded.normalize and loaded.dtype == "float16"
    np.testing.assert_array_equal(loaded.scores(data[2]), index.scores(data[2]))


def test_failed_write_leaves_no_partial_index(data, tmp_path, monkeypatch, build):
    queries = data[2]
    old = build("identity", dtype="float32")
    old.to_disk(tmp_path / "index")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_storage.srsly, "write_json", fail)
    new = build("kfac", dtype="float32")
    with pytest.raises(OSError):
        new.to_disk(tmp_path / "fresh")
    with pytest.raises(OSError):
        new.to_disk(tmp_path / "index")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    np.testing.assert_array_equal(SegmentIndex.from_disk(tmp_path / "index").scores(queries), old.scores(queries))


def test_failed_swap_restores_old_index(data, tmp_path, monkeypatch, build):
    queries = data[2]
    old = build("identity", dtype="float32")
    old.to_disk(tmp_path / "index")
    real_replace = atomic.os.replace
    calls = []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new index moving into place
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the two-rename swap
    monkeypatch.setattr(atomic.os, "replace", replace_then_fail)
    with pytest.raises(OSError):
        build("kfac", dtype="float32").to_disk(tmp_path / "index")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    np.testing.assert_array_equal(SegmentIndex.from_disk(tmp_path / "index").scores(queries), old.scores(queries))


def test_overwrite_replaces_index(data, tmp_path, build):
    queries = data[2]
    build("identity", dtype="float32").to_disk(tmp_path / "index")
    new = build("kfac", dtype="float32")
    new.to_disk(tmp_path / "index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    np.testing.assert_array_equal(SegmentIndex.from_disk(tmp_path / "index").scores(queries), new.scores(queries))


@pytest.mark.parametrize("name", CURVATURES)
def test_batching_and_chunking_invariance(data, name, build):
    queries = data[2].select(0, 5)
    index = build(name)
    default = index.top_k(queries, k=4)
    for batch_size, chunk_tokens in [(1, 1), (5, 3), (100, 10**6)]:
        np.testing.assert_allclose(
            index.scores(queries, batch_size=batch_size, chunk_tokens=chunk_tokens), index.scores(queries), rtol=1e-12
        )
        tiny = index.top_k(queries, k=4, batch_size=batch_size, chunk_tokens=chunk_tokens)
        for a, b in zip(tiny, default):
            assert [i for i, _ in a.supporters] == [i for i, _ in b.supporters]
            assert [i for i, _ in a.opposers] == [i for i, _ in b.opposers]
            np.testing.assert_allclose([s for _, s in a.supporters], [s for _, s in b.supporters], rtol=1e-12)


def test_k_larger_than_index_and_zero(data, build):
    index = build("identity")
    results = index.top_k(data[2], k=10 * len(index))
    assert all(len(r.supporters) + len(r.opposers) == len(index) for r in results)
    assert all(r.supporters == [] and r.opposers == [] for r in index.top_k(data[2], k=0))


def test_empty_queries(data, build):
    index = build("kfac")
    empty = FactoredGradients(np.zeros((0, E)), np.zeros((0, C)), np.zeros(1, dtype=np.int64), np.zeros((0, D)))
    assert index.top_k(empty) == []
    assert index.scores(empty).shape == (0, len(index))


def test_mismatched_queries_rejected(data, build):
    train = data[0]
    wrong = FactoredGradients(train.h[:, :-1], train.r, train.offsets, train.dense)
    with pytest.raises(ValueError):
        build("identity").top_k(wrong)


def test_curvature_needs_positive_definite(data):
    train, marginals, _, _ = data
    with pytest.raises(ValueError):
        KFACCurvature.from_tokens(train.h, marginals, train.dense, damping=0.0)
    with pytest.raises(ValueError):
        ExactCurvature(-np.eye(P), 0.5, C, E)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CURVATURES)
def test_cuda_matches_cpu(data, name, build):
    index = build(name, dtype="float16")
    np.testing.assert_allclose(index.scores(data[2], device="cuda"), index.scores(data[2]), rtol=1e-4, atol=1e-5)
    cpu, gpu = index.top_k(data[2], k=3), index.top_k(data[2], k=3, device="cuda")
    assert [[i for i, _ in r.supporters] for r in gpu] == [[i for i, _ in r.supporters] for r in cpu]
