"""Brute-force tests for ``spacy_segment_influence.ner.crf``.

Every quantity computed by the linear-chain CRF (partition function,
marginals, Viterbi path, NLL with full and partial tags, segment NLL) is
compared with an explicit enumeration of all tag paths of small sentences
(C <= 5 tags, length <= 6, so at most 5**6 = 15625 paths).  The reference
enumerator and the reference tag-scheme rules below are written from the
specification only, independently of the implementation.

All computations are in float64 and compared with tolerance ~1e-9.
"""

import collections
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import torch

from spacy_segment_influence.ner import crf

DTYPE = torch.float64
ATOL = 1e-9
RTOL = 1e-9
SEEDS = [0, 1, 2, 3, 4]

# Tag inventories (5 tags each) used for the brute-force comparisons.  The BIO
# one is deliberately not in "canonical" order.
BILUO_TAGS = ["O", "B-PER", "I-PER", "L-PER", "U-PER"]
BIO_TAGS = ["B-LOC", "O", "I-PER", "B-PER", "I-LOC"]

# One length pattern per seed: mixed lengths, length-1 sentences, a single
# sentence, equal lengths; odd seeds add an all-padding column at the end.
LENGTH_SETS = [
    [6, 1, 3, 5],
    [2, 6, 4, 1, 6],
    [1],
    [3, 3],
    [5, 2, 1],
]

SETTINGS = ["biluo", "bio", "free3", "free4u", "rand4"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: intra-op threads only add contention overhead."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------
# Reference tag-scheme rules (from the specification)
# ---------------------------------------------------------------------------


def _parse(tag: str) -> Tuple[str, Optional[str]]:
    if tag == "O":
        return "O", None
    prefix, label = tag.split("-", 1)
    return prefix, label


def ref_allowed(prev: Optional[str], cur: Optional[str], scheme: str) -> bool:
    """May ``cur`` directly follow ``prev``?  ``None`` stands for START/END."""
    if scheme == "BILUO":
        if prev is None:
            return _parse(cur)[0] in ("O", "B", "U")
        if cur is None:
            return _parse(prev)[0] in ("O", "L", "U")
        pp, pl = _parse(prev)
        cp, cl = _parse(cur)
        if pp in ("B", "I"):
            return cp in ("I", "L") and cl == pl
        return cp in ("O", "B", "U")
    if scheme == "BIO":
        if prev is None:
            return _parse(cur)[0] != "I"
        if cur is None:
            return True
        pp, pl = _parse(prev)
        cp, cl = _parse(cur)
        if cp == "I":
            return pp in ("B", "I") and pl == cl
        return True
    raise ValueError(scheme)


def ref_constraint_tensors(tags: Sequence[str], scheme: str):
    C = len(tags)
    trans = torch.tensor(
        [[ref_allowed(tags[i], tags[j], scheme) for j in range(C)] for i in range(C)],
        dtype=torch.bool,
    )
    start = torch.tensor([ref_allowed(None, t, scheme) for t in tags], dtype=torch.bool)
    end = torch.tensor([ref_allowed(t, None, scheme) for t in tags], dtype=torch.bool)
    return trans, start, end


def entity_sequences(n: int, labels: Sequence[str]):
    """All non-overlapping labelled span sets over n tokens."""
    if n == 0:
        yield []
        return
    # token 0 is outside any entity
    for rest in entity_sequences(n - 1, labels):
        yield [(s + 1, e + 1, label) for (s, e, label) in rest]
    # an entity starts at token 0 with length k
    for k in range(1, n + 1):
        for label in labels:
            for rest in entity_sequences(n - k, labels):
                yield [(0, k, label)] + [(s + k, e + k, other) for (s, e, other) in rest]


def encode(n: int, spans, scheme: str) -> List[str]:
    out = ["O"] * n
    for s, e, label in spans:
        if scheme == "BIO":
            out[s] = "B-" + label
            for i in range(s + 1, e):
                out[i] = "I-" + label
        else:
            if e - s == 1:
                out[s] = "U-" + label
            else:
                out[s] = "B-" + label
                for i in range(s + 1, e - 1):
                    out[i] = "I-" + label
                out[e - 1] = "L-" + label
    return out


# ---------------------------------------------------------------------------
# Brute-force enumerator
# ---------------------------------------------------------------------------

_PATHS: Dict[Tuple[int, int], torch.Tensor] = {}


def all_paths(n: int, C: int) -> torch.Tensor:
    key = (n, C)
    if key not in _PATHS:
        _PATHS[key] = torch.tensor(list(itertools.product(range(C), repeat=n)), dtype=torch.long).reshape(-1, n)
    return _PATHS[key]


def path_index(path: Sequence[int], C: int) -> int:
    """Row of ``path`` in ``all_paths`` (itertools.product is lexicographic)."""
    idx = 0
    for y in path:
        idx = idx * C + int(y)
    return idx


_VALID_CACHE: Dict[tuple, torch.Tensor] = {}


def valid_paths(n: int, C: int, ref) -> torch.Tensor:
    key = (n, C) if ref is None else (n, C) + tuple(tuple(x.flatten().tolist()) for x in ref)
    if key not in _VALID_CACHE:
        P = all_paths(n, C)
        _VALID_CACHE[key] = P[bf_valid(P, ref)]
    return _VALID_CACHE[key]


def bf_path_scores(scores, b: int):
    """All paths of sentence b and their (differentiable) scores."""
    n = int(scores.lengths[b])
    C = scores.emissions.shape[-1]
    P = all_paths(n, C)
    em = scores.emissions[b, :n]
    s = scores.start[P[:, 0]] + scores.end[P[:, -1]] + em[torch.arange(n), P].sum(1)
    if n > 1:
        s = s + scores.transitions[P[:, :-1], P[:, 1:]].sum(1)
    return P, s


def path_score(scores, b: int, path: Sequence[int]) -> float:
    """Score of one explicit path, written out term by term."""
    total = float(scores.start[path[0]]) + float(scores.end[path[-1]])
    for t, y in enumerate(path):
        total += float(scores.emissions[b, t, y])
    for t in range(len(path) - 1):
        total += float(scores.transitions[path[t], path[t + 1]])
    return total


def bf_valid(P: torch.Tensor, ref, tag_mask_b: Optional[torch.Tensor] = None):
    n = P.shape[1]
    ok = torch.ones(P.shape[0], dtype=torch.bool)
    if ref is not None:
        trans, start, end = ref
        ok &= start[P[:, 0]] & end[P[:, -1]]
        if n > 1:
            ok &= trans[P[:, :-1], P[:, 1:]].all(1)
    if tag_mask_b is not None:
        ok &= tag_mask_b[:n][torch.arange(n), P].all(1)
    return ok


def bf_compatible(P: torch.Tensor, tags_b: torch.Tensor):
    n = P.shape[1]
    t = tags_b[:n]
    return ((P == t[None, :]) | (t[None, :] < 0)).all(1)


def lse(s: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    assert bool(ok.any()), "test bug: empty path set"
    return torch.logsumexp(s[ok], 0)


def bf_log_partition(scores, ref, tag_mask=None) -> torch.Tensor:
    out = []
    for b in range(len(scores.lengths)):
        P, s = bf_path_scores(scores, b)
        ok = bf_valid(P, ref, None if tag_mask is None else tag_mask[b])
        out.append(lse(s, ok))
    return torch.stack(out)


def bf_marginals(scores, ref, tag_mask=None):
    B, L, C = scores.emissions.shape
    unary = torch.zeros(B, L, C, dtype=DTYPE)
    pairwise = torch.zeros(B, max(L - 1, 0), C, C, dtype=DTYPE)
    log_z = []
    for b in range(B):
        n = int(scores.lengths[b])
        P, s = bf_path_scores(scores, b)
        ok = bf_valid(P, ref, None if tag_mask is None else tag_mask[b])
        z = lse(s, ok)
        log_z.append(z)
        p = torch.where(ok, torch.exp(s - z), torch.zeros_like(s)).detach()
        oh = torch.nn.functional.one_hot(P, C).to(DTYPE)  # [N, n, C]
        unary[b, :n] = torch.einsum("p,ptc->tc", p, oh)
        for t in range(n - 1):
            pairwise[b, t] = torch.einsum("p,pi,pj->ij", p, oh[:, t], oh[:, t + 1])
    return torch.stack(log_z), unary, pairwise


def bf_viterbi(scores, ref):
    paths, best_scores, gaps = [], [], []
    for b in range(len(scores.lengths)):
        P, s = bf_path_scores(scores, b)
        ok = bf_valid(P, ref)
        s = s.detach().masked_fill(~ok, float("-inf"))
        top = torch.topk(s, min(2, int(ok.sum())))
        paths.append(P[top.indices[0]].tolist())
        best_scores.append(float(top.values[0]))
        gaps.append(float(top.values[0] - top.values[1]) if len(top.values) > 1 else float("inf"))
    return paths, best_scores, gaps


def bf_nll(scores, tags, ref) -> torch.Tensor:
    out = []
    for b in range(len(scores.lengths)):
        P, s = bf_path_scores(scores, b)
        ok = bf_valid(P, ref)
        comp = bf_compatible(P, tags[b])
        out.append(-(lse(s, ok & comp) - lse(s, ok)))
    return torch.stack(out)


def bf_segment_nll(scores, tags, seg_start, seg_end, ref, full_conditioning: bool = False):
    """-log [sum_{y_S, y_{a-1}, y_b fixed} / sum_{y_{a-1}, y_b fixed}] (whole-sentence
    enumeration, conditioning only on the neighbours of the segment, START/END at the
    edges).  With ``full_conditioning`` every label outside S is fixed instead (the
    definition before the Markov shortcut)."""
    out = []
    for b in range(len(scores.lengths)):
        n = int(scores.lengths[b])
        a, e = int(seg_start[b]), int(seg_end[b])
        P, s = bf_path_scores(scores, b)
        ok = bf_valid(P, ref)
        g = tags[b][:n]
        if full_conditioning:
            outside = torch.ones(n, dtype=torch.bool)
            outside[a:e] = False
            cond = (P[:, outside] == g[outside][None, :]).all(1)
        else:
            cond = torch.ones_like(ok)
            if a > 0:
                cond &= P[:, a - 1] == g[a - 1]
            if e < n:
                cond &= P[:, e] == g[e]
        inside = (P[:, a:e] == g[a:e][None, :]).all(1)
        out.append(-(lse(s, ok & cond & inside) - lse(s, ok & cond)))
    return torch.stack(out)


# ---------------------------------------------------------------------------
# Random instances
# ---------------------------------------------------------------------------


def make_setting(name: str, gen: torch.Generator):
    """Returns (C, constraints passed to crf or None, reference bool tensors or None)."""
    if name == "biluo":
        ref = ref_constraint_tensors(BILUO_TAGS, "BILUO")
        return 5, crf.TagConstraints(*ref), ref
    if name == "bio":
        ref = ref_constraint_tensors(BIO_TAGS, "BIO")
        return 5, crf.TagConstraints(*ref), ref
    if name == "free3":
        return 3, None, None
    if name == "free4u":
        return 4, crf.unconstrained(4), None
    if name == "rand4":
        C = 4
        while True:
            trans = torch.rand(C, C, generator=gen) < 0.6
            start = torch.rand(C, generator=gen) < 0.6
            end = torch.rand(C, generator=gen) < 0.6
            ref = (trans, start, end)
            if all(bool(bf_valid(all_paths(n, C), ref).any()) for n in range(1, 7)):
                return C, crf.TagConstraints(trans, start, end), ref
    raise ValueError(name)


def make_scores(C: int, lengths: Sequence[int], gen: torch.Generator, extra_pad: int = 0):
    B = len(lengths)
    L = max(lengths) + extra_pad
    em = torch.randn(B, L, C, generator=gen, dtype=DTYPE) * 1.5
    garbage = torch.randn(B, L, C, generator=gen, dtype=DTYPE) * 1e3
    pos = torch.arange(L)[None, :, None]
    lens = torch.tensor(lengths, dtype=torch.long)
    em = torch.where(pos < lens[:, None, None], em, garbage)
    return crf.ChainScores(
        emissions=em,
        lengths=lens,
        transitions=torch.randn(C, C, generator=gen, dtype=DTYPE),
        start=torch.randn(C, generator=gen, dtype=DTYPE),
        end=torch.randn(C, generator=gen, dtype=DTYPE),
    )


def make_instance(setting: str, seed: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    C, cons, ref = make_setting(setting, gen)
    lengths = LENGTH_SETS[seed % len(LENGTH_SETS)]
    scores = make_scores(C, lengths, gen, extra_pad=seed % 2)
    return gen, C, cons, ref, scores


def sample_valid_path(n: int, C: int, ref, gen: torch.Generator) -> torch.Tensor:
    valid = valid_paths(n, C, ref)
    i = int(torch.randint(len(valid), (1,), generator=gen))
    return valid[i]


def sample_gold(scores, ref, gen, unknown_prob: float = 0.0) -> torch.Tensor:
    """Valid gold path per sentence, some positions set to -1, garbage padding."""
    B, L, C = scores.emissions.shape
    tags = torch.randint(-1, C, (B, L), generator=gen)  # garbage in the padding
    for b in range(B):
        n = int(scores.lengths[b])
        tags[b, :n] = sample_valid_path(n, C, ref, gen)
        if unknown_prob > 0:
            drop = torch.rand(n, generator=gen) < unknown_prob
            tags[b, :n][drop] = -1
    return tags


def sample_tag_mask(scores, ref, gen) -> torch.Tensor:
    """Random partial mask that keeps at least one valid path; garbage (possibly
    all-False rows) in the padding."""
    B, L, C = scores.emissions.shape
    mask = torch.rand(B, L, C, generator=gen) < 0.3  # garbage in the padding
    for b in range(B):
        n = int(scores.lengths[b])
        keep = sample_valid_path(n, C, ref, gen)
        m = torch.rand(n, C, generator=gen) < 0.4
        m[torch.arange(n), keep] = True
        mask[b, :n] = m
    return mask


def with_grad(scores):
    return crf.ChainScores(
        emissions=scores.emissions.clone().requires_grad_(True),
        lengths=scores.lengths,
        transitions=scores.transitions.clone().requires_grad_(True),
        start=scores.start.clone().requires_grad_(True),
        end=scores.end.clone().requires_grad_(True),
    )


def grads(value: torch.Tensor, scores):
    params = [scores.emissions, scores.transitions, scores.start, scores.end]
    return torch.autograd.grad(value.sum(), params, allow_unused=True)


def close(actual, expected, what=""):
    torch.testing.assert_close(
        actual.detach().to(DTYPE), expected.detach().to(DTYPE), atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}"
    )


def assert_same_grads(crf_value, bf_value, scores_crf, scores_bf, what):
    names = ["emissions", "transitions", "start", "end"]
    for name, g_c, g_b in zip(names, grads(crf_value, scores_crf), grads(bf_value, scores_bf)):
        # an unused input (e.g. transitions when every sentence has length 1) has no gradient
        g_b = torch.zeros_like(getattr(scores_bf, name)) if g_b is None else g_b
        g_c = torch.zeros_like(getattr(scores_crf, name)) if g_c is None else g_c
        close(g_c, g_b, f"{what} d/d{name}")


# ---------------------------------------------------------------------------
# 1. tag constraints
# ---------------------------------------------------------------------------

BILUO2 = ["O", "B-PER", "I-PER", "L-PER", "U-PER", "B-LOC", "I-LOC", "L-LOC", "U-LOC"]
BIO2 = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _pair(c: "crf.TagConstraints", tags, a, b) -> bool:
    return bool(c.transitions[tags.index(a), tags.index(b)])


def test_neg_is_large_negative():
    assert isinstance(crf.NEG, float)
    assert crf.NEG <= -1e3


def test_biluo_named_pairs():
    c = crf.tag_constraints(BILUO2, "BILUO")
    C = len(BILUO2)
    assert c.transitions.shape == (C, C) and c.transitions.dtype == torch.bool
    assert c.start.shape == (C,) and c.start.dtype == torch.bool
    assert c.end.shape == (C,) and c.end.dtype == torch.bool
    allowed = [
        ("O", "O"),
        ("O", "B-PER"),
        ("O", "U-LOC"),
        ("B-PER", "I-PER"),
        ("B-PER", "L-PER"),
        ("I-PER", "I-PER"),
        ("I-PER", "L-PER"),
        ("L-PER", "O"),
        ("L-PER", "B-LOC"),
        ("L-PER", "U-PER"),
        ("L-LOC", "B-PER"),
        ("U-PER", "U-PER"),
        ("U-PER", "B-LOC"),
        ("U-LOC", "O"),
        ("B-LOC", "L-LOC"),
        ("I-LOC", "I-LOC"),
    ]
    forbidden = [
        ("O", "I-PER"),
        ("O", "L-PER"),
        ("O", "L-LOC"),
        ("B-PER", "O"),
        ("B-PER", "B-PER"),
        ("B-PER", "U-PER"),
        ("B-PER", "B-LOC"),
        ("B-PER", "I-LOC"),
        ("B-PER", "L-LOC"),
        ("I-PER", "O"),
        ("I-PER", "L-LOC"),
        ("I-PER", "U-LOC"),
        ("L-PER", "I-PER"),
        ("L-PER", "L-PER"),
        ("U-PER", "I-PER"),
        ("U-LOC", "L-LOC"),
        ("I-LOC", "I-PER"),
        ("B-LOC", "L-PER"),
    ]
    for a, b in allowed:
        assert _pair(c, BILUO2, a, b), f"{a} -> {b} should be allowed"
    for a, b in forbidden:
        assert not _pair(c, BILUO2, a, b), f"{a} -> {b} should be forbidden"
    for t in BILUO2:
        p = _parse(t)[0]
        assert bool(c.start[BILUO2.index(t)]) == (p in "OBU"), f"start {t}"
        assert bool(c.end[BILUO2.index(t)]) == (p in "OLU"), f"end {t}"


def test_bio_named_pairs():
    c = crf.tag_constraints(BIO2, "BIO")
    allowed = [
        ("O", "O"),
        ("O", "B-PER"),
        ("B-PER", "I-PER"),
        ("I-PER", "I-PER"),
        ("I-PER", "O"),
        ("I-PER", "B-LOC"),
        ("B-PER", "B-PER"),
        ("B-PER", "O"),
        ("I-LOC", "B-PER"),
        ("B-LOC", "I-LOC"),
        ("I-LOC", "I-LOC"),
        ("B-LOC", "B-PER"),
    ]
    forbidden = [
        ("O", "I-PER"),
        ("O", "I-LOC"),
        ("B-PER", "I-LOC"),
        ("I-PER", "I-LOC"),
        ("B-LOC", "I-PER"),
        ("I-LOC", "I-PER"),
    ]
    for a, b in allowed:
        assert _pair(c, BIO2, a, b), f"{a} -> {b} should be allowed"
    for a, b in forbidden:
        assert not _pair(c, BIO2, a, b), f"{a} -> {b} should be forbidden"
    for t in BIO2:
        assert bool(c.start[BIO2.index(t)]) == (not t.startswith("I-")), f"start {t}"
        assert bool(c.end[BIO2.index(t)]), f"end {t}"


@pytest.mark.parametrize(
    "tags,scheme",
    [
        (BILUO_TAGS, "BILUO"),
        (BILUO2, "BILUO"),
        (["U-ORG", "L-GPE", "O", "B-GPE", "I-ORG", "L-ORG", "B-ORG", "I-GPE", "U-GPE"], "BILUO"),
        (BIO_TAGS, "BIO"),
        (BIO2, "BIO"),
        (["I-B", "B-I", "O", "I-I", "B-B", "B-WORK_OF_ART", "I-WORK_OF_ART"], "BIO"),
        (["O", "B-A-B", "I-A-B", "L-A-B", "U-A-B", "B-A", "I-A", "L-A", "U-A"], "BILUO"),
    ],
)
def test_tag_constraints_full_matrix(tags, scheme):
    c = crf.tag_constraints(tags, scheme)
    trans, start, end = ref_constraint_tensors(tags, scheme)
    bad = [
        (tags[i], tags[j])
        for i in range(len(tags))
        for j in range(len(tags))
        if bool(c.transitions[i, j]) != bool(trans[i, j])
    ]
    assert not bad, f"transitions differ from spec for pairs {bad}"
    assert torch.equal(c.start.bool(), start), f"start: {c.start} vs {start}"
    assert torch.equal(c.end.bool(), end), f"end: {c.end} vs {end}"


@pytest.mark.parametrize(
    "tags,scheme,max_n",
    [(BILUO_TAGS, "BILUO", 6), (BIO2, "BIO", 6), (BILUO2, "BILUO", 4), (["B-LOC", "O", "I-LOC"], "BIO", 6)],
)
def test_allowed_paths_are_exactly_entity_encodings(tags, scheme, max_n):
    """Every encoding of a valid entity sequence is allowed, and every allowed path
    is the encoding of some entity sequence (bijection)."""
    c = crf.tag_constraints(tags, scheme)
    labels = sorted({_parse(t)[1] for t in tags if t != "O"})
    index = {t: i for i, t in enumerate(tags)}
    for n in range(1, max_n + 1):
        encodings = set()
        for spans in entity_sequences(n, labels):
            path = tuple(index[t] for t in encode(n, spans, scheme))
            assert path not in encodings
            encodings.add(path)
            assert bool(c.start[path[0]]), f"{[tags[i] for i in path]}: start"
            assert bool(c.end[path[-1]]), f"{[tags[i] for i in path]}: end"
            for i, j in zip(path[:-1], path[1:]):
                assert bool(c.transitions[i, j]), f"{[tags[k] for k in path]}: {tags[i]}->{tags[j]}"
        P = all_paths(n, len(tags))
        ok = bf_valid(P, (c.transitions.bool(), c.start.bool(), c.end.bool()))
        allowed = {tuple(p) for p in P[ok].tolist()}
        assert allowed == encodings, f"n={n}: {len(allowed)} allowed vs {len(encodings)} encodings"


def test_unconstrained():
    for C in (1, 3, 5):
        c = crf.unconstrained(C)
        assert c.transitions.shape == (C, C) and bool(c.transitions.all())
        assert c.start.shape == (C,) and bool(c.start.all())
        assert c.end.shape == (C,) and bool(c.end.all())


def test_gold_mask():
    tags = torch.tensor([[0, -1, 2], [1, -1, -1]])
    m = crf.gold_mask(tags, 3)
    expected = torch.tensor(
        [
            [[True, False, False], [True, True, True], [False, False, True]],
            [[False, True, False], [True, True, True], [True, True, True]],
        ]
    )
    assert m.dtype == torch.bool
    assert torch.equal(m, expected)


# ---------------------------------------------------------------------------
# 2. log partition
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_log_partition(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    out = crf.log_partition(scores, cons)
    assert out.shape == (len(scores.lengths),)
    assert out.dtype == DTYPE
    close(out, bf_log_partition(scores, ref), f"log_partition[{setting}]")


@pytest.mark.parametrize("seed", SEEDS)
def test_log_partition_constraints_matter(seed):
    """Same BILUO scores with and without constraints: each matches its own brute force
    (and the two differ, so the constraints are actually applied)."""
    gen, C, cons, ref, scores = make_instance("biluo", seed)
    with_c = crf.log_partition(scores, cons)
    without = crf.log_partition(scores)
    close(with_c, bf_log_partition(scores, ref), "constrained")
    close(without, bf_log_partition(scores, None), "unconstrained")
    assert bool((without > with_c + 1e-6).all())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_log_partition_tag_mask(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    mask = sample_tag_mask(scores, ref, gen)
    out = crf.log_partition(scores, cons, tag_mask=mask)
    close(out, bf_log_partition(scores, ref, mask), f"log_partition+mask[{setting}]")
    # the mask alone (no constraints) in the constrained settings
    if ref is not None:
        mask2 = sample_tag_mask(scores, None, gen)
        close(
            crf.log_partition(scores, None, tag_mask=mask2),
            bf_log_partition(scores, None, mask2),
            "log_partition+mask, no constraints",
        )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_log_partition_gradients(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    mask = sample_tag_mask(scores, ref, gen) if seed % 2 else None
    s_c, s_b = with_grad(scores), with_grad(scores)
    assert_same_grads(
        crf.log_partition(s_c, cons, tag_mask=mask), bf_log_partition(s_b, ref, mask), s_c, s_b, "log_partition"
    )


# ---------------------------------------------------------------------------
# 3. marginals
# ---------------------------------------------------------------------------


def _check_marginals(scores, cons, ref, mask, what):
    """Values at real positions first, then autograd identities, then the padding
    (so a padding problem does not hide the other checks)."""
    B, L, C = scores.emissions.shape
    log_z, unary, pairwise = crf.marginals(scores, cons, tag_mask=mask)
    assert unary.shape == (B, L, C)
    assert pairwise.shape == (B, L - 1, C, C)
    bz, bu, bp = bf_marginals(scores, ref, mask)
    close(log_z, bz, f"{what} log_z")
    for b in range(B):
        n = int(scores.lengths[b])
        close(unary[b, :n], bu[b, :n], f"{what} unary (sentence {b}, length {n})")
        close(pairwise[b, : n - 1], bp[b, : n - 1], f"{what} pairwise (sentence {b}, length {n})")
        # internal consistency
        close(unary[b, :n].sum(-1), torch.ones(n, dtype=DTYPE), f"{what} unary sums")
        if n > 1:
            close(pairwise[b, : n - 1].sum(-1), unary[b, : n - 1], f"{what} pairwise row sums")
            close(pairwise[b, : n - 1].sum(-2), unary[b, 1:n], f"{what} pairwise col sums")
    # unary == d log Z / d emissions (zero at padding), pairwise summed == d log Z / d transitions
    s = with_grad(scores)
    g_em, g_tr, g_st, g_en = (
        torch.zeros_like(x) if g is None else g
        for g, x in zip(
            grads(crf.log_partition(s, cons, tag_mask=mask), s), (s.emissions, s.transitions, s.start, s.end)
        )
    )
    close(g_em, bu, f"{what} autograd d logZ/d emissions vs brute-force unary")
    for b in range(B):
        n = int(scores.lengths[b])
        close(unary[b, :n], g_em[b, :n], f"{what} unary vs autograd")
    real_pairs = (
        torch.stack([pairwise[b, t] for b in range(B) for t in range(int(scores.lengths[b]) - 1)]).sum(0)
        if int(scores.lengths.max()) > 1
        else torch.zeros(C, C, dtype=DTYPE)
    )
    close(real_pairs, g_tr, f"{what} pairwise vs autograd")
    close(unary[:, 0].sum(0), g_st, f"{what} start vs autograd")
    last = scores.lengths - 1
    close(unary[torch.arange(B), last].sum(0), g_en, f"{what} end vs autograd")
    # padded positions: exactly zero (spec: "zeros at padded positions")
    close(unary, bu, f"{what} unary incl. padding")
    close(pairwise, bp, f"{what} pairwise incl. padding (must be 0 there)")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_marginals(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    _check_marginals(scores, cons, ref, None, f"marginals[{setting}]")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_marginals_tag_mask(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    mask = sample_tag_mask(scores, ref, gen)
    _check_marginals(scores, cons, ref, mask, f"marginals+mask[{setting}]")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_unary_marginals(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    unary = crf.unary_marginals(scores, cons)
    _, bu, _ = bf_marginals(scores, ref, None)
    for b in range(len(scores.lengths)):
        n = int(scores.lengths[b])
        close(unary[b, :n], bu[b, :n], f"unary_marginals[{setting}] (sentence {b}, length {n})")
        assert not unary[b, n:].any()


@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_unary_marginals_of_confident_models_match_log_space(scale):
    """Scores spread over hundreds of nats (a confident model): the probability-space
    recursion must still agree with the log-space one."""
    gen, C, cons, ref, scores = make_instance("biluo", 0)
    sharp = scores._replace(emissions=scores.emissions * scale, transitions=scores.transitions * scale)
    _, expected, _ = crf.marginals(sharp, cons)
    close(crf.unary_marginals(sharp, cons), expected, f"unary_marginals at scale {scale}")
    in_float32 = crf.ChainScores(*(x.float() if x.is_floating_point() else x for x in sharp))
    got = crf.unary_marginals(in_float32, cons)
    assert got.dtype == torch.float64 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
@pytest.mark.parametrize("setting", SETTINGS)
def test_summed_marginals_match_brute_force(setting, scale):
    """log Z, unary marginals and the summed pairwise marginals of the scaled recursion
    against brute-force enumeration and the log-space recursion; in float32 at 300x a
    scaled step underflows, so the log-space fallback must answer the same."""
    gen, C, cons, ref, scores = make_instance(setting, 0)
    sharp = scores._replace(emissions=scores.emissions * scale, transitions=scores.transitions * scale)
    log_z, unary, pairwise = crf.summed_marginals(sharp, cons)
    expected_log_z, expected_unary, expected_pairwise = crf.marginals(sharp, cons)
    close(log_z, expected_log_z, f"summed_marginals log Z [{setting}, {scale}]")
    close(unary, expected_unary, f"summed_marginals unary [{setting}, {scale}]")
    close(pairwise, expected_pairwise.sum(dim=(0, 1)), f"summed_marginals pairwise [{setting}, {scale}]")
    in_float32 = crf.ChainScores(*(x.float() if x.is_floating_point() else x for x in sharp))
    _, unary32, pairwise32 = crf.summed_marginals(in_float32, cons)
    torch.testing.assert_close(unary32.double(), expected_unary, atol=1e-3, rtol=0)
    torch.testing.assert_close(pairwise32.double(), expected_pairwise.sum(dim=(0, 1)), atol=1e-3, rtol=1e-4)
    if scale == 1.0:
        bz, bu, bp = bf_marginals(scores, ref, None)
        close(log_z, bz, f"summed_marginals log Z vs brute force [{setting}]")
        close(pairwise, bp.sum(dim=(0, 1)), f"summed_marginals pairwise vs brute force [{setting}]")


@pytest.mark.parametrize("seed", SEEDS)
def test_marginals_respect_constraints(seed):
    """Forbidden transitions / start / end tags get exactly zero probability."""
    gen, C, cons, ref, scores = make_instance("biluo", seed)
    _, unary, pairwise = crf.marginals(scores, cons)
    trans, start, end = ref
    for b in range(len(scores.lengths)):
        n = int(scores.lengths[b])
        if n > 1:
            assert float(pairwise[b, : n - 1][:, ~trans].abs().max()) < 1e-12
    assert float(unary[:, 0, ~start].abs().max()) < 1e-12
    last = scores.lengths - 1
    assert float(unary[torch.arange(len(last)), last][:, ~end].abs().max()) < 1e-12


# ---------------------------------------------------------------------------
# 4. viterbi
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS + ["biluo_nocons"])
def test_viterbi(setting, seed):
    if setting == "biluo_nocons":
        gen, C, cons, ref, scores = make_instance("biluo", seed)
        cons, ref = None, None
    else:
        gen, C, cons, ref, scores = make_instance(setting, seed)
    paths = crf.viterbi(scores, cons)
    exp_paths, exp_best, gaps = bf_viterbi(scores, ref)
    assert isinstance(paths, list) and len(paths) == len(scores.lengths)
    for b, path in enumerate(paths):
        n = int(scores.lengths[b])
        assert isinstance(path, list) and len(path) == n, f"sentence {b}: {path}"
        assert all(isinstance(v, int) for v in path), f"sentence {b}: non-int entries {path}"
        P = torch.tensor([path], dtype=torch.long)
        assert bool(bf_valid(P, ref)[0]), f"sentence {b}: invalid path {path}"
        got = path_score(scores, b, path)
        assert abs(got - exp_best[b]) < 1e-9, f"sentence {b}: score {got} vs best {exp_best[b]}"
        if gaps[b] > 1e-7:
            assert path == exp_paths[b], f"sentence {b}: {path} vs {exp_paths[b]}"


# ---------------------------------------------------------------------------
# 5. nll
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_nll_full_tags(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    tags = sample_gold(scores, ref, gen)
    out = crf.nll(scores, tags, cons)
    assert out.shape == (len(scores.lengths),)
    # explicit -(score(y) - log Z)
    log_z = bf_log_partition(scores, ref)
    expected = []
    for b in range(len(scores.lengths)):
        n = int(scores.lengths[b])
        P, s = bf_path_scores(scores, b)
        idx = path_index(tags[b, :n].tolist(), C)
        assert P[idx].tolist() == tags[b, :n].tolist()
        expected.append(-(s[idx] - log_z[b]))
    close(out, torch.stack(expected), f"nll[{setting}]")
    close(out, bf_nll(scores, tags, ref), f"nll[{setting}] (bf_nll)")
    assert bool((out >= -1e-12).all())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_nll_partial_tags(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    tags = sample_gold(scores, ref, gen, unknown_prob=0.4)
    out = crf.nll(scores, tags, cons)
    close(out, bf_nll(scores, tags, ref), f"nll partial[{setting}]")
    # all tags unknown -> probability 1
    unk = torch.full_like(tags, -1)
    close(crf.nll(scores, unk, cons), torch.zeros(len(scores.lengths), dtype=DTYPE), "nll all unknown")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_nll_gradients(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    tags = sample_gold(scores, ref, gen, unknown_prob=0.3 * (seed % 2))
    s_c, s_b = with_grad(scores), with_grad(scores)
    assert_same_grads(crf.nll(s_c, tags, cons), bf_nll(s_b, tags, ref), s_c, s_b, "nll")
    # d nll / d emissions == marginals(all) - marginals(gold-compatible)
    _, u_all, _ = crf.marginals(scores, cons)
    _, u_gold, _ = crf.marginals(scores, cons, tag_mask=crf.gold_mask(tags, C))
    s = with_grad(scores)
    (g_em, *_) = grads(crf.nll(s, tags, cons), s)
    close(g_em, u_all - u_gold, "nll grad vs marginals")


# ---------------------------------------------------------------------------
# 6. segment nll
# ---------------------------------------------------------------------------

SEGMENT_KINDS = ["single", "multi", "whole", "prefix", "suffix"]


def make_segments(lengths: torch.Tensor, kind: str, gen: torch.Generator):
    starts, ends = [], []
    for n in lengths.tolist():
        if kind == "single":
            a = int(torch.randint(n, (1,), generator=gen))
            e = a + 1
        elif kind == "multi":
            k = min(n, 2 + int(torch.randint(max(n - 1, 1), (1,), generator=gen)))
            a = int(torch.randint(n - k + 1, (1,), generator=gen))
            e = a + k
        elif kind == "whole":
            a, e = 0, n
        elif kind == "prefix":
            a, e = 0, 1 + int(torch.randint(n, (1,), generator=gen))
        elif kind == "suffix":
            a, e = int(torch.randint(n, (1,), generator=gen)), n
        else:
            raise ValueError(kind)
        assert 0 <= a < e <= n
        starts.append(a)
        ends.append(e)
    return torch.tensor(starts, dtype=torch.long), torch.tensor(ends, dtype=torch.long)


@pytest.mark.parametrize("kind", SEGMENT_KINDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_segment_nll(setting, seed, kind):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    tags = sample_gold(scores, ref, gen)
    a, e = make_segments(scores.lengths, kind, gen)
    out = crf.segment_nll(scores, tags, a, e, cons)
    assert out.shape == (len(scores.lengths),)
    expected = bf_segment_nll(scores, tags, a, e, ref)
    close(out, expected, f"segment_nll[{setting},{kind}] segs={list(zip(a.tolist(), e.tolist()))}")
    # Markov claim: conditioning on every outside label gives the same number
    close(out, bf_segment_nll(scores, tags, a, e, ref, full_conditioning=True), "segment_nll full conditioning")
    # identity: nll(y) == segment_nll(S) + nll(y with S unknown)
    masked = tags.clone()
    for b in range(len(scores.lengths)):
        masked[b, int(a[b]) : int(e[b])] = -1
    close(crf.nll(scores, tags, cons), out + crf.nll(scores, masked, cons), "nll chain rule")
    if kind == "whole":
        close(out, crf.nll(scores, tags, cons), "whole-sentence segment == nll")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_segment_nll_gradients(setting, seed):
    gen, C, cons, ref, scores = make_instance(setting, seed)
    tags = sample_gold(scores, ref, gen)
    a, e = make_segments(scores.lengths, SEGMENT_KINDS[seed % len(SEGMENT_KINDS)], gen)
    s_c, s_b = with_grad(scores), with_grad(scores)
    assert_same_grads(
        crf.segment_nll(s_c, tags, a, e, cons), bf_segment_nll(s_b, tags, a, e, ref), s_c, s_b, "segment_nll"
    )


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("setting", SETTINGS)
def test_segment_nll_every_segment_one_sentence(setting, seed):
    """Every (a, e) segment of one length-5 sentence (batched as copies)."""
    gen = torch.Generator().manual_seed(7 + seed)
    C, cons, ref = make_setting(setting, gen)
    n = 5
    segs = [(a, e) for a in range(n) for e in range(a + 1, n + 1)]
    one = make_scores(C, [n], gen)
    B = len(segs)
    scores = crf.ChainScores(
        one.emissions.expand(B, n, C).clone(), one.lengths.expand(B).clone(), one.transitions, one.start, one.end
    )
    tags = sample_gold(one, ref, gen).expand(B, n).clone()
    a = torch.tensor([s[0] for s in segs])
    e = torch.tensor([s[1] for s in segs])
    close(
        crf.segment_nll(scores, tags, a, e, cons),
        bf_segment_nll(scores, tags, a, e, ref),
        f"segment_nll all segments[{setting}]",
    )


# ---------------------------------------------------------------------------
# 7. edge cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
def test_all_length_one(setting):
    gen = torch.Generator().manual_seed(123)
    C, cons, ref = make_setting(setting, gen)
    scores = make_scores(C, [1, 1, 1], gen, extra_pad=2)
    close(crf.log_partition(scores, cons), bf_log_partition(scores, ref), "log_partition len1")
    _check_marginals(scores, cons, ref, None, "marginals len1")
    mask = sample_tag_mask(scores, ref, gen)
    _check_marginals(scores, cons, ref, mask, "marginals+mask len1")
    exp_paths, _, _ = bf_viterbi(scores, ref)
    assert crf.viterbi(scores, cons) == exp_paths
    tags = sample_gold(scores, ref, gen)
    close(crf.nll(scores, tags, cons), bf_nll(scores, tags, ref), "nll len1")
    a, e = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    close(crf.segment_nll(scores, tags, a, e, cons), bf_segment_nll(scores, tags, a, e, ref), "segment_nll len1")


@pytest.mark.parametrize("setting", SETTINGS)
def test_single_token_tensor_width_one(setting):
    """L == 1: pairwise has a zero-size time axis."""
    gen = torch.Generator().manual_seed(321)
    C, cons, ref = make_setting(setting, gen)
    scores = make_scores(C, [1, 1], gen)
    log_z, unary, pairwise = crf.marginals(scores, cons)
    assert pairwise.shape == (2, 0, C, C)
    bz, bu, _ = bf_marginals(scores, ref)
    close(log_z, bz, "log_z L=1")
    close(unary, bu, "unary L=1")
    assert crf.viterbi(scores, cons) == bf_viterbi(scores, ref)[0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_batch_equals_individual(setting, seed):
    """Results for a padded batch equal those for each sentence on its own (no padding)."""
    gen, C, cons, ref, scores = make_instance(setting, seed)
    tags = sample_gold(scores, ref, gen, unknown_prob=0.2)
    a, e = make_segments(scores.lengths, "single", gen)
    full_tags = sample_gold(scores, ref, gen)
    lz = crf.log_partition(scores, cons)
    _, un, pw = crf.marginals(scores, cons)
    vit = crf.viterbi(scores, cons)
    nl = crf.nll(scores, tags, cons)
    sg = crf.segment_nll(scores, full_tags, a, e, cons)
    for b in range(len(scores.lengths)):
        n = int(scores.lengths[b])
        one = crf.ChainScores(
            scores.emissions[b : b + 1, :n].clone(),
            scores.lengths[b : b + 1].clone(),
            scores.transitions,
            scores.start,
            scores.end,
        )
        close(crf.log_partition(one, cons), lz[b : b + 1], "batch vs single log_partition")
        _, un1, pw1 = crf.marginals(one, cons)
        close(un1[0], un[b, :n], "batch vs single unary")
        close(pw1[0], pw[b, : n - 1], "batch vs single pairwise")
        assert crf.viterbi(one, cons) == [vit[b]]
        close(crf.nll(one, tags[b : b + 1, :n], cons), nl[b : b + 1], "batch vs single nll")
        close(
            crf.segment_nll(one, full_tags[b : b + 1, :n], a[b : b + 1], e[b : b + 1], cons),
            sg[b : b + 1],
            "batch vs single segment_nll",
        )


def test_padding_values_do_not_matter():
    """Changing padded emissions, padded tags and padded tag_mask entries changes nothing."""
    gen, C, cons, ref, scores = make_instance("biluo", 0)
    tags = sample_gold(scores, ref, gen, unknown_prob=0.3)
    mask = sample_tag_mask(scores, ref, gen)
    B, L, _ = scores.emissions.shape
    pad = torch.arange(L)[None, :] >= scores.lengths[:, None]
    em2 = scores.emissions.clone()
    em2[pad] = -em2[pad] * 3.0
    scores2 = scores._replace(emissions=em2)
    tags2 = tags.clone()
    tags2[pad] = (tags2[pad] + 2) % C
    mask2 = mask.clone()
    mask2[pad] = ~mask2[pad]
    close(
        crf.log_partition(scores, cons, tag_mask=mask),
        crf.log_partition(scores2, cons, tag_mask=mask2),
        "log_partition padding",
    )
    for x, y in zip(crf.marginals(scores, cons, tag_mask=mask), crf.marginals(scores2, cons, tag_mask=mask2)):
        close(x, y, "marginals padding")
    assert crf.viterbi(scores, cons) == crf.viterbi(scores2, cons)
    close(crf.nll(scores, tags, cons), crf.nll(scores2, tags2, cons), "nll padding")


@pytest.mark.parametrize("setting", SETTINGS)
def test_float32_close_to_float64(setting):
    """Sanity in the training dtype: float32 results agree with float64 (loose tolerance),
    despite the large finite NEG."""
    gen, C, cons, ref, scores = make_instance(setting, 0)
    # realistic (small) padding values for this test
    B, L, _ = scores.emissions.shape
    pad = (torch.arange(L)[None, :] >= scores.lengths[:, None])[..., None]
    scores = scores._replace(emissions=scores.emissions.masked_fill(pad, 0.0))
    s32 = crf.ChainScores(*(x.float() if x.is_floating_point() else x for x in scores))
    tags = sample_gold(scores, ref, gen)
    a, e = make_segments(scores.lengths, "multi", gen)
    tol = dict(atol=1e-4, rtol=1e-4)
    for f in (
        lambda s: crf.log_partition(s, cons),
        lambda s: crf.nll(s, tags, cons),
        lambda s: crf.segment_nll(s, tags, a, e, cons),
    ):
        torch.testing.assert_close(f(s32).double(), f(scores), **tol)
    for x32, x64 in zip(crf.marginals(s32, cons), crf.marginals(scores, cons)):
        torch.testing.assert_close(x32.double(), x64, **tol)
    assert crf.viterbi(s32, cons) == crf.viterbi(scores, cons)


def test_marginals_padding_minimal():
    """Minimal case: large values in the padding must not leak into the marginals."""
    em = torch.zeros(2, 2, 3, dtype=DTYPE)
    em[1, 1] = 800.0  # padding of the length-1 sentence
    s = crf.ChainScores(
        em,
        torch.tensor([2, 1]),
        torch.zeros(3, 3, dtype=DTYPE),
        torch.zeros(3, dtype=DTYPE),
        torch.zeros(3, dtype=DTYPE),
    )
    log_z, unary, pairwise = crf.marginals(s)
    close(log_z, torch.log(torch.tensor([9.0, 3.0], dtype=DTYPE)), "log_z")
    assert torch.equal(unary[1, 1], torch.zeros(3, dtype=DTYPE)), unary[1, 1]
    assert torch.equal(pairwise[1, 0], torch.zeros(3, 3, dtype=DTYPE)), pairwise[1, 0]
    close(pairwise[0, 0], torch.full((3, 3), 1 / 9, dtype=DTYPE), "pairwise")


def test_sample_paths_follow_the_chain_distribution():
    """Forward filtering, backward sampling: path frequencies over many draws match
    p(y | x) by enumeration, on a constrained chain of two lengths (padding included)."""
    generator = torch.Generator().manual_seed(0)
    tags = ["O", "B-X", "I-X"]
    constraints = crf.tag_constraints(tags, "BIO")
    emissions = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    scores = crf.ChainScores(
        emissions,
        torch.tensor([4, 2]),
        torch.randn(3, 3, dtype=torch.float64, generator=generator),
        torch.randn(3, dtype=torch.float64, generator=generator),
        torch.zeros(3, dtype=torch.float64),
    )
    paths = crf.sample_paths(scores, constraints, 20000, generator)
    assert paths.shape == (2, 20000, 4) and bool((paths[1, :, 2:] == -1).all())
    masked = crf.constrain(scores, constraints)
    for b, length in enumerate([4, 2]):
        drawn = collections.Counter(tuple(p[:length]) for p in paths[b].tolist())
        weights = {}
        for path in itertools.product(range(3), repeat=length):
            score = (
                masked.start[path[0]]
                + masked.end[path[-1]]
                + sum(masked.emissions[b, t, y] for t, y in enumerate(path))
            )
            score = score + sum(masked.transitions[a, c] for a, c in zip(path, path[1:]))
            weights[path] = float(torch.exp(score))
        total = sum(weights.values())
        assert all(weights[path] > 0 for path in drawn)  # no forbidden path is drawn
        for path, weight in weights.items():
            assert drawn[path] / 20000 == pytest.approx(weight / total, abs=0.012)
