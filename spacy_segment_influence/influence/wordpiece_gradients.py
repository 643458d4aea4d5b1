"""Segment gradients beyond the head for transformer encoders: the gradient of l_S with
respect to the transformer's word-embedding matrix, carried back from the CRF head
through spacy-transformers' pooling and the Hugging Face model by torch autograd.

The word-embedding matrix is the transformer's counterpart of tok2vec's hash tables: a
row per wordpiece id, moved in training only by the sentences that contain that
wordpiece, so a segment's gradient is sparse (one vector per distinct wordpiece id in
its sentence) and fits `EmbeddingGradients` with one row per entry. Yeh et al., "First
is Better Than Last for Language Data Influence" (NeurIPS 2022) argue for this layer.

Only the activations' gradients are computed (the weights are frozen meanwhile), and
the model runs without dropout: these are the gradients of the model as it predicts.
"""

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, cast

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from thinc.api import Model

from ..exceptions import PipelineError
from .embedding_gradients import EmbeddingGradients, head_input_gradients, segment_batches
from .segments import Segment


def listened_transformer(nlp: Language, ner: Any) -> Optional[Any]:
    """The `transformer` component whose listener feeds the head, or None (a tok2vec)."""
    inner = ner.model.get_ref("tok2vec")
    if not any(node.name == "trfs2arrays" for node in inner.walk()):
        return None
    nodes = list(inner.walk())
    for name in nlp.pipe_names:
        component = cast(Any, nlp.get_pipe(name))
        if any(listener in nodes for listener in getattr(component, "listeners", [])):
            return component
    raise PipelineError(
        "The crf_ner's transformer is its own (no shared `transformer` component): embedding "
        "gradients support a transformer shared through spacy-transformers' listener"
    )


def _torch_transformer(model: Model) -> Any:
    """The Hugging Face module inside a spacy-transformers model (its shim's)."""
    for node in model.walk():
        for shim in node.shims:
            module = getattr(shim, "_model", None)
            if isinstance(module, torch.nn.Module) and hasattr(module, "get_input_embeddings"):
                return module
    raise PipelineError(f"No Hugging Face model with input embeddings inside {model.name!r}")


@contextmanager
def _recording(module: Any) -> Iterator[List[Tuple[numpy.ndarray, numpy.ndarray]]]:
    """Record (input ids, d word embeddings) of every forward/backward through `module`,
    with its weights frozen and in eval mode (thinc's shim calls .train(): held off)."""
    records: List[Tuple[numpy.ndarray, numpy.ndarray]] = []
    ids: List[numpy.ndarray] = []

    def detach_output(_module, inputs, output):
        ids.append(inputs[0].detach().cpu().numpy())
        leaf = output.detach().requires_grad_(True)
        found = ids[-1]
        leaf.register_hook(lambda grad: records.append((found, grad.detach().cpu().numpy())))
        return leaf

    was_training = module.training
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    module.eval()
    module.train = lambda mode=True: module
    handle = module.get_input_embeddings().register_forward_hook(detach_output)
    try:
        yield records
    finally:
        handle.remove()
        del module.train
        module.train(was_training)
        for p, flag in frozen:
            p.requires_grad_(flag)


def _listener_encode(transformer: Any, ner: Any, docs: Sequence[Doc]) -> Tuple[List[Any], Callable, Any]:
    """The head's features of `docs` through the transformer and the listener's pooling,
    a backprop from the features' gradients, and the transformer's output batch."""
    pooling = next(node for node in ner.model.get_ref("tok2vec").walk() if node.name == "trfs2arrays")
    full, backprop_full = transformer.model.begin_update(list(docs))
    arrays, backprop_pooling = pooling.begin_update(full.doc_data)

    def backprop(d_arrays: List[Any]) -> None:
        d_datas = backprop_pooling(d_arrays)
        backprop_full(full.unsplit_by_doc([list(d.tensors) for d in d_datas]))

    return arrays, backprop, full


def wordpiece_gradients(
    nlp: Language, ner: Any, docs: Sequence[Doc], segments: Sequence[Segment], batch_size: int = 32
) -> EmbeddingGradients:
    """dl_S/dE for each segment of `docs` (reference docs, labelled with their entities), E
    the transformer's word-embedding matrix. As `embedding_gradients`: one pass gives the
    head's features and carries dl/dh back, through pooling and the transformer; one doc
    copy per segment (spacy-transformers splits its batch by Doc object: real copies)."""
    transformer = listened_transformer(nlp, ner)
    if transformer is None:
        raise PipelineError("The crf_ner's encoder is not a spacy-transformers listener")
    module = _torch_transformer(transformer.model)
    n_rows = int(module.get_input_embeddings().num_embeddings)
    parts = []
    for batch, shared, tags in segment_batches(ner, docs, segments, batch_size):
        with _recording(module) as records:
            arrays, backprop, full = _listener_encode(transformer, ner, [doc.copy() for doc in shared])
            backprop(head_input_gradients(ner, arrays, tags, batch))
        (ids, grad), *_ = records
        copy_of_row = numpy.repeat(numpy.arange(len(batch)), [len(spans) for spans in full.spans])
        parts.append(_collect(ids, grad, copy_of_row, len(batch), n_rows))
    return EmbeddingGradients.concat(parts)


def _collect(
    ids: numpy.ndarray, grad: numpy.ndarray, copy_of_row: numpy.ndarray, n_copies: int, n_rows: int
) -> EmbeddingGradients:
    """Sum each copy's wordpiece gradients by wordpiece id, dropping zeros (padding)."""
    width = grad.shape[-1]
    flat_grad = grad.reshape(-1, width)
    copy = numpy.repeat(copy_of_row, ids.shape[1])
    keep = numpy.abs(flat_grad).max(axis=1) > 0
    pairs = numpy.stack([copy[keep].astype(numpy.int64), ids.reshape(-1)[keep].astype(numpy.int64)], axis=1)
    unique, inverse = numpy.unique(pairs, axis=0, return_inverse=True)
    summed = numpy.zeros((len(unique), width), "float32")
    numpy.add.at(summed, inverse.reshape(-1), flat_grad[keep])
    counts = numpy.bincount(unique[:, 0], minlength=n_copies)
    return EmbeddingGradients(
        numpy.zeros(len(unique), numpy.int16),
        unique[:, 1].astype(numpy.uint64),
        unique[:, 1:2].copy(),
        summed,
        numpy.concatenate([[0], numpy.cumsum(counts)]).astype(numpy.int64),
        n_rows,
    )
