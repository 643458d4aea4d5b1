"""The thinc -> torch gradient bridge: the only module that reaches into the pipeline's
internals. It reads each token's features exactly as the `crf_ner` head saw them (the
listener's predict path), takes the torch head out of thinc's PyTorchWrapper, and turns
labelled segments into segment-loss gradients, in closed factored form (for the index)
and by torch.autograd through the same module (the reference the tests compare with).

Parameter layout of a flattened head gradient (`FactoredGradients.to_dense`):
    [W | b] row-major [C, E + 1], then transitions [C, C] row-major, start [C], end [C].
"""
import hashlib
from contextlib import contextmanager
from typing import Iterable, Iterator, List, NamedTuple, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span

from . import crf
from .gradients import FactoredGradients, WindowLabels
from .tagger import CRFEntityRecognizer


class Segment(NamedTuple):
    """Tokens [start, end) of the `doc`-th sentence of a batch."""

    doc: int
    start: int
    end: int


class LabelledBatch(NamedTuple):
    """What the head sees for a batch of sentences, with a labelling of each."""

    features: List[numpy.ndarray]  # [n_tokens, E] per sentence
    tags: List[List[int]]  # tag id per token (-1 = unknown)

    @property
    def n_sentences(self) -> int:
        """Sentences with at least one token: the N that mean losses and Hessians divide by."""
        return sum(1 for x in self.features if len(x))


def upstream_components(nlp: Language, ner_name: str) -> List[str]:
    """Names of the components that run before `ner_name` (the encoder and co.)."""
    names = nlp.pipe_names
    if ner_name not in names:
        raise ValueError(f"No component {ner_name!r} in the pipeline (components: {names})")
    if not isinstance(nlp.get_pipe(ner_name), CRFEntityRecognizer):
        raise ValueError(f"Component {ner_name!r} is not a crf_ner component")
    return names[: names.index(ner_name)]


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


def labelled_batch(nlp: Language, ner_name: str, docs: Sequence[Doc], batch_size: int = 64) -> LabelledBatch:
    """The head's features for reference docs, labelled with their gold entities."""
    ner = nlp.get_pipe(ner_name)
    encoded = encode(nlp, [unannotated(doc) for doc in docs], ner_name, batch_size)
    return LabelledBatch(head_features(ner, encoded), [gold_tags(ner, doc) for doc in docs])


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
        raise ValueError(
            f"Label(s) {', '.join(unknown)} unknown to {ner.name!r} (labels: {', '.join(ner.labels)})"
        )
    index = {tag: i for i, tag in enumerate(ner.tags)}
    first, middle, last, single = ("B", "I", "L", "U") if ner.scheme == "BILUO" else ("B", "I", "I", "B")
    ids = [index["O"]] * len(doc)
    previous_end = 0
    for span in spans:
        if span.start < previous_end:
            raise ValueError(f"Entity spans overlap at {span.text!r} (tokens {span.start}-{span.end}) in {doc.text!r}")
        previous_end = span.end
        n_tokens = span.end - span.start
        prefixes = [single] if n_tokens == 1 else [first] + [middle] * (n_tokens - 2) + [last]
        ids[span.start : span.end] = [index[f"{prefix}-{span.label_}"] for prefix in prefixes]
    return ids


def gold_tags(ner: CRFEntityRecognizer, doc: Doc) -> List[int]:
    """Tag ids of a reference doc's entities; -1 where its annotation is missing."""
    ids = tag_ids(ner, doc, [ent for ent in doc.ents if ent.label_ in ner.labels])
    missing = (doc.to_array("ENT_IOB") == 0).tolist()
    return [-1 if unset else i for unset, i in zip(missing, ids)]


def fingerprint(nlp: Language, ner_name: str) -> str:
    """Digest of the CRF head and its encoder's weights. Cheap enough to check on every
    batch: small tensors are hashed whole, large ones by a strided sample, which any
    training step changes."""
    digest = hashlib.sha256()
    models = [nlp.get_pipe(name).model for name in [*upstream_components(nlp, ner_name), ner_name]]
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
    return digest.hexdigest()


def _hash_array(digest, array: numpy.ndarray, sample: int = 4096) -> None:
    flat = numpy.ascontiguousarray(array).reshape(-1)
    step = max(1, flat.size // sample)
    digest.update(repr((array.shape, str(array.dtype))).encode())
    digest.update(numpy.ascontiguousarray(flat[::step]).tobytes())


def _padded_tags(tags: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(list(t), dtype=torch.long) for t in tags], batch_first=True, padding_value=-1
    )


def segment_gradients(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    segments: Sequence[Segment],
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float64,
) -> FactoredGradients:
    """Closed-form gradients of l_S = -log p(y_S | y_outside, x) for each segment.

    With q the marginals when only the labels outside S are clamped and q* those when
    all labels are (one-hot where known), r_t = q_t - q*_t, and
        dl/d[W|b] = sum_t r_t [h_t, 1]^T,  dl/dT = sum_t (xi_t - xi*_t),
        dl/dstart = r_0,  dl/dend = r_n-1        (DESIGN.md section 4).
    By the Markov property only the window from the nearest known label left of S to the
    nearest known label right of it matters: the chain is run over that window alone,
    the clamped neighbours folded into its start/end scores as T[y_a-1, :] and T[:, y_b].
    r_t is zero outside the window, so a segment keeps only its window's rows (S itself
    when the neighbours' labels are known). Computed in float64 by default: r = q - q*
    subtracts probabilities close to 1, where float32 loses three digits.
    """
    head = ner.head
    n_tags, width = head.n_tags, head.n_features + 1
    theta = flat_head(ner, dtype)
    windows = [_window(batch, s) for s in segments]
    if not windows:
        return FactoredGradients(
            numpy.zeros((0, width), "float32"),
            numpy.zeros((0, n_tags), "float32"),
            numpy.zeros(1, "int64"),
            numpy.zeros((0, n_tags * n_tags + 2 * n_tags), "float32"),
        )
    # By window length, so that a chain batch runs as many steps as its windows need.
    order = sorted(range(len(windows)), key=lambda i: windows[i].hi - windows[i].lo)
    parts = []
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(order), batch_size):
            chunk = [windows[i] for i in order[first : first + batch_size]]
            parts.append(_window_gradients(ner, batch, chunk, theta))
    return FactoredGradients.concat(parts).take(numpy.argsort(order))


class _Window(NamedTuple):
    doc: int
    lo: int  # window [lo, hi) = the segment, widened over unknown labels
    hi: int
    start: int  # the segment [start, end)
    end: int
    left: int  # known tag at lo - 1, or -1 at the sentence start
    right: int  # known tag at hi, or -1 at the sentence end


def _window(batch: LabelledBatch, segment: Segment) -> _Window:
    tags = batch.tags[segment.doc]
    if not 0 <= segment.start < segment.end <= len(tags):
        raise ValueError(f"Segment {segment} is outside its sentence of {len(tags)} tokens")
    if any(t < 0 for t in tags[segment.start : segment.end]):
        raise ValueError("Every token of a segment needs a known label")
    lo, hi = segment.start, segment.end
    while lo > 0 and tags[lo - 1] < 0:
        lo -= 1
    while hi < len(tags) and tags[hi] < 0:
        hi += 1
    left = tags[lo - 1] if lo > 0 else -1
    right = tags[hi] if hi < len(tags) else -1
    return _Window(segment.doc, lo, hi, segment.start, segment.end, left, right)


def window_scores(
    ner: CRFEntityRecognizer,
    features: Sequence[torch.Tensor],
    lefts: torch.Tensor,
    rights: torch.Tensor,
    flat: torch.Tensor,
) -> crf.ChainScores:
    """Constrained chain scores over segment windows (features [n, E] each) under head
    parameters `flat`, the known neighbour tags (`lefts`/`rights`, -1 at a sentence
    edge) folded into the start/end scores as T[left, :] and T[:, right]. Pass no
    constraints to the recursions: they are applied here."""
    scores = crf.constrain(chain_at(ner, features, flat), ner.constraints)
    at_start, at_end = (lefts < 0).unsqueeze(1), (rights < 0).unsqueeze(1)
    return scores._replace(
        start=torch.where(at_start, scores.start, scores.transitions[lefts.clamp(min=0)]),
        end=torch.where(at_end, scores.end, scores.transitions[:, rights.clamp(min=0)].T),
    )


def window_labels(batch: LabelledBatch, segments: Sequence[Segment]) -> WindowLabels:
    windows = [_window(batch, s) for s in segments]
    tags = [t for w in windows for t in batch.tags[w.doc][w.lo : w.hi]]
    bounds = [(w.start - w.lo, w.end - w.lo, w.left, w.right) for w in windows]
    return WindowLabels(numpy.asarray(tags, dtype="int16"), numpy.asarray(bounds, dtype="int32").reshape(-1, 4))


def window_segment_loss(
    ner: CRFEntityRecognizer, features: torch.Tensor, tags: torch.Tensor, bounds: Sequence[int], flat: torch.Tensor
) -> torch.Tensor:
    """l_S = -log p(y_S | y_outside, x) of one segment from its window alone (features
    [n, E], tags [n], bounds as in `WindowLabels`): by the Markov property, the same value
    as over the whole sentence. Differentiable in `flat`."""
    start, end, left, right = (int(b) for b in bounds)
    scores = window_scores(ner, [features], torch.tensor([left]), torch.tensor([right]), flat)
    return crf.segment_nll(scores, tags.unsqueeze(0), torch.tensor([start]), torch.tensor([end]))[0]


def _window_gradients(ner, batch: LabelledBatch, windows: List[_Window], theta: torch.Tensor) -> FactoredGradients:
    n_rows = len(windows)
    n_tags = ner.head.n_tags
    features = [torch.as_tensor(batch.features[w.doc][w.lo : w.hi], dtype=theta.dtype) for w in windows]
    tags = _padded_tags([batch.tags[w.doc][w.lo : w.hi] for w in windows])
    lefts = torch.tensor([w.left for w in windows])
    rights = torch.tensor([w.right for w in windows])
    at_start, at_end = lefts < 0, rights < 0
    # clamped neighbours become start/end scores; the real ones apply at the sentence edges
    scores = window_scores(ner, features, lefts, rights, theta)
    inside = torch.nn.utils.rnn.pad_sequence(
        [torch.arange(w.lo, w.hi).ge(w.start) & torch.arange(w.lo, w.hi).lt(w.end) for w in windows],
        batch_first=True,
    )
    _, q, xi = crf.marginals(scores, None, crf.gold_mask(tags.masked_fill(inside, -1), n_tags))
    q_gold, xi_gold = _clamped_marginals(scores, tags, n_tags)
    r = q - q_gold
    rows = torch.arange(n_rows)
    r_first, r_last = r[:, 0], r[rows, scores.lengths - 1]
    d_trans = (xi - xi_gold).sum(dim=1)
    d_trans[rows[~at_start], lefts[~at_start], :] += r_first[~at_start]
    d_trans[rows[~at_end], :, rights[~at_end]] += r_last[~at_end]
    zero = torch.zeros_like(r_first)
    d_start = torch.where(at_start.unsqueeze(1), r_first, zero)
    d_end = torch.where(at_end.unsqueeze(1), r_last, zero)
    dense = torch.cat([d_trans.reshape(n_rows, -1), d_start, d_end], dim=1)
    h_rows = torch.cat(features).numpy()
    h_rows = numpy.hstack([h_rows, numpy.ones((len(h_rows), 1), dtype=h_rows.dtype)])
    lengths = scores.lengths
    r_rows = r[torch.arange(tags.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)]
    offsets = numpy.concatenate([[0], numpy.cumsum(lengths.numpy())]).astype("int64")
    return FactoredGradients(h_rows, r_rows.numpy(), offsets, dense.numpy())


def _clamped_marginals(scores: crf.ChainScores, tags: torch.Tensor, n_tags: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unary and pairwise marginals with every known label clamped. Windows without
    unknown labels (the usual case) are one-hot, so no chain needs running."""
    valid = tags >= 0
    padding = torch.arange(tags.shape[1]).unsqueeze(0) >= scores.lengths.unsqueeze(1)
    if not bool((valid | padding).all()):
        _, q_gold, xi_gold = crf.marginals(scores, None, crf.gold_mask(tags, n_tags))
        return q_gold, xi_gold
    q_gold = torch.nn.functional.one_hot(tags.clamp(min=0), n_tags).to(scores.emissions.dtype) * valid.unsqueeze(-1)
    xi_gold = q_gold[:, :-1, :, None] * q_gold[:, 1:, None, :]
    return q_gold, xi_gold


def flatten_gradient(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """[dW, db, dT, dstart, dend] -> one vector in the FactoredGradients.to_dense layout."""
    d_weight, d_bias, d_trans, d_start, d_end = grads
    emission = torch.cat([d_weight, d_bias.unsqueeze(1)], dim=1)
    return torch.cat([emission.reshape(-1), d_trans.reshape(-1), d_start, d_end])


def segment_gradients_autograd(
    ner: CRFEntityRecognizer, batch: LabelledBatch, segments: Sequence[Segment], dtype=torch.float64
) -> numpy.ndarray:
    """Reference: the same gradients by torch.autograd through the head module [S, P]."""
    head = ner.head
    names = ["weight", "bias", "transitions", "start", "end"]
    rows = []
    for segment in segments:
        params = {name: getattr(head, name).detach().to(dtype).requires_grad_() for name in names}
        features = torch.as_tensor(batch.features[segment.doc], dtype=dtype)
        scores = crf.ChainScores(
            torch.func.functional_call(head, params, (features,)).unsqueeze(0),
            torch.tensor([len(features)]),
            params["transitions"],
            params["start"],
            params["end"],
        )
        loss = crf.segment_nll(
            scores,
            torch.tensor([batch.tags[segment.doc]]),
            torch.tensor([segment.start]),
            torch.tensor([segment.end]),
            ner.constraints,
        ).sum()
        inputs = [params[name] for name in names]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)  # 1-token: no transitions
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]
        rows.append(flatten_gradient(grads).numpy())
    return numpy.stack(rows)


def token_marginals(
    ner: CRFEntityRecognizer, features: Sequence[numpy.ndarray], batch_size: int = 256
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Every token's features [N, E + 1] (bias column appended) and the model's
    unclamped marginals [N, C]: the statistics K-FAC's factors are fitted on.
    Rows come in the order of `features`."""
    head = ner.head
    width, n_tags = head.n_features + 1, head.n_tags
    theta = flat_head(ner, torch.float32)
    marginals: List[numpy.ndarray] = [numpy.zeros((len(x), n_tags), "float32") for x in features]
    order = sorted((i for i, x in enumerate(features) if len(x)), key=lambda i: len(features[i]))
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(order), batch_size):  # sorted by length: little padding
            chunk = order[first : first + batch_size]
            scores = chain_at(ner, [torch.as_tensor(features[i]) for i in chunk], theta)
            q = crf.unary_marginals(scores, ner.constraints)
            for row, i in enumerate(chunk):
                marginals[i] = q[row, : len(features[i])].numpy()
    if not features:
        return numpy.zeros((0, width), "float32"), numpy.zeros((0, n_tags), "float32")
    h = numpy.concatenate([numpy.hstack([x, numpy.ones((len(x), 1), x.dtype)]) for x in features])
    return h.astype("float32"), numpy.concatenate(marginals)


def flat_head(ner: CRFEntityRecognizer, dtype=torch.float64) -> torch.Tensor:
    """The head's parameters as one vector in the flattened-gradient layout."""
    head = ner.head
    emission = torch.cat([head.weight.detach(), head.bias.detach().unsqueeze(1)], dim=1)
    rest = [head.transitions.detach().reshape(-1), head.start.detach(), head.end.detach()]
    return torch.cat([emission.reshape(-1), *rest]).to(dtype)


def _unflatten(flat: torch.Tensor, n_tags: int, width: int):
    """flat (layout above) -> [W | b] [C, E + 1], transitions, start, end."""
    n_emission = n_tags * width
    emission = flat[:n_emission].reshape(n_tags, width)
    trans = flat[n_emission : n_emission + n_tags * n_tags].reshape(n_tags, n_tags)
    start = flat[n_emission + n_tags * n_tags : n_emission + n_tags * n_tags + n_tags]
    return emission, trans, start, flat[-n_tags:]


@contextmanager
def head_at(ner: CRFEntityRecognizer, flat: torch.Tensor) -> Iterator[None]:
    """Temporarily give the pipeline's head the flattened parameters `flat`."""
    head = ner.head
    saved = {name: p.detach().clone() for name, p in head.named_parameters()}
    emission, trans, start, end = _unflatten(flat, head.n_tags, head.n_features + 1)
    with torch.no_grad():
        for param, value in zip(
            (head.weight, head.bias, head.transitions, head.start, head.end),
            (emission[:, :-1], emission[:, -1], trans, start, end),
        ):
            param.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in head.named_parameters():
                param.copy_(saved[name])


def chain_at(ner: CRFEntityRecognizer, features: Sequence[torch.Tensor], flat: torch.Tensor) -> crf.ChainScores:
    """The CRF scores of sentences (features [n, E], all n >= 1) under head parameters
    `flat`: a differentiable function of `flat`, for refits, Hessians and validation."""
    emission, trans, start, end = _unflatten(flat, ner.head.n_tags, ner.head.n_features + 1)
    emissions = [x @ emission[:, :-1].T + emission[:, -1] for x in features]
    return crf.ChainScores(
        torch.nn.utils.rnn.pad_sequence(emissions, batch_first=True),
        torch.tensor([len(x) for x in features]),
        trans,
        start,
        end,
    )


def mean_nll(ner: CRFEntityRecognizer, batch: LabelledBatch, dtype=torch.float64, batch_size: int = 256):
    """J(flat) = sum over `batch`'s sentences of -log p(y|x), divided by the number of
    sentences, as a function of the flattened head parameters (features fixed)."""
    chunks = []
    for first in range(0, len(batch.features), batch_size):
        rows = [i for i in range(first, min(first + batch_size, len(batch.features))) if len(batch.features[i])]
        if rows:
            feats = [torch.as_tensor(batch.features[i], dtype=dtype) for i in rows]
            chunks.append((feats, _padded_tags([batch.tags[i] for i in rows])))
    n_sentences = sum(len(feats) for feats, _ in chunks)

    def objective(flat: torch.Tensor) -> torch.Tensor:
        return sum(_summed_nll(ner, feats, gold, flat) for feats, gold in chunks) / n_sentences

    return objective, chunks


def _summed_nll(ner, features: Sequence[torch.Tensor], gold: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return crf.nll(chain_at(ner, features, flat), gold, ner.constraints).sum()


def segment_losses(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    segments: Sequence[Segment],
    flat: "torch.Tensor | None" = None,
    batch_size: int = 512,
) -> numpy.ndarray:
    """l_S = -log p(y_S | y_outside, x) per segment (float64), under the head's weights
    or the flattened parameters `flat`."""
    theta = flat_head(ner) if flat is None else flat.detach().to(torch.float64)
    out = numpy.empty(len(segments))
    order = sorted(range(len(segments)), key=lambda i: len(batch.tags[segments[i].doc]))
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(order), batch_size):  # sorted by length: little padding
            rows = order[first : first + batch_size]
            chunk = [segments[i] for i in rows]
            features = [torch.as_tensor(batch.features[s.doc], dtype=torch.float64) for s in chunk]
            losses = crf.segment_nll(
                chain_at(ner, features, theta),
                _padded_tags([batch.tags[s.doc] for s in chunk]),
                torch.tensor([s.start for s in chunk]),
                torch.tensor([s.end for s in chunk]),
                ner.constraints,
            )
            out[rows] = losses.numpy()
    return out


def head_hessian(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    flat: "torch.Tensor | None" = None,
    *,
    max_pairs: int = 16384,
    max_elements: int = 2 * 10**7,
) -> numpy.ndarray:
    """Exact Hessian [P, P] of the mean sentence NLL w.r.t. the flattened head parameters
    (at the head's weights, or at `flat`), features fixed, in closed form.

    The head is log-linear: the score of a path is theta . phi(x, y) with sufficient
    statistics phi = [sum_t e_{y_t} (x) [h_t, 1], sum_t e_{y_t} (x) e_{y_t+1}, e_{y_0}, e_{y_n-1}].
    So the Hessian of -log p(y_known | x) = log Z - log Z(known labels clamped) is
        Cov_{p(y|x)}[phi] - Cov_{p(y|y_known,x)}[phi]
    (the Fisher information; the second term vanishes for fully labelled sentences).
    The chain's pairwise joints follow from the marginals q_t and pair marginals xi_t:
    with M_t = xi_t / q_t (row-normalised), p(y_t, y_u) = diag(q_t) M_t ... M_u-1 for t < u,
    and triples/quadruples through one more M or xi. Start and end are handled as two
    extra emission columns (indicators of the first and last token). Same layout as
    `head_hessian_autograd` (the reference the tests compare with), but
    O(L^2 C^3 + L C^2 (E+3)^2) per sentence instead of P reverse-over-reverse passes.
    """
    theta = flat_head(ner) if flat is None else flat.detach().to(torch.float64)
    n_tags, width = ner.head.n_tags, ner.head.n_features + 1
    ext = width + 2  # [h, 1, first, last]
    ee = torch.zeros(ext, n_tags, n_tags, ext, dtype=torch.float64)  # [w, c, d, v]
    et = torch.zeros(ext, n_tags, n_tags, n_tags, dtype=torch.float64)  # [w, c, (a, b)]
    tt = torch.zeros(n_tags, n_tags, n_tags, n_tags, dtype=torch.float64)
    rows = [i for i, x in enumerate(batch.features) if len(x)]
    partial = [i for i in rows if any(t < 0 for t in batch.tags[i])]
    with torch.no_grad(), crf.one_thread():
        for sign, members, clamp in ((1.0, rows, False), (-1.0, partial, True)):
            members = sorted(members, key=lambda i: len(batch.features[i]))
            first = 0
            while first < len(members):
                last = first
                while last < len(members):  # grow the chunk while it fits the memory budget
                    longest = len(batch.features[members[last]])
                    size = last - first + 1
                    too_big = size * longest**2 > max_pairs or size * longest * n_tags**2 * ext > max_elements
                    if last > first and too_big:
                        break
                    last += 1
                chunk = members[first:last]
                first = last
                blocks = _covariance_blocks(ner, batch, chunk, theta, clamp)
                for total, block in zip((ee, et, tt), blocks):
                    total.add_(block, alpha=sign)
    n_sentences = max(1, len(rows))
    n_emission = n_tags * width
    index = numpy.empty((n_tags, ext), dtype=numpy.int64)
    index[:, :width] = numpy.arange(n_emission).reshape(n_tags, width)
    index[:, width] = n_emission + n_tags * n_tags + numpy.arange(n_tags)  # start
    index[:, width + 1] = n_emission + n_tags * n_tags + n_tags + numpy.arange(n_tags)  # end
    index = index.reshape(-1)
    trans = n_emission + numpy.arange(n_tags * n_tags)
    n_params = n_emission + n_tags * n_tags + 2 * n_tags
    hessian = numpy.zeros((n_params, n_params))
    ee_flat = ee.permute(1, 0, 2, 3).reshape(n_tags * ext, n_tags * ext).numpy()  # [(c, w), (d, v)]
    et_flat = et.permute(1, 0, 2, 3).reshape(n_tags * ext, n_tags * n_tags).numpy()
    hessian[numpy.ix_(index, index)] = ee_flat
    hessian[numpy.ix_(index, trans)] = et_flat
    hessian[numpy.ix_(trans, index)] = et_flat.T
    hessian[numpy.ix_(trans, trans)] = tt.reshape(n_tags * n_tags, n_tags * n_tags).numpy()
    return hessian / n_sentences


def _covariance_blocks(ner, batch: LabelledBatch, chunk: List[int], theta: torch.Tensor, clamp: bool):
    """Summed over the chunk's sentences: Cov of the extended emission statistics
    [w, c, d, v], emission x transition [w, c, a, b] and transition x transition [a, b, c, d]."""
    features = [torch.as_tensor(batch.features[i], dtype=torch.float64) for i in chunk]
    scores = chain_at(ner, features, theta)
    n_tags = scores.emissions.shape[-1]
    mask = None
    if clamp:
        mask = crf.gold_mask(_padded_tags([batch.tags[i] for i in chunk]), n_tags)
    _, q, xi = crf.marginals(scores, ner.constraints, mask)  # [B, L, C], [B, L-1, C, C]
    n_docs, length, _ = q.shape
    lengths = scores.lengths
    positions = torch.arange(length)
    x = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
    x = torch.cat(
        [
            x,
            (positions.unsqueeze(0) < lengths.unsqueeze(1)).to(x.dtype).unsqueeze(-1),
            (positions == 0).expand(n_docs, length).to(x.dtype).unsqueeze(-1),
            (positions.unsqueeze(0) == (lengths - 1).unsqueeze(1)).to(x.dtype).unsqueeze(-1),
        ],
        dim=-1,
    )  # [B, L, ext]; zero rows at padding
    ext = x.shape[-1]
    # conditional transition matrices p(y_t+1 | y_t); zero rows for impossible states
    q_left = q[:, :-1].unsqueeze(-1)
    m = torch.where(q_left > 0, xi / torch.where(q_left > 0, q_left, torch.ones_like(q_left)), torch.zeros_like(xi))
    # p_full[b, t, u] = p(y_u | y_t) for u >= t (identity at u = t), zero for u < t
    eye = torch.eye(n_tags, dtype=torch.float64)
    p_full = torch.zeros(n_docs, length, length, n_tags, n_tags, dtype=torch.float64)
    p_full[:, positions, positions] = eye
    current = eye.expand(n_docs, length, n_tags, n_tags)
    for k in range(1, length):
        current = current[:, : length - k] @ m[:, k - 1 :]
        p_full[:, positions[: length - k], positions[k:]] = current
    joint = q.unsqueeze(2).unsqueeze(-1) * p_full  # p(y_t, y_u) for u >= t: [B, t, u, c, d]
    joint2 = joint + joint.permute(0, 2, 1, 4, 3)
    joint2[:, positions, positions] -= torch.diag_embed(q)
    cov = joint2 - q[:, :, None, :, None] * q[:, None, :, None, :]
    # emission x emission: sum_{t,u} cov[t,u] (x) x_t x_u^T
    z = torch.einsum("btucd,buv->btcdv", cov, x)
    ee = (x.reshape(-1, ext).T @ z.reshape(n_docs * length, -1)).reshape(ext, n_tags, n_tags, ext)
    xi_sum = xi.sum(dim=1)  # [B, C, C]
    if length > 1:
        # p(y_s = c, y_t = a, y_t+1 = b): s <= t through joint and M_t, s > t through xi_t and p(y_s | y_t+1)
        before = torch.einsum("bstca,btaz->bscaz", joint[:, :, : length - 1], m)
        after = torch.einsum("btaz,btszc->bscaz", xi, p_full[:, 1:])
        triple = before + after - q[:, :, :, None, None] * xi_sum[:, None, None]
        et = (x.reshape(-1, ext).T @ triple.reshape(n_docs * length, -1)).reshape(ext, n_tags, n_tags, n_tags)
        # transition x transition: diag(xi_t) + sum_{t<u} xi_t[a,b] p(y_u=c | y_t+1=b) M_u[c,d] + transpose
        forward = torch.einsum("bucaz,bucd->azcd", after[:, : length - 1], m)
        tt = forward + forward.permute(2, 3, 0, 1)
        tt = tt + torch.diag_embed(xi_sum.sum(0).reshape(-1)).reshape(n_tags, n_tags, n_tags, n_tags)
        tt = tt - torch.einsum("bxy,bcd->xycd", xi_sum, xi_sum)
    else:
        et = torch.zeros(ext, n_tags, n_tags, n_tags, dtype=torch.float64)
        tt = torch.zeros(n_tags, n_tags, n_tags, n_tags, dtype=torch.float64)
    return ee, et, tt


def head_hessian_autograd(
    ner: CRFEntityRecognizer,
    batch: LabelledBatch,
    batch_size: int = 32,
    dtype=torch.float64,
    flat: "torch.Tensor | None" = None,
    chunk_size: int = 128,
) -> numpy.ndarray:
    """Reference for `head_hessian`: the same matrix by reverse-over-reverse autograd,
    P backward passes over the batch (minutes per 100 sentences for a 2k head)."""
    theta = flat_head(ner, dtype) if flat is None else flat.detach().to(dtype)
    _, chunks = mean_nll(ner, batch, dtype, batch_size)
    n_sentences = sum(len(feats) for feats, _ in chunks)
    hessian = torch.zeros(len(theta), len(theta), dtype=dtype)
    with crf.one_thread():
        for feats, gold in chunks:

            def objective(params: torch.Tensor) -> torch.Tensor:
                return _summed_nll(ner, feats, gold, params) / n_sentences

            # reverse-over-reverse, P rows in chunks to bound memory
            hessian += torch.func.jacrev(torch.func.grad(objective), chunk_size=chunk_size)(theta)
    return hessian.numpy()
