"""Influence through the encoder's embeddings, at the start of training.

Two choices here are measured, not assumed (BENCHMARKS.md, "LDS", issue 23):
- Where the gradients are taken. At the trained weights a training sentence the model
  has fit has a near-zero gradient although it is why the model predicts what it does
  (the influence function's optimum assumption fails for the encoder). TracIn (Pruthi et
  al. 2020) sums gradient products over training checkpoints; the first checkpoint, the
  pipeline as its own config initialises it (`initial_pipeline`, deterministic in the
  config's seed), keeps most of that signal at no training cost.
- How rows are weighted. Adam gives each embedding row a step of about the learning rate
  whatever its gradient's size, so a row that few sentences touch moves as far per
  sentence as a frequent one moves in total. Dividing each row's product by the number of
  training segments that touch it (its "hits") models that; the exact diagonal Adam
  preconditioner measured slightly worse.
"""

from itertools import zip_longest
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import numpy
import srsly
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from thinc.api import Config

from ..exceptions import ConfigError, IndexFormatError, PipelineError
from ..ner import bridge
from . import embedding_gradients as eg
from . import wordpiece_gradients as wp
from .embedding_index import EmbeddingIndex
from .index import QueryResult
from .segments import Segment

WEIGHTINGS = ("hits", "none")


def initial_pipeline(config: Config, train_path: Path, seed: Optional[int] = None) -> Language:
    """The pipeline as `spacy train` initialises it from `config` before its first step
    (labels and vocabulary from `train_path`; `seed` defaults to the config's)."""
    from spacy.training.initialize import init_nlp

    overrides: Dict[str, Any] = {"paths.train": str(train_path), "paths.dev": str(train_path)}
    if seed is not None:
        overrides["training.seed"] = seed
    config = Config(config).copy()
    return init_nlp(Config().from_str(config.to_str(), overrides=overrides), use_gpu=-1)


def require_embedding_tables(nlp: Language, ner_name: str) -> None:
    """PipelineError unless the crf_ner's encoder has embedding tables to differentiate:
    a transformer's word embeddings or a tok2vec's hash-embedding tables."""
    ner = bridge.crf_component(nlp, ner_name)
    if wp.listened_transformer(nlp, ner) is None:
        eg.hash_embed_tables(eg.upstream_encoder(nlp, ner))


def has_hash_embeddings(nlp: Language, ner_name: str) -> bool:
    """Whether `ner_name` is a crf_ner whose encoder is a tok2vec with hash tables: trained
    from scratch, where `embeddings` predicts retraining best (LDS .33 against the head's
    .11; for a pretrained transformer the head leads, .28 against .11: README, LDS)."""
    try:
        ner = bridge.crf_component(nlp, ner_name)
        return wp.listened_transformer(nlp, ner) is None and bool(eg.hash_embed_tables(eg.upstream_encoder(nlp, ner)))
    except PipelineError:
        return False


def embedding_gradients_of(
    nlp: Language, ner_name: str, docs: Sequence[Doc], segments: Sequence[Segment]
) -> eg.EmbeddingGradients:
    """Each segment's gradient w.r.t. the encoder's embedding tables (a tok2vec's hash
    tables or a transformer's word embeddings), its sentence labelled with the docs' entities."""
    ner = bridge.crf_component(nlp, ner_name)
    through = wp.wordpiece_gradients if wp.listened_transformer(nlp, ner) is not None else eg.embedding_gradients
    return through(nlp, ner, docs, segments)


def embedding_scores(
    queries: eg.EmbeddingGradients, train: eg.EmbeddingGradients, weighting: str = "hits", chunk: int = 32
) -> numpy.ndarray:
    """[Q, S] sum over embedding rows of g_query[row] . g_train[row] / w(row), with w the
    number of training segments touching the row ("hits") or 1 ("none"); positive: the
    training segment pushes the rows the way that lowers the query's loss."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    matrix = eg.sparse_matrix(train)
    if weighting == "hits":
        width = train.vectors.shape[1]
        index, values = matrix.indices(), matrix.values()
        rows = index[1] // width
        hits = torch.zeros(train.n_rows, dtype=values.dtype).index_add_(0, rows, (values != 0).to(values.dtype))
        hits = (hits / width).clamp(min=1.0)
        matrix = torch.sparse_coo_tensor(index, values / hits[rows], matrix.shape).coalesce()
    return eg.products(matrix, queries, chunk)


def check_inits(inits: Any, where: str) -> None:
    """ConfigError naming `where` unless `inits` (an ensemble's size) is an integer >= 1."""
    if not isinstance(inits, int) or isinstance(inits, bool) or inits < 1:
        raise ConfigError(f"{where}: inits must be an integer of at least 1, got {inits!r}")


def initial_pipelines(config: Config, train_path: Path, n_inits: int) -> List[Language]:
    """`n_inits` initialisations of the pipeline: the config's own seed (the pipeline's
    actual start) and the next ones. An ensemble over them costs one gradient pass each and
    no training; TRAK averages over models for the same reason (one model's gradients carry
    its random initialisation's noise)."""
    check_inits(n_inits, "initial_pipelines")
    base = int(Config(config).interpolate()["training"]["seed"])
    return [initial_pipeline(config, train_path, seed=base + offset) for offset in range(n_inits)]


def ensemble_gradients(
    initials: Sequence[Language], ner_name: str, docs: Sequence[Doc], segments: Sequence[Segment]
) -> eg.EmbeddingGradients:
    """The segments' embedding gradients at every initialisation, side by side: their dot
    products (and `embedding_scores`) are sums over the initialisations."""
    return eg.side_by_side([embedding_gradients_of(nlp, ner_name, docs, segments) for nlp in initials])


def initial_embedding_scores(
    config: Config,
    train_path: Path,
    ner_name: str,
    train: Tuple[Sequence[Doc], Sequence[Segment]],
    test: Tuple[Sequence[Doc], Sequence[Segment]],
    n_inits: int = 1,
) -> numpy.ndarray:
    """[T, S] `embedding_scores` of the test segments against the training segments,
    summed over `n_inits` initialisations (`initial_pipelines`)."""
    initials = initial_pipelines(config, train_path, n_inits)
    return embedding_scores(
        ensemble_gradients(initials, ner_name, *test), ensemble_gradients(initials, ner_name, *train)
    )


class EncoderExplainer:
    """What `segment_influence` with layers = "embeddings" keeps: the pipeline at its
    initialisations (config and bytes each) and the training segments' embedding-row
    gradients there, side by side; it scores queries labelled in the trained pipeline's docs."""

    def __init__(self, initials: Sequence[Language], ner_name: str, index: EmbeddingIndex):
        self.initials = list(initials)
        self.ner_name = ner_name
        self.index = index

    @classmethod
    def build(
        cls,
        config: Config,
        train_path: Path,
        ner_name: str,
        docs: Sequence[Doc],
        segments: Sequence[Segment],
        n_inits: int = 4,
    ) -> "EncoderExplainer":
        initials = initial_pipelines(config, train_path, n_inits)
        require_embedding_tables(initials[0], ner_name)
        return cls(initials, ner_name, EmbeddingIndex(ensemble_gradients(initials, ner_name, docs, segments)))

    def query_gradients(
        self, docs: Sequence[Doc], labellings: Sequence[Sequence[Span]], segments: Sequence[Segment]
    ) -> eg.EmbeddingGradients:
        """The gradients of segments of `docs`, each doc labelled with `labellings[i]`, at
        every initialisation side by side: what `scores` and `top_k` search the index with."""
        labelled = [bridge.labelled(doc, entities) for doc, entities in zip(docs, labellings)]
        return ensemble_gradients(self.initials, self.ner_name, labelled, segments)

    def scores(
        self, docs: Sequence[Doc], labellings: Sequence[Sequence[Span]], segments: Sequence[Segment]
    ) -> numpy.ndarray:
        """[Q, S] scores of the segments (as `query_gradients`) against the index."""
        return self.index.scores(self.query_gradients(docs, labellings, segments))

    def top_k(
        self, docs: Sequence[Doc], labellings: Sequence[Sequence[Span]], segments: Sequence[Segment], k: int
    ) -> List[QueryResult]:
        """The k most supporting and opposing training segments of each segment, exactly
        those of `scores` (`embedding_index.top_k_of`), reading only the index blocks needed."""
        return self.index.top_k(self.query_gradients(docs, labellings, segments), k)

    def to_bytes(self) -> bytes:
        """The first initialisation whole, the others by the components that differ from
        it (a pretrained transformer is the same at every seed: stored once)."""
        first = self.initials[0]
        own = [
            {
                name: cast(Any, nlp.get_pipe(name)).to_bytes()
                for name in nlp.pipe_names
                if not _same_weights(nlp.get_pipe(name), first.get_pipe(name))
            }
            for nlp in self.initials[1:]
        ]
        return srsly.msgpack_dumps(
            {
                "configs": [nlp.config.to_str() for nlp in self.initials],
                "first": first.to_bytes(),
                "own_components": own,
                "ner": self.ner_name,
                "index": self.index.to_bytes(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "EncoderExplainer":
        from spacy.util import load_model_from_config

        msg = srsly.msgpack_loads(data)
        if "first" not in msg:
            raise IndexFormatError("the embeddings index was written by an older version; re-index")
        initials = []
        for config, own in zip(msg["configs"], [{}] + msg["own_components"]):
            nlp = load_model_from_config(Config().from_str(config), auto_fill=True).from_bytes(msg["first"])
            for name, component in own.items():
                cast(Any, nlp.get_pipe(name)).from_bytes(component)
            initials.append(nlp)
        return cls(initials, msg["ner"], EmbeddingIndex.from_bytes(msg["index"]))


def _weights(component: Any) -> Iterator[numpy.ndarray]:
    """A component's weights: its thinc parameters and its torch modules' state."""
    for node in component.model.walk():
        yield from (node.get_param(name) for name in node.param_names if node.has_param(name))
        for shim in node.shims:
            module = getattr(shim, "_model", None)
            if isinstance(module, torch.nn.Module):
                yield from (tensor.detach().cpu().numpy() for tensor in module.state_dict().values())


def _same_weights(a: Any, b: Any) -> bool:
    """Whether two initialisations of one component (one config, its seed aside) have the
    same weights; their bytes are no test (a tokenizer records its temporary path)."""
    if not hasattr(a, "model"):
        return True
    pairs = zip_longest(_weights(a), _weights(b))
    return all(x is not None and y is not None and numpy.array_equal(x, y) for x, y in pairs)
