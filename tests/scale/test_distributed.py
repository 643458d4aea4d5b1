"""A Ray-built index and a sharded Ray search equal the single-process ones, on a local
Ray cluster that the tests start and stop (no network)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from typer.testing import CliRunner

from spacy_segment_influence import ConfigError, MissingExtraError
from spacy_segment_influence.cli import app
from spacy_segment_influence.influence.gradients import FactoredGradients
from spacy_segment_influence.influence.index import SegmentIndex
from spacy_segment_influence.scale import distributed
from spacy_segment_influence.scale.sharded_index import ShardedIndex, write_sharded

from ..conftest import make_examples, tok2vec_nlp, train

ROOT = Path(__file__).resolve().parents[2]
PEOPLE = ["Peter Smith", "Anna Berg", "Tom Hale", "Maria Lopez", "Ken Ito", "Olga Petrova"]
PLACES = ["Paris", "New York City", "Rome", "Lagos", "Oslo", "Lima", "Kyoto"]
ORGS = ["Apple", "IBM", "the United Nations", "Siemens", "FIFA"]


def corpus():
    """Varied sentences (few exact duplicates, so top-k has no ties to break)."""
    data = []
    for i in range(36):
        person, place, org = PEOPLE[i % 6], PLACES[i % 7], ORGS[i % 5]
        text = f"{person} met {org} in {place} ." if i % 3 else f"{org} hired {person} ."
        spans = [(person, "PER"), (org, "ORG")] + ([(place, "LOC")] if i % 3 else [])
        data.append((text, [(text.index(s), text.index(s) + len(s), label) for s, label in spans]))
    return data


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def nlp():
    nlp = tok2vec_nlp()
    return train(nlp, make_examples(nlp, corpus()), steps=20)


def indexed(nlp, curvature, **ray):
    """The index of `corpus()`, built in this process or with `ray_address`, `ray_workers`."""
    component = nlp.add_pipe("segment_influence", name="si", config={"curvature": curvature, "k": 5})
    try:
        examples = make_examples(nlp, corpus())
        component.initialize(lambda: examples, nlp=nlp, show_progress=False, **ray)
        return component.index
    finally:
        nlp.remove_pipe("si")


def some_queries(index: SegmentIndex, n: int = 40) -> FactoredGradients:
    """Gradient-shaped queries: the first n stored segments' factors, read as raw."""
    stored = index.stored
    grads = FactoredGradients(numpy.asarray(stored.h), numpy.asarray(stored.r), stored.offsets, stored.dense.to_dense())
    return grads.select(0, min(n, len(index)))


def assert_same_search(one: SegmentIndex, other, queries, k=5):
    """`other` finds the top-k of `one`: the same scores, each hit's score being its
    score in `one` (ids may differ only among tied scores: a tiny tok2vec has many)."""
    full = one.scores(queries)
    for q, (a, b) in enumerate(zip(one.top_k(queries, k=k), other.top_k(queries, k=k))):
        for hits, theirs in ((a.supporters, b.supporters), (a.opposers, b.opposers)):
            assert len(hits) == len(theirs)
            numpy.testing.assert_allclose([s for _, s in theirs], [s for _, s in hits], atol=1e-5)
            numpy.testing.assert_allclose([full[q, i] for i, _ in theirs], [s for _, s in theirs], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("curvature", ["kfac", "exact"])
def test_ray_build_equals_single_process(cluster, nlp, curvature):
    single = indexed(nlp, curvature)
    on_ray = indexed(nlp, curvature, ray_address="local", ray_workers=2)
    assert on_ray.metadata == single.metadata
    numpy.testing.assert_allclose(on_ray.norms, single.norms, rtol=1e-5)
    assert_same_search(single, on_ray, some_queries(single))


@pytest.mark.slow
def test_sharded_ray_search_equals_one_index(cluster, nlp, tmp_path):
    index = indexed(nlp, "kfac")
    write_sharded(index, tmp_path / "sharded", n_shards=3)
    sharded = ShardedIndex(tmp_path / "sharded", on_ray=True, cpus_per_shard=0.5)
    try:
        assert_same_search(index, sharded, some_queries(index))
        ids = [0, len(index) // 2, len(index) - 1]
        assert sharded.records(ids) == [index.metadata[i] for i in ids]
    finally:
        sharded.close()


@pytest.mark.slow
def test_actors_the_cluster_cannot_place_fail_at_once(cluster, nlp, tmp_path):
    """8 shards of 1 CPU, or 3 index workers, on a 2-CPU cluster: a clear error, not a
    search or build that waits forever."""
    write_sharded(indexed(nlp, "kfac"), tmp_path / "sharded", n_shards=8)
    with pytest.raises(ConfigError, match="need 8 CPUs, but the Ray cluster has 2.*cpus_per_shard=0.25"):
        ShardedIndex(tmp_path / "sharded", on_ray=True)
    with pytest.raises(ConfigError, match="need 3 CPUs, but the Ray cluster has 2.*at most 2 workers"):
        distributed.ShardWorkers(nlp, {"batch_size": 8}, n_workers=3)


@pytest.mark.slow
def test_cli_index_on_ray(cluster, nlp, tmp_path):
    from spacy.tokens import DocBin

    model, out = tmp_path / "model", tmp_path / "out"
    nlp.to_disk(model)
    docs = [eg.reference for eg in make_examples(nlp, corpus())]
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    result = CliRunner().invoke(app, ["index", str(model), str(tmp_path / "train.spacy"), str(out), "--ray", "local"])
    assert result.exit_code == 0, result.output
    assert SegmentIndex.from_disk(out / "segment_influence" / "index").metadata == indexed(nlp, "kfac").metadata


def test_missing_ray_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"spacy-segment-influence\[ray\]"):
        distributed.import_ray()


def test_failed_index_write_leaves_nothing(nlp, tmp_path, monkeypatch):
    """`segment-influence index` writes beside OUT_DIR and swaps it in: a write that fails
    half-way leaves neither OUT_DIR nor a temporary directory (no Ray needed)."""
    from spacy.language import Language
    from spacy.tokens import DocBin

    nlp.to_disk(tmp_path / "model")
    DocBin(docs=[eg.reference for eg in make_examples(nlp, corpus())]).to_disk(tmp_path / "train.spacy")
    to_disk = Language.to_disk

    def fail_half_way(self, path, **kwargs):
        to_disk(self, path, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Language, "to_disk", fail_half_way)
    args = ["index", str(tmp_path / "model"), str(tmp_path / "train.spacy"), str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1  # one line, not a traceback
    assert "disk full" in result.output and "was left as it was" in result.output
    # the lock file beside OUT stays (storage.atomic); nothing else may
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "model", "train.spacy"]


@pytest.mark.parametrize("seed", range(3))
def test_docs_shipped_to_workers_come_back_as_a_docbin_would_bring_them(seed):
    """`portable` + `rebuilt` against a DocBin round trip: words, spaces, entities, the
    tokens whose annotation is missing, and user_data."""
    import random

    import spacy
    from spacy.tokens import Doc, DocBin

    rng = random.Random(seed)
    vocab = spacy.blank("en").vocab
    docs = []
    for i in range(20):
        n = rng.randint(1, 12)
        tags, t = [], 0
        while t < n:
            kind = rng.choice(["O", None, "ent"])
            if kind == "ent":
                length = min(n - t, rng.randint(1, 3))
                label = rng.choice(["PER", "LOC", "ORG"])
                tags += [f"B-{label}"] + [f"I-{label}"] * (length - 1)
                t += length
            else:
                tags.append(kind)
                t += 1
        words = [rng.choice(["Anna", "Paris", "in", ".", "New", "York"]) for _ in range(n)]
        spaces = [rng.random() < 0.8 for _ in range(n)]
        doc = Doc(vocab, words=words, spaces=spaces, ents=tags)
        doc.user_data["id"] = f"doc_{i}_0"
        docs.append(doc)
    expected = list(DocBin(docs=docs, store_user_data=True).get_docs(vocab))
    got = [distributed.rebuilt(vocab, distributed.portable(doc)) for doc in docs]
    for a, b in zip(expected, got):
        assert [(t.text, t.whitespace_, t.ent_iob_, t.ent_type_) for t in a] == [
            (t.text, t.whitespace_, t.ent_iob_, t.ent_type_) for t in b
        ]
        assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]
        assert a.user_data == b.user_data


@pytest.mark.slow
def test_a_local_cluster_keeps_the_terminal_quiet(tmp_path):
    """A sharded search on `ray_cluster("local")`, as README shows it, prints the results
    and nothing from Ray (INFO lines, the token-authentication notice, core_worker errors)
    or tokenizers."""
    pytest.importorskip("ray")
    script = f"""
from spacy_segment_influence.scale.distributed import ray_cluster
from spacy_segment_influence.scale.sharded_index import ShardedIndex, write_sharded
from tests.conftest import random_index

index, queries = random_index("kfac")
write_sharded(index, {str(tmp_path / "shards")!r}, n_shards=2)
with ray_cluster("local"):
    sharded = ShardedIndex({str(tmp_path / "shards")!r}, on_ray=True, cpus_per_shard=0.5)
    print(len(sharded.top_k(queries, k=3)))
    sharded.close()
"""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "TOKENIZERS_PARALLELISM")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "9"
    noise = [line for line in done.stderr.splitlines() if line.strip()]
    assert not noise, "\n".join(noise)
