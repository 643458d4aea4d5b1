"""An index split into shards of consecutive segments, for corpora whose index outgrows
one machine's memory or one query's time.

On disk: one `SegmentIndex` directory per shard and a `manifest.json` naming them with
their first segment. `ShardedIndex` searches every shard (in this process, or on Ray
actors that each memory-map one shard) and merges the shards' top-k: the k best scores
of the whole index are among the k best of some shard, so the merge is exact.
"""

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from ..exceptions import ConfigError
from ..influence.gradients import FactoredGradients
from ..influence.index import QueryResult, SegmentIndex
from ..storage.atomic import staged_dir
from ..storage.manifest import read_manifest, write_manifest


def write_sharded(index: SegmentIndex, path: Union[str, Path], n_shards: int) -> None:
    """Write `index` as `n_shards` shards of about equal segment counts and a manifest at
    `path`, atomically (all of it appears at once, or nothing does)."""
    if not 1 <= n_shards <= max(1, len(index)):
        raise ConfigError(f"n_shards must be between 1 and the {len(index)} segments, got {n_shards}")
    bounds = [len(index) * i // n_shards for i in range(n_shards + 1)]
    with staged_dir(path) as tmp:
        shards = []
        for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
            name = f"shard-{number:05d}"
            index.select(start, stop).to_disk(tmp / name)
            shards.append({"path": name, "first": start, "n_segments": stop - start})
        write_manifest(tmp, len(index), shards)


class ShardSearcher:
    """One shard, memory-mapped: a Ray actor's state in a distributed search."""

    def __init__(self, path: str):
        self.index = SegmentIndex.from_disk(path)

    def top_k(self, queries: FactoredGradients, k: int, batch_size: int) -> List[QueryResult]:
        return self.index.top_k(queries, k=k, batch_size=batch_size)

    def records(self, ids: Sequence[int]) -> List[dict]:
        return [self.index.metadata[i] for i in ids]


class ShardedIndex:
    """A sharded index, searched shard by shard; hits carry global segment ids."""

    def __init__(self, path: Union[str, Path], on_ray: bool = False, cpus_per_shard: float = 1.0):
        """`on_ray`: search on one Ray actor per shard, each reserving `cpus_per_shard`
        CPUs (connect first, e.g. with `distributed.ray_cluster`; the shards' directory
        must be readable where the actors run); else every shard is memory-mapped in
        this process."""
        path = Path(path)
        manifest = read_manifest(path)
        self.firsts = [shard["first"] for shard in manifest["shards"]]
        self.n_segments: int = manifest["n_segments"]
        paths = [str((path / shard["path"]).resolve()) for shard in manifest["shards"]]
        self._ray: Optional[Any] = None
        if on_ray:
            from .distributed import check_placement, import_ray

            self._ray = import_ray()
            cluster_cpus = self._ray.cluster_resources().get("CPU", 0.0)
            check_placement(
                cluster_cpus,
                len(paths),
                cpus_per_shard,
                f"Pass cpus_per_shard={cluster_cpus / len(paths):.3g} (or less), or write fewer shards",
            )
            actor = self._ray.remote(num_cpus=cpus_per_shard)(ShardSearcher)
            self._shards: List[Any] = [actor.remote(p) for p in paths]
        else:
            self._shards = [ShardSearcher(p) for p in paths]

    def __len__(self) -> int:
        return self.n_segments

    def top_k(self, queries: FactoredGradients, k: int = 10, batch_size: int = 256) -> List[QueryResult]:
        """Exact k most supporting and opposing segments per query, as `SegmentIndex.top_k`
        of the unsharded index returns them."""
        if self._ray is None:
            per_shard = [shard.top_k(queries, k, batch_size) for shard in self._shards]
        else:
            shared = self._ray.put(queries)
            per_shard = self._ray.get([shard.top_k.remote(shared, k, batch_size) for shard in self._shards])
        return merge_top_k(per_shard, self.firsts, k)

    def records(self, ids: Sequence[int]) -> List[dict]:
        """The stored metadata of segments by global id."""
        located = [self._locate(i) for i in ids]
        wanted: List[List[int]] = [[] for _ in self._shards]
        for shard, local in located:
            wanted[shard].append(local)
        asked = [(s, ids_) for s, ids_ in enumerate(wanted) if ids_]
        if self._ray is None:
            answers = [self._shards[s].records(ids_) for s, ids_ in asked]
        else:
            answers = self._ray.get([self._shards[s].records.remote(ids_) for s, ids_ in asked])
        found = {(s, i): record for (s, ids_), records in zip(asked, answers) for i, record in zip(ids_, records)}
        return [found[key] for key in located]

    def close(self) -> None:
        """Stop the shard actors (a no-op in process)."""
        if self._ray is not None:
            for shard in self._shards:
                self._ray.kill(shard)
            self._shards = []

    def _locate(self, segment_id: int) -> Tuple[int, int]:
        if not 0 <= segment_id < self.n_segments:
            raise IndexError(f"segment {segment_id} of {self.n_segments}")
        shard = max(i for i, first in enumerate(self.firsts) if first <= segment_id)
        return shard, segment_id - self.firsts[shard]


def merge_top_k(per_shard: Sequence[List[QueryResult]], firsts: Sequence[int], k: int) -> List[QueryResult]:
    """Per query, the k best supporters and opposers among the shards' (ids made global
    by adding each shard's first segment)."""
    merged = []
    for results in zip(*per_shard):
        supporters = [(first + i, s) for first, r in zip(firsts, results) for i, s in r.supporters]
        opposers = [(first + i, s) for first, r in zip(firsts, results) for i, s in r.opposers]
        merged.append(
            QueryResult(
                supporters=sorted(supporters, key=lambda hit: -hit[1])[:k],
                opposers=sorted(opposers, key=lambda hit: hit[1])[:k],
            )
        )
    return merged
