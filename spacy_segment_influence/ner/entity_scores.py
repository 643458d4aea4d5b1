"""Per-entity probabilities from a CRF head: the exact marginal probability, under the
model, that a span is an entity with a given label, as spaCy's `spancat` reports its
span scores (`doc.spans[key]`, `attrs["scores"]`).

In BILUO the span [a, b) is that entity exactly when its tokens take the tags
B-L I-L .. L-L (U-L for one token); in BIO when they take B-L I-L .. I-L and the next
token is not I-L. Either is a tag pattern whose probability `path_log_probs` gives
from one forward-backward.
"""

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc, Span, SpanGroup

from . import crf

Entity = Tuple[int, int, str]  # token start, token end (exclusive), label ("O": no entity)


class ScoredEntity(NamedTuple):
    start: int
    end: int
    label: str
    score: float


class PathQuery(NamedTuple):
    """Sentence `sentence`'s tokens start.. take the tags `tags`, and the token right after
    them (if any) takes none of `next_forbidden`: one entity span as a tag pattern."""

    sentence: int
    start: int
    tags: Sequence[int]
    next_forbidden: Sequence[int] = ()


def path_log_probs(
    scores: crf.ChainScores, queries: Sequence[PathQuery], constraints: Optional[crf.TagConstraints] = None
) -> torch.Tensor:
    """Exact log p(pattern | x) of each query [Q], in float64, without gradients.

    One forward-backward per batch, then per query
        alpha_a[s_a] + sum_{a<t<b} (T[s_t-1, s_t] + U_t[s_t]) + beta'_b-1[s_b-1] - log Z,
    where beta' leaves out the forbidden next tags (for BIO: "I-L" after the entity).
    """
    masked = crf.masked_scores(scores, constraints, None)
    with torch.no_grad():
        masked = crf.ChainScores(*(x.double() if x.is_floating_point() else x for x in masked))
        alpha, log_z = crf.forward(masked)
        beta = crf.backward(masked)
    alpha_np, beta_np, log_z_np = alpha.numpy(), beta.numpy(), log_z.numpy()
    emissions, transitions = masked.emissions.numpy(), masked.transitions.numpy()
    lengths = masked.lengths.tolist()
    out = numpy.empty(len(queries))
    for q, (b, start, tags, forbidden) in enumerate(queries):
        end = start + len(tags)
        if not tags or start < 0 or end > lengths[b]:
            raise ValueError(f"Pattern at {start}-{end} lies outside sentence {b} ({lengths[b]} tokens)")
        total = alpha_np[b, start, tags[0]]
        for t, (prev, tag) in enumerate(zip(tags, tags[1:]), start=start + 1):
            total += transitions[prev, tag] + emissions[b, t, tag]
        if forbidden and end < lengths[b]:
            nxt = transitions[tags[-1]] + emissions[b, end] + beta_np[b, end]
            nxt[list(forbidden)] = -numpy.inf
            total += numpy.logaddexp.reduce(nxt)
        else:
            total += beta_np[b, end - 1, tags[-1]]
        out[q] = total - log_z_np[b]
    return torch.from_numpy(numpy.minimum(out, 0.0))


def entity_pattern(tags: Sequence[str], scheme: str, sentence: int, entity: Entity) -> PathQuery:
    """The tag pattern of `entity` in `sentence`; label "O" asks for a span with no entity."""
    start, end, label = entity
    length = end - start
    forbidden: List[str]
    if label == "O":
        names, forbidden = ["O"] * length, []
    elif scheme == "BILUO":
        names = [f"U-{label}"] if length == 1 else [f"B-{label}", *[f"I-{label}"] * (length - 2), f"L-{label}"]
        forbidden = []
    else:
        names, forbidden = [f"B-{label}", *[f"I-{label}"] * (length - 1)], [f"I-{label}"]
    index = {tag: i for i, tag in enumerate(tags)}
    return PathQuery(sentence, start, [index[n] for n in names], [index[n] for n in forbidden])


def entity_probabilities(
    chain: crf.ChainScores,
    constraints: crf.TagConstraints,
    tags: Sequence[str],
    scheme: str,
    entities: Sequence[Sequence[Entity]],
) -> List[List[float]]:
    """p(entity | x) for each entity of each sentence of the batch `chain`."""
    queries = [entity_pattern(tags, scheme, b, ent) for b, ents in enumerate(entities) for ent in ents]
    probs = iter(torch.exp(path_log_probs(chain, queries, constraints)).tolist() if queries else [])
    return [[next(probs) for _ in ents] for ents in entities]


def candidate_entities(
    chain: crf.ChainScores,
    constraints: crf.TagConstraints,
    tags: Sequence[str],
    scheme: str,
    threshold: float,
) -> List[List[Entity]]:
    """Every (span, label) of each sentence whose probability may reach `threshold`.

    A span's probability is at most each of its tokens' marginals of being in it (first
    token starts it, last ends it, all are inside), so only spans whose token marginals
    all reach the threshold can; the caller scores those exactly.
    """
    unary = crf.unary_marginals(chain, constraints).numpy()
    labels = sorted({tag.split("-", 1)[1] for tag in tags if tag != "O"})
    last_prefixes = "LU" if scheme == "BILUO" else "BI"
    found: List[List[Entity]] = []
    for b, n_tokens in enumerate(chain.lengths.tolist()):
        spans: List[Entity] = []
        for label in labels:
            marginal = unary[b, :n_tokens]
            inside = marginal[:, _columns(tags, label, "BILU")].sum(axis=1)
            starts = marginal[:, _columns(tags, label, "BU")].sum(axis=1) >= threshold
            ends = marginal[:, _columns(tags, label, last_prefixes)].sum(axis=1) >= threshold
            for a in numpy.flatnonzero(starts).tolist():
                for last in range(a, n_tokens):
                    if inside[last] < threshold:
                        break
                    if ends[last]:
                        spans.append((a, last + 1, label))
        found.append(sorted(spans))
    return found


def _columns(tags: Sequence[str], label: str, prefixes: str) -> List[int]:
    return [i for i, tag in enumerate(tags) if tag in {f"{p}-{label}" for p in prefixes}]


def score_entities(
    chain: crf.ChainScores,
    constraints: crf.TagConstraints,
    tags: Sequence[str],
    scheme: str,
    predicted: Sequence[Sequence[Entity]],
    threshold: Optional[float] = None,
) -> List[List[ScoredEntity]]:
    """The predicted entities with their probabilities, plus (with a `threshold`) every
    other span and label at least that probable, sorted by position."""
    entities = [list(ents) for ents in predicted]
    if threshold is not None:
        candidates = candidate_entities(chain, constraints, tags, scheme, threshold)
        for ents, extra in zip(entities, candidates):
            ents.extend(ent for ent in extra if ent not in ents)
    scored = []
    for ents, probs, n_predicted in zip(
        entities, entity_probabilities(chain, constraints, tags, scheme, entities), map(len, predicted)
    ):
        kept = [
            ScoredEntity(*ent, p)
            for i, (ent, p) in enumerate(zip(ents, probs))
            if i < n_predicted or (threshold is not None and p >= threshold)
        ]
        scored.append(sorted(kept))
    return scored


def set_entity_scores(doc: Doc, key: str, scored: Sequence[ScoredEntity]) -> None:
    """doc.spans[key] = the scored spans, attrs["scores"] aligned with them (as spancat)."""
    group = SpanGroup(doc, name=key, spans=[Span(doc, s.start, s.end, label=s.label) for s in scored])
    group.attrs["scores"] = numpy.asarray([s.score for s in scored], dtype="float32")
    doc.spans[key] = group


def probabilities_from_features(
    ner: Any, features: Sequence[numpy.ndarray], entities: Sequence[Sequence[Entity]]
) -> List[List[float]]:
    """p(entity | x) under `ner`'s CRF head (a crf_ner, or a surrogate) for the entities
    of sentences given by the head's input features."""
    rows = [b for b, ents in enumerate(entities) if ents]
    if not rows:
        return [[] for _ in entities]
    head = ner.head
    with torch.no_grad(), crf.one_thread():
        emissions = [head(torch.from_numpy(numpy.asarray(features[b], dtype="float32"))) for b in rows]
        chain = crf.tempered(ner.chain_scores(emissions), ner.temperature)
        found = iter(entity_probabilities(chain, ner.constraints, ner.tags, ner.scheme, [entities[b] for b in rows]))
    return [next(found) if ents else [] for ents in entities]
