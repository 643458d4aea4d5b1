"""Index builds on a Ray cluster (`pip install spacy-segment-influence[ray]`).

The corpus is cut into shards of consecutive docs; Ray actors (`ShardWorkers`) each load
the pipeline once and turn shards into `index_build.IndexShard`s (the encoder pass, the
slow part); the driver merges them in corpus order and fits the index, so the result is
the index a single process builds. Actors that die are restarted and their shard
retried by Ray.
"""

import logging
import math
import os
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.vocab import Vocab
from tqdm import tqdm

from ..exceptions import ConfigError, MissingExtraError
from ..influence.index_build import IndexShard, build_shard

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
    # A forked worker would otherwise warn that the encoder's tokenizer ran threaded before the fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # ERROR: Ray's INFO lines and its token-authentication notice stay out of the terminal, errors do not
    ray.init(
        address=None if address == "local" else address,
        runtime_env=runtime_env,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def check_placement(cluster_cpus: float, n_actors: int, cpus_per_actor: float, remedy: str) -> None:
    """Refuse actors the cluster can never all place: Ray would start some and leave the
    caller waiting for the others forever, silently."""
    needed = n_actors * cpus_per_actor
    if needed > cluster_cpus + 1e-9:
        raise ConfigError(
            f"{n_actors} Ray actors x {cpus_per_actor:g} CPUs need {needed:g} CPUs, but the Ray cluster has "
            f"{cluster_cpus:g}: the actors that cannot start would be waited for forever. {remedy}"
        )


# words, trailing spaces, entity tags ("B-ORG", "I-ORG", "O"; None = not annotated), user_data
PortableDoc = Tuple[List[str], List[bool], List[Optional[str]], Dict[Any, Any]]


def portable(doc: Doc) -> PortableDoc:
    """What a worker needs of a training doc, as plain lists: about 10x cheaper to ship
    than a DocBin round trip (CoNLL train: 0.15 s to pack and 0.45 s to rebuild, against
    3.4 s to serialise and 3.3 s to read back, as long as indexing it), and packing runs
    on the driver, alone."""
    tags = [f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else (t.ent_iob_ or None) for t in doc]
    return [t.text for t in doc], [bool(t.whitespace_) for t in doc], tags, dict(doc.user_data)


def rebuilt(vocab: Vocab, doc: PortableDoc) -> Doc:
    words, spaces, tags, user_data = doc
    out = Doc(vocab, words=words, spaces=spaces, ents=tags)  # type: ignore[arg-type]  # None = missing, as documented
    out.user_data.update(user_data)
    return out


class ShardWorker:
    """A Ray actor's state: the pipeline, loaded once, and the index settings."""

    def __init__(self, config: Dict[str, Any], pipeline: bytes, settings: Dict[str, Any]):
        self.nlp = spacy.util.load_model_from_config(spacy.util.Config(config))
        self.nlp.from_bytes(pipeline)
        self.settings = settings

    def ready(self) -> bool:
        return True

    def shard(self, docs: List[PortableDoc], first: int) -> Tuple[int, int, IndexShard]:
        """The shard of `docs` (see `portable`), the corpus' docs from `first` on."""
        batch = [rebuilt(self.nlp.vocab, doc) for doc in docs]
        return first, len(batch), build_shard(self.nlp, self.settings, batch, first)


class ShardWorkers:
    """`n` Ray actors, each with the pipeline loaded, ready to index corpora (several in
    a row, without loading the pipeline again). Connect to Ray first (`ray_cluster`)."""

    def __init__(self, nlp: Language, settings: Dict[str, Any], n_workers: Optional[int] = None):
        """`n_workers`: default one per CPU of the cluster. Returns once every actor has
        loaded the pipeline."""
        if n_workers is not None and n_workers < 1:
            raise ConfigError(f"n_workers must be >= 1, got {n_workers}")
        self._ray = import_ray()
        self.batch_size: int = settings["batch_size"]
        cluster_cpus = self._ray.cluster_resources().get("CPU", 1.0)
        n = n_workers or max(1, int(cluster_cpus))
        check_placement(cluster_cpus, n, 1.0, f"Use at most {int(cluster_cpus)} workers (ray_workers, --ray-workers)")
        # kept referenced: a restarted actor reads its constructor's arguments again
        self._pipeline = self._ray.put(nlp.to_bytes())
        actor = self._ray.remote(num_cpus=1, max_restarts=_RETRIES, max_task_retries=_RETRIES)(ShardWorker)
        self._actors = [actor.remote(nlp.config, self._pipeline, settings) for _ in range(n)]
        self._ray.get([a.ready.remote() for a in self._actors])

    def __enter__(self) -> "ShardWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def build(self, docs: Sequence[Doc], shard_docs: Optional[int] = None, show_progress: bool = True) -> IndexShard:
        """The merged shard of `docs`, as `index_build.build_shard` computes it in one
        process, from shards of `shard_docs` docs (default: about 4 per worker)."""
        from ray.util import ActorPool

        size = shard_docs or max(self.batch_size, math.ceil(len(docs) / (len(self._actors) * _SHARDS_PER_WORKER)))
        if size < 1:
            raise ConfigError(f"shard_docs must be >= 1, got {size}")
        # lazily: the actors start on the first shards while the driver packs the rest
        jobs = (([portable(doc) for doc in docs[first : first + size]], first) for first in range(0, len(docs), size))
        results: List[Tuple[int, IndexShard]] = []
        bar = tqdm(total=len(docs), desc="Indexing training segments (Ray)", unit="doc", disable=not show_progress)
        with bar:
            pool = ActorPool(self._actors)
            # Ray's stub says list; map_unordered iterates, so the generator keeps the packing lazy
            for first, n_docs, shard in pool.map_unordered(lambda a, job: a.shard.remote(*job), jobs):  # type: ignore[arg-type]
                results.append((first, shard))
                bar.update(n_docs)
        return IndexShard.merge([shard for _, shard in sorted(results, key=lambda item: item[0])])

    def close(self) -> None:
        """Stop the actors now (not when their handles are collected), freeing their CPUs."""
        for handle in self._actors:
            self._ray.kill(handle)
        self._actors = []


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
    process), computed on the Ray cluster at `address` by `ShardWorkers`. `runtime_env`
    is passed to `ray.init` when a cluster is started or joined here."""
    with ray_cluster(address, runtime_env), ShardWorkers(nlp, settings, n_workers) as workers:
        return workers.build(docs, shard_docs, show_progress)
