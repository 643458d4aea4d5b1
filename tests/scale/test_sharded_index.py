"""A sharded index searched shard by shard (in process) answers as the whole index."""

import numpy as np
import pytest

from spacy_segment_influence.exceptions import ConfigError, IndexFormatError
from spacy_segment_influence.influence.index import SegmentIndex
from spacy_segment_influence.scale.distributed import check_placement
from spacy_segment_influence.scale.sharded_index import ShardedIndex, write_sharded
from spacy_segment_influence.storage.manifest import MANIFEST

from ..conftest import random_index


@pytest.mark.parametrize("curvature,dtype", [("kfac", "float32"), ("kfac", "float16"), ("exact", "float32")])
@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_sharded_search_equals_the_whole_index(tmp_path, curvature, dtype, n_shards):
    index, queries = random_index(curvature, dtype)
    write_sharded(index, tmp_path / "sharded", n_shards)
    sharded = ShardedIndex(tmp_path / "sharded")
    assert len(sharded) == len(index)
    for whole, merged in zip(index.top_k(queries, k=6), sharded.top_k(queries, k=6, batch_size=4)):
        assert [i for i, _ in merged.supporters] == [i for i, _ in whole.supporters]
        assert [i for i, _ in merged.opposers] == [i for i, _ in whole.opposers]
        np.testing.assert_allclose([s for _, s in merged.supporters], [s for _, s in whole.supporters], rtol=1e-6)
    ids = [0, 17, 49, 3]
    assert sharded.records(ids) == [{"segment": i} for i in ids]
    if curvature == "exact":
        shard = SegmentIndex.from_disk(tmp_path / "sharded" / "shard-00000")
        np.testing.assert_array_equal(shard.windows.tags, index.windows.tags[: len(shard.stored.h)])


def test_bad_shard_counts_and_missing_manifest(tmp_path):
    index, _ = random_index("kfac")
    with pytest.raises(ConfigError):
        write_sharded(index, tmp_path / "sharded", 0)
    write_sharded(index, tmp_path / "sharded", 2)
    (tmp_path / "sharded" / MANIFEST).unlink()
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        ShardedIndex(tmp_path / "sharded")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_placement_the_cluster_cannot_satisfy_is_refused():
    check_placement(2.0, 8, 0.25, "")  # fits exactly
    with pytest.raises(ConfigError, match=r"8 Ray actors x 1 CPUs need 8 CPUs, but the Ray cluster has 2"):
        check_placement(2.0, 8, 1.0, "")
