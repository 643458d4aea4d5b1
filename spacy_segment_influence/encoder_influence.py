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

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from thinc.api import Config

from . import bridge
from . import embedding_gradients as eg
from .exceptions import ConfigError
from .segments import Segment, labelled_batch, segment_gradients, segment_windows

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


def embedding_gradients_of(
    nlp: Language, ner_name: str, docs: Sequence[Doc], segments: Sequence[Segment]
) -> eg.EmbeddingGradients:
    """Each segment's gradient w.r.t. the encoder's hash-embedding tables, its sentence
    labelled with the docs' entities."""
    ner = bridge.crf_component(nlp, ner_name)
    batch = labelled_batch(nlp, ner_name, docs)
    head = segment_gradients(ner, batch, segments)
    encoded = [bridge.unannotated(doc) for doc in docs]
    return eg.embedding_gradients(
        nlp, ner, encoded, head, segment_windows(batch, segments), [s.doc_index for s in segments]
    )


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
    out = numpy.zeros((len(queries), len(train)))
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        dense = eg.sparse_matrix(eg.slice_segments(queries, start, stop)).to_dense()
        out[start:stop] = torch.sparse.mm(matrix, dense.T).T.numpy()
    return out


def initial_embedding_scores(
    config: Config,
    train_path: Path,
    ner_name: str,
    train: Tuple[Sequence[Doc], Sequence[Segment]],
    test: Tuple[Sequence[Doc], Sequence[Segment]],
    n_inits: int = 1,
) -> numpy.ndarray:
    """[T, S] `embedding_scores` of the test segments against the training segments at the
    initial weights, summed over `n_inits` initialisations: the config's own seed (the
    pipeline's actual start) and the next ones, an ensemble that costs one gradient pass
    each and no training (TRAK averages over models for the same reason: one model's
    gradients carry its random initialisation's noise)."""
    if n_inits < 1:
        raise ConfigError(f"--inits must be at least 1, got {n_inits}")
    base = int(Config(config).interpolate()["training"]["seed"])
    total = numpy.zeros((len(test[1]), len(train[1])))
    for offset in range(n_inits):
        start = initial_pipeline(config, train_path, seed=base + offset)
        stored = embedding_gradients_of(start, ner_name, *train)
        queries = embedding_gradients_of(start, ner_name, *test)
        total += embedding_scores(queries, stored)
    return total
