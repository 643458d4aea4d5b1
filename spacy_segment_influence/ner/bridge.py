"""The thinc -> torch bridge: the only module that reaches into the pipeline's internals.

It reads each token's features exactly as the `crf_ner` head saw them (the listener's
predict path), the tag ids of a labelling, a digest of the weights, and the torch head's
parameters as one flat vector in the `layout.HeadLayout` order (and back), which the
segment gradients, Hessians and validation differentiate.
"""

import hashlib
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Sequence, cast

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import biluo_to_iob, offsets_to_biluo_tags

from ..exceptions import DataError, PipelineError
from . import crf
from .layout import HeadLayout
from .tagger import CRFEntityRecognizer


def crf_component(nlp: Language, ner_name: str) -> CRFEntityRecognizer:
    """The pipeline's `crf_ner` component `ner_name`, or a clear error."""
    if ner_name not in nlp.pipe_names:
        raise PipelineError(f"No component {ner_name!r} in the pipeline (components: {nlp.pipe_names})")
    component = nlp.get_pipe(ner_name)
    if not isinstance(component, CRFEntityRecognizer):
        raise PipelineError(f"Component {ner_name!r} is not a crf_ner component")
    return component


NER_FACTORIES = ("crf_ner", "ner", "beam_ner")


def default_ner(nlp: Language) -> str:
    """The component `segment_influence` explains when none is named: the pipeline's one
    crf_ner, else its one spaCy `ner` or `beam_ner` ("crf_ner" when there is no single one,
    so that the error names what is missing)."""
    for factories in (NER_FACTORIES[:1], NER_FACTORIES[1:]):
        found = [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory in factories]
        if len(found) == 1:
            return found[0]
    return "crf_ner"


def upstream_components(nlp: Language, ner_name: str) -> List[str]:
    """Names of the components that run before `ner_name` (the encoder and co.); it
    may be any NER component (a surrogate reads a built-in `ner`'s features)."""
    if ner_name not in nlp.pipe_names:
        raise PipelineError(f"No component {ner_name!r} in the pipeline (components: {nlp.pipe_names})")
    return nlp.pipe_names[: nlp.pipe_names.index(ner_name)]


def encode(nlp: Language, docs: Iterable[Doc], ner_name: str, batch_size: int = 64) -> List[Doc]:
    """Run the components upstream of the CRF head (transformer / tok2vec) over `docs`,
    keeping their tokens, so that the head's listener can read its inputs."""
    with nlp.select_pipes(enable=upstream_components(nlp, ner_name)):
        return list(nlp.pipe(docs, batch_size=batch_size))


def unannotated(doc: Doc) -> Doc:
    """The doc's tokens and id without its annotations: what the pipeline would see at
    predict time. Encoding this copy also leaves the caller's (gold) doc untouched."""
    fresh = Doc(doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
    if doc.user_data.get("id") is not None:
        fresh.user_data["id"] = doc.user_data["id"]
    return fresh


def labelled(doc: Doc, entities: Iterable[Span]) -> Doc:
    """An `unannotated` copy of the doc with `entities` (spans of it) as its gold entities:
    a reference doc for a labelling the model predicted or a query asks about."""
    copy = unannotated(doc)
    copy.ents = [Span(copy, e.start, e.end, label=e.label_) for e in entities]
    return copy


def head_features(ner: CRFEntityRecognizer, docs: Sequence[Doc]) -> List[numpy.ndarray]:
    """Per-token features [n_tokens, E] exactly as the head saw them at predict time."""
    if not docs:
        return []
    features = ner.model.get_ref("tok2vec").predict(list(docs))
    return [numpy.asarray(ner.model.ops.to_numpy(x), dtype="float32") for x in features]


def tag_ids(ner: CRFEntityRecognizer, doc: Doc, spans: Iterable[Span]) -> List[int]:
    """Tag ids of the labelling where `spans` (non-overlapping) are the entities."""
    spans = sorted(spans, key=lambda span: span.start)
    unknown = sorted({span.label_ for span in spans if span.label_ not in ner.labels})
    if unknown:
        raise PipelineError(f"Label(s) {', '.join(unknown)} unknown to {ner.name!r} (labels: {', '.join(ner.labels)})")
    for before, span in zip(spans, spans[1:]):
        if span.start < before.end:
            raise DataError(f"Entity spans overlap at {span.text!r} (tokens {span.start}-{span.end}) in {doc.text!r}")
    tags = offsets_to_biluo_tags(doc, [(span.start_char, span.end_char, span.label_) for span in spans])
    if ner.scheme == "BIO":
        tags = biluo_to_iob(tags)
    index = {tag: i for i, tag in enumerate(ner.tags)}
    return [index[tag] for tag in tags]


def gold_tags(ner: CRFEntityRecognizer, doc: Doc) -> List[int]:
    """Tag ids of a reference doc's entities; -1 where its annotation is missing."""
    ids = tag_ids(ner, doc, [ent for ent in doc.ents if ent.label_ in ner.labels])
    missing = (doc.to_array("ENT_IOB") == 0).tolist()
    return [-1 if unset else i for unset, i in zip(missing, ids)]


# Names how `fingerprint` digests, so that a digest from another scheme (the strided
# sample of earlier versions) is recognised as such rather than as changed weights.
class LabelledBatch(NamedTuple):
    """What the head sees for a batch of sentences, with a labelling of each."""

    features: List[numpy.ndarray]  # [n_tokens, E] per sentence
    tags: List[List[int]]  # tag id per token (-1 = unknown)

    @property
    def n_sentences(self) -> int:
        """Sentences with at least one token: the N that mean losses and Hessians divide by."""
        return sum(1 for x in self.features if len(x))


def labelled_batch(
    nlp: Language,
    ner_name: str,
    docs: Sequence[Doc],
    batch_size: int = 64,
    ner: Optional[CRFEntityRecognizer] = None,
) -> LabelledBatch:
    """The head's features for reference docs, labelled with their gold entities. The
    head is the crf_ner component `ner_name`'s, or `ner`'s (a surrogate of `ner_name`).
    Encoded `batch_size` docs at a time, so that only their features outlive a batch."""
    ner = ner if ner is not None else crf_component(nlp, ner_name)
    features: List[numpy.ndarray] = []
    for first in range(0, len(docs), batch_size):
        part = [unannotated(doc) for doc in docs[first : first + batch_size]]
        features += head_features(ner, encode(nlp, part, ner_name, batch_size))
    return LabelledBatch(features, [gold_tags(ner, doc) for doc in docs])


FINGERPRINT_SCHEME = "sha256-full"


def fingerprint(nlp: Language, ner_name: str) -> str:
    """Digest of every byte of the CRF head's and its encoder's weights: an edit of any
    single entry changes it (a strided sample missed edits between its samples). 0.1-0.4 s
    for MiniLM's 91 MB (BENCHMARKS.md), so callers check it once per call, not per batch."""
    digest = hashlib.sha256()
    models = [cast(Any, nlp.get_pipe(name)).model for name in [*upstream_components(nlp, ner_name), ner_name]]
    for model in models:
        for node in model.walk():
            for name in sorted(node.param_names):
                if node.has_param(name):
                    _hash_array(digest, node.ops.to_numpy(node.get_param(name)))
            for shim in node.shims:
                module = getattr(shim, "_model", None)
                if isinstance(module, torch.nn.Module):
                    for tensor in module.state_dict().values():
                        _hash_array(digest, tensor.detach().cpu().numpy())
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def _hash_array(digest, array: numpy.ndarray) -> None:
    digest.update(repr((array.shape, str(array.dtype))).encode())
    digest.update(numpy.ascontiguousarray(array).reshape(-1).view(numpy.uint8))


def head_layout(ner: CRFEntityRecognizer) -> HeadLayout:
    """The flat parameter layout of the component's head."""
    return HeadLayout.of(ner.head)


def flat_head(ner: CRFEntityRecognizer, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The head's parameters as one vector in the `HeadLayout` order."""
    head = ner.head
    tensors = (head.weight, head.bias, head.transitions, head.start, head.end)
    return head_layout(ner).flatten_module(*(t.detach() for t in tensors)).to(dtype)


def set_flat_head(ner: CRFEntityRecognizer, flat: torch.Tensor) -> None:
    """Give the head the flattened parameters `flat`."""
    head = ner.head
    emission, trans, start, end = head_layout(ner).unflatten(flat)
    with torch.no_grad():
        for param, value in zip(
            (head.weight, head.bias, head.transitions, head.start, head.end),
            (emission[:, :-1], emission[:, -1], trans, start, end),
        ):
            param.copy_(value)


@contextmanager
def head_at(ner: CRFEntityRecognizer, flat: torch.Tensor) -> Iterator[None]:
    """Temporarily give the pipeline's head the flattened parameters `flat`."""
    head = ner.head
    saved = {name: p.detach().clone() for name, p in head.named_parameters()}
    set_flat_head(ner, flat)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in head.named_parameters():
                param.copy_(saved[name])


def chain_at(ner: CRFEntityRecognizer, features: Sequence[torch.Tensor], flat: torch.Tensor) -> crf.ChainScores:
    """The CRF scores of sentences (features [n, E], all n >= 1) under head parameters
    `flat`: a differentiable function of `flat`, for refits, Hessians and validation."""
    emission, trans, start, end = head_layout(ner).unflatten(flat)
    emissions = [x @ emission[:, :-1].T + emission[:, -1] for x in features]
    return crf.ChainScores(
        torch.nn.utils.rnn.pad_sequence(emissions, batch_first=True),
        torch.tensor([len(x) for x in features]),
        trans,
        start,
        end,
    )
