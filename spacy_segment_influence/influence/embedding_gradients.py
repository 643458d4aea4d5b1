"""Segment gradients beyond the head: the gradient of l_S with respect to the encoder's
hash-embedding tables, carried back from the CRF head through the encoder by thinc's
own backprop.

Why the embeddings: for a tok2vec encoder most of what a training sentence teaches about
an entity lives in the embedding rows of that entity's own strings (NORM, PREFIX,
SUFFIX, SHAPE), which only move when the string is seen; head-only gradients cannot see
it (issue 23's LDS figures). Yeh et al., "First is Better Than Last for Language Data
Influence" (NeurIPS 2022) make the same case for the first layer of language models.

thinc's `HashEmbed` maps an attribute id to 4 rows of its table E (hashes with 4 seeds)
and sums them, so dl/dE[row] = sum over (token, j) with hash_j(id_token) = row of
dl/d(out_token). A segment's gradient is therefore sparse: one vector per distinct
(table, attribute id) in the encoder's receptive field around the segment, and
    <G_a, G_b> = sum_{e in a, f in b, same table} m(e, f) <v_e, v_f>,
    m(e, f) = sum_row n_e(row) n_f(row)      (n_e(row) = #j with hash_j(e) = row)
which is 4 <v_e, v_f> for the same id (4 distinct rows) and counts hash collisions
between different ids exactly.
"""

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple, cast

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from thinc.api import Model

from ..exceptions import PipelineError
from ..ner.bridge import LabelledBatch, gold_tags, unannotated
from .segments import Segment, segment_gradients, segment_windows


@dataclass
class EmbeddingGradients:
    """Sparse embedding-table gradients of a batch of segments.

    table: int16 [R] which hash-embedding table each entry belongs to.
    ids: uint64 [R] the attribute id (spaCy's string hash) the entry's rows come from.
    rows: int64 [R, 4] the entry's rows, numbered across all tables (table offset added).
    vectors: float32 [R, width] dl/d(embedding output) summed over the entry's tokens.
    offsets: int64 [S + 1]; segment s owns entries offsets[s]:offsets[s + 1].
    n_rows: the rows of all tables together.
    """

    table: numpy.ndarray
    ids: numpy.ndarray
    rows: numpy.ndarray
    vectors: numpy.ndarray
    offsets: numpy.ndarray
    n_rows: int

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def segment_of_entry(self) -> numpy.ndarray:
        return numpy.repeat(numpy.arange(len(self)), numpy.diff(self.offsets))

    def squared_norms(self) -> numpy.ndarray:
        """<G_s, G_s> per segment, exact (collisions inside the segment included)."""
        matrix = sparse_matrix(self)
        return torch.sparse.sum(matrix * matrix, dim=1).to_dense().numpy()

    @staticmethod
    def concat(parts: Sequence["EmbeddingGradients"]) -> "EmbeddingGradients":
        starts = numpy.cumsum([0] + [p.table.size for p in parts[:-1]])
        return EmbeddingGradients(
            numpy.concatenate([p.table for p in parts]),
            numpy.concatenate([p.ids for p in parts]),
            numpy.concatenate([p.rows for p in parts]),
            numpy.concatenate([p.vectors for p in parts]),
            numpy.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts)]),
            parts[0].n_rows,
        )


def sparse_matrix(grads: EmbeddingGradients) -> torch.Tensor:
    """The gradients as a sparse float64 [S, n_rows * width] matrix over the tables' rows
    (an entry's 4 rows each get its vector; rows repeated in a segment add up, which is
    the multiplicity n_e(row) of the module doc)."""
    width = grads.vectors.shape[1]
    n_hashes = grads.rows.shape[1]
    segment = numpy.repeat(grads.segment_of_entry, n_hashes * width)
    column = numpy.repeat(grads.rows.reshape(-1), width) * width + numpy.tile(numpy.arange(width), grads.rows.size)
    values = torch.as_tensor(numpy.repeat(grads.vectors, n_hashes, axis=0).reshape(-1), dtype=torch.float64)
    index = torch.as_tensor(numpy.stack([segment, column]))
    with torch.sparse.check_sparse_tensor_invariants(False):
        matrix = torch.sparse_coo_tensor(index, values, (len(grads), grads.n_rows * width))
    return matrix.coalesce()


def dot(a: EmbeddingGradients, b: EmbeddingGradients, chunk: int = 64) -> numpy.ndarray:
    """[len(a), len(b)] inner products of the embedding gradients, exact (see module doc).
    `rows` must be global (table offset added)."""
    return products(sparse_matrix(b), a, chunk)


def products(matrix: torch.Tensor, grads: EmbeddingGradients, chunk: int = 64) -> numpy.ndarray:
    """[len(grads), S]: each segment of `grads` against the rows of the sparse [S, n_rows *
    width] `matrix`, sparse on both sides: a dense chunk would be chunk x n_rows x width,
    gigabytes for a transformer's vocabulary."""
    out = numpy.zeros((len(grads), matrix.shape[0]))
    with warnings.catch_warnings():  # torch's sparse x sparse product goes through CSR, "in beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for start in range(0, len(grads), chunk):
            part = sparse_matrix(slice_segments(grads, start, min(start + chunk, len(grads))))
            out[start : start + part.shape[0]] = torch.sparse.mm(matrix, part.t().coalesce()).to_dense().T.numpy()
    return out


def side_by_side(parts: Sequence[EmbeddingGradients]) -> EmbeddingGradients:
    """The same segments' gradients from models with the same tables (initialisations of
    one config) as one: model k's rows are offset by k * n_rows, so the dot product of two
    such gradients is the sum of the models' dot products, an ensemble in one search."""
    if len({len(p) for p in parts}) != 1 or len({p.n_rows for p in parts}) != 1:
        raise ValueError("side_by_side needs gradients of the same segments over the same tables")
    segment = numpy.concatenate([p.segment_of_entry for p in parts])
    order = numpy.argsort(segment, kind="stable")
    n_rows = parts[0].n_rows
    counts = numpy.bincount(segment, minlength=len(parts[0]))
    return EmbeddingGradients(
        numpy.concatenate([p.table for p in parts])[order],
        numpy.concatenate([p.ids for p in parts])[order],
        numpy.concatenate([p.rows + k * n_rows for k, p in enumerate(parts)])[order],
        numpy.concatenate([p.vectors for p in parts])[order],
        numpy.concatenate([[0], numpy.cumsum(counts)]).astype(numpy.int64),
        n_rows * len(parts),
    )


def summed_by(index: numpy.ndarray, values: numpy.ndarray, n: int) -> numpy.ndarray:
    """float32 [n, width]: the rows of `values` summed by `index`, through one bincount
    (numpy.add.at takes 100x longer on 2-d rows; torch's index_add_ spins threads)."""
    width = values.shape[1]
    flat = (numpy.asarray(index, dtype=numpy.int64)[:, None] * width + numpy.arange(width)).reshape(-1)
    summed = numpy.bincount(flat, numpy.asarray(values, dtype=numpy.float64).reshape(-1), minlength=n * width)
    return summed.reshape(n, width).astype(numpy.float32)


def slice_segments(grads: EmbeddingGradients, start: int, stop: int) -> EmbeddingGradients:
    """Segments start:stop, sharing memory with `grads`."""
    e0, e1 = grads.offsets[start], grads.offsets[stop]
    return EmbeddingGradients(
        grads.table[e0:e1],
        grads.ids[e0:e1],
        grads.rows[e0:e1],
        grads.vectors[e0:e1],
        grads.offsets[start : stop + 1] - e0,
        grads.n_rows,
    )


def hash_embed_tables(encoder: Model) -> List[Model]:
    """The encoder's `hashembed` nodes, in walk order (their position is the table id)."""
    tables = [node for node in encoder.walk() if node.name == "hashembed"]
    if not tables:
        raise PipelineError(
            f"The encoder {encoder.name!r} has no hash-embedding tables: embedding gradients need a "
            "tok2vec with spaCy's MultiHashEmbed or a spacy-transformers transformer shared through a listener"
        )
    return tables


@contextmanager
def _recording(encoder: Model, tables: Sequence[Model]) -> Iterator[List[Dict[str, Any]]]:
    """Swap each table's forward for one whose backprop records (ids, rows, dY) instead of
    accumulating into the table's gradient: the per-token gradients are what we keep.
    Dropout is off meanwhile: these are the gradients of the model as it predicts."""
    records: List[Dict[str, Any]] = [{} for _ in tables]
    saved = [node._func for node in tables]

    def recorder(index: int, forward):
        def recorded_forward(model: Model, ids, is_train: bool):
            output, _ = forward(model, ids, False)
            ids64 = model.ops.as_contig(ids, dtype="uint64")
            rows = model.ops.hash(ids64, model.attrs["seed"]) % model.get_dim("nV") if len(ids64) else None

            def backprop(d_output):
                records[index] = {"ids": numpy.array(ids64), "rows": numpy.array(rows), "d": numpy.array(d_output)}
                return model.ops.alloc1i(len(ids64))

            return output, backprop

        return recorded_forward

    dropout = [(node, node.attrs["dropout_rate"]) for node in encoder.walk() if "dropout_rate" in node.attrs]
    for i, node in enumerate(tables):
        node._func = recorder(i, saved[i])
    for node, _ in dropout:  # the trained model keeps its training dropout rate
        node.attrs["dropout_rate"] = 0.0
    try:
        yield records
    finally:
        for node, forward in zip(tables, saved):
            node._func = forward
        for node, rate in dropout:
            node.attrs["dropout_rate"] = rate


def upstream_encoder(nlp: Language, ner: Any) -> Model:
    """The thinc model that computes the head's features: the shared tok2vec component's
    model behind a listener, or the component's own inner tok2vec."""
    inner = ner.model.get_ref("tok2vec")
    for name in nlp.pipe_names:
        component = cast(Any, nlp.get_pipe(name))
        if inner in getattr(component, "listeners", []):
            return component.model
    return inner


def embedding_gradients(
    nlp: Language, ner: Any, docs: Sequence[Doc], segments: Sequence[Segment], batch_size: int = 256
) -> EmbeddingGradients:
    """dl_S/dE for each segment of `docs` (reference docs, labelled with their entities).
    One encoder pass serves twice: its output is the head's features, from which the
    segment's closed-form head gradient gives dl/dh over the segment's window
    (dl/dh_t = W^T r_t), and its backprop carries that to the tables. One doc copy per
    segment, so that thinc's batched backprop keeps segments apart."""
    encoder = upstream_encoder(nlp, ner)
    tables = hash_embed_tables(encoder)
    sizes = [node.get_dim("nV") for node in tables]
    table_offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64)
    parts = []
    for batch, copies, tags in segment_batches(ner, docs, segments, batch_size):
        with _recording(encoder, tables) as records:
            outputs, backprop = encoder.begin_update(copies)
            backprop(head_input_gradients(ner, outputs, tags, batch))
        parts.append(_collect(records, numpy.array([len(doc) for doc in copies]), table_offsets))
    return EmbeddingGradients.concat(parts)


def segment_batches(
    ner: Any, docs: Sequence[Doc], segments: Sequence[Segment], batch_size: int
) -> Iterator[Tuple[Sequence[Segment], List[Doc], List[List[int]]]]:
    """The segments `batch_size` at a time, each with its sentence unannotated (one Doc
    per sentence, shared by its segments) and the sentence's gold tags."""
    used = sorted({s.doc_index for s in segments})
    fresh = {i: unannotated(docs[i]) for i in used}
    tags = {i: gold_tags(ner, docs[i]) for i in used}
    for first in range(0, len(segments), batch_size):
        batch = segments[first : first + batch_size]
        yield batch, [fresh[s.doc_index] for s in batch], [tags[s.doc_index] for s in batch]


def head_input_gradients(ner: Any, outputs: List[Any], tags: List[List[int]], segments: Sequence[Segment]) -> List:
    """dl_S/dh of copy j's segment: W^T r_t over its window's rows, zero elsewhere, with
    r the head's segment gradient (`segment_gradients`) at the features `outputs`."""
    features = [numpy.asarray(ner.model.ops.to_numpy(x), dtype="float32") for x in outputs]
    batch = LabelledBatch(features, tags)
    local = [Segment(j, s.start, s.end) for j, s in enumerate(segments)]
    head = segment_gradients(ner, batch, local)
    weight = ner.head.weight.detach().numpy().astype("float32")
    d_outputs = []
    for j, (lo, hi) in enumerate(segment_windows(batch, local)):
        d = numpy.zeros(features[j].shape, dtype="float32")
        d[lo:hi] = head.r[head.offsets[j] : head.offsets[j + 1]].astype("float32") @ weight
        d_outputs.append(ner.model.ops.asarray2f(cast(Any, d)))
    return d_outputs


def _collect(records: List[Dict[str, Any]], lengths: numpy.ndarray, table_offsets: numpy.ndarray) -> EmbeddingGradients:
    """Group each copy's recorded per-token gradients by (table, id), dropping zeros."""
    token_segment = numpy.repeat(numpy.arange(lengths.size), lengths)
    tables, ids, rows, vectors, segs = [], [], [], [], []
    for t, rec in enumerate(records):
        d = rec["d"]
        keep = numpy.abs(d).max(axis=1) > 0
        seg, key = token_segment[keep], rec["ids"][keep]
        pairs = numpy.stack([seg.astype(numpy.uint64), key], axis=1)
        uniq, inverse = numpy.unique(pairs, axis=0, return_inverse=True)
        summed = summed_by(inverse.reshape(-1), d[keep], len(uniq))
        first = numpy.zeros(len(uniq), numpy.int64)
        first[inverse.reshape(-1)] = numpy.flatnonzero(keep)
        tables.append(numpy.full(len(uniq), t, numpy.int16))
        ids.append(uniq[:, 1])
        rows.append(rec["rows"][first].astype(numpy.int64) + table_offsets[t])
        vectors.append(summed)
        segs.append(uniq[:, 0].astype(numpy.int64))
    seg_all = numpy.concatenate(segs)
    order = numpy.argsort(seg_all, kind="stable")
    counts = numpy.bincount(seg_all, minlength=lengths.size)
    return EmbeddingGradients(
        numpy.concatenate(tables)[order],
        numpy.concatenate(ids)[order],
        numpy.concatenate(rows)[order],
        numpy.concatenate(vectors)[order],
        numpy.concatenate([[0], numpy.cumsum(counts)]).astype(numpy.int64),
        int(table_offsets[-1]),
    )
