"""Index builds on a Ray cluster (`pip install spacy-segment-influence[ray]`).

The corpus is cut into shards of consecutive docs; Ray actors each load the pipeline
once and turn shards into `index_build.IndexShard`s (the encoder pass, the slow part);
the driver merges them in corpus order and fits the index, so the result is the index
a single process builds. Actors that die are restarted and their shard retried by Ray.
"""

import math
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from tqdm import tqdm

from .exceptions import ConfigError, MissingExtraError
from .index_build import IndexShard, build_shard

# Shards per worker: enough for the progress bar to move and for a fast worker to pick
# up a slow one's slack, few enough that per-shard overhead (a DocBin, one result) is noise.
_SHARDS_PER_WORKER = 4
# Restarts of a dead actor, and retries of the shard it was computing.
_RETRIES = 3


def import_ray() -> ModuleType:
    """The `ray` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise MissingExtraError("Ray is not installed: pip install 'spacy-segment-influence[ray]'") from err
    return ray


@contextmanager
def ray_cluster(address: str, runtime_env: Optional[Dict[str, Any]] = None) -> Iterator[ModuleType]:
    """Ray, connected to the cluster at `address` ("local" starts one on this machine and
    stops it afterwards). An already connected session is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=None if address == "local" else address, runtime_env=runtime_env, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class ShardWorker:
    """A Ray actor's state: the pipeline, loaded once, and the index settings."""

    def __init__(self, config: Dict[str, Any], pipeline: bytes, settings: Dict[str, Any]):
        self.nlp = spacy.util.load_model_from_config(spacy.util.Config(config))
        self.nlp.from_bytes(pipeline)
        self.settings = settings

    def shard(self, docs: bytes, first: int) -> Tuple[int, int, IndexShard]:
        """The shard of the DocBin `docs`, the corpus' docs from `first` on."""
        batch = list(DocBin().from_bytes(docs).get_docs(self.nlp.vocab))
        return first, len(batch), build_shard(self.nlp, self.settings, batch, first)


def build_shards(
    nlp: Language,
    settings: Dict[str, Any],
    docs: Sequence[Doc],
    address: str = "local",
    n_workers: Optional[int] = None,
    shard_docs: Optional[int] = None,
    show_progress: bool = True,
    runtime_env: Optional[Dict[str, Any]] = None,
) -> IndexShard:
    """The merged shard of `docs` (as `index_build.build_shard` computes it in one
    process), computed by `n_workers` Ray actors (default: one per CPU of the cluster) in
    shards of `shard_docs` docs. `runtime_env` is passed to `ray.init` when a cluster is
    started or joined here."""
    if n_workers is not None and n_workers < 1:
        raise ConfigError(f"n_workers must be >= 1, got {n_workers}")
    with ray_cluster(address, runtime_env) as ray:
        from ray.util import ActorPool

        workers = n_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = shard_docs or max(settings["batch_size"], math.ceil(len(docs) / (workers * _SHARDS_PER_WORKER)))
        if size < 1:
            raise ConfigError(f"shard_docs must be >= 1, got {size}")
        pipeline = ray.put(nlp.to_bytes())
        actor = ray.remote(num_cpus=1, max_restarts=_RETRIES, max_task_retries=_RETRIES)(ShardWorker)
        actors = [actor.remote(nlp.config, pipeline, settings) for _ in range(workers)]
        pool = ActorPool(actors)
        shards = [
            (DocBin(docs=docs[first : first + size], store_user_data=True).to_bytes(), first)
            for first in range(0, len(docs), size)
        ]
        results: List[Tuple[int, IndexShard]] = []
        bar = tqdm(total=len(docs), desc="Indexing training segments (Ray)", unit="doc", disable=not show_progress)
        try:
            with bar:
                for first, n_docs, shard in pool.map_unordered(lambda a, job: a.shard.remote(*job), shards):
                    results.append((first, shard))
                    bar.update(n_docs)
        finally:  # free the workers' CPUs now, not when the handles are collected
            for handle in actors:
                ray.kill(handle)
    return IndexShard.merge([shard for _, shard in sorted(results, key=lambda item: item[0])])
