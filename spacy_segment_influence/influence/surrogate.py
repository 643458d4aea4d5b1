"""A CRF surrogate that explains NER components without a CRF (spaCy's `ner`,
`beam_ner`): a linear-chain CRF head fitted on the component's own frozen token features
against the training corpus' gold labels.

The features are read where the component reads them: through its listener (the shared
tok2vec or transformer) or from its own inner tok2vec. The pipeline's weights and
predictions are left alone. With the encoder frozen, the head's training problem is
the whole training problem, so `validate`'s retraining is exact for the surrogate.
"""

import io
from typing import Any, Dict, List, Optional, Sequence

import numpy
import torch
from spacy.language import Language
from spacy.scorer import PRFScore
from spacy.tokens import Doc
from thinc.api import Model

from ..exceptions import DataError, IndexCorruptError, PipelineError
from ..ner import bridge, crf
from ..ner.bridge import labelled_batch
from ..ner.entity_scores import Entity
from ..ner.head import build_crf_tagger, load_state
from ..ner.tagger import CRFEntityRecognizer
from .head_fit import fit_head


def feature_reader(component: Any) -> Model:
    """The part of a component's model that maps docs to token features [n, E]: its
    `tok2vec` ref, without the projection spaCy's transition-based parser puts on it."""
    model = getattr(component, "model", None)
    if not isinstance(model, Model) or not model.has_ref("tok2vec"):
        raise PipelineError(
            f"Cannot read the token features of {getattr(component, 'name', component)!r}: "
            "its model has no 'tok2vec' (a listener or an inner tok2vec)"
        )
    tok2vec = model.get_ref("tok2vec")
    # TransitionBasedParser: chain(encoder, list2array, Linear) -> the encoder
    return tok2vec.layers[0] if model.name == "parser_model" else tok2vec


def build_surrogate(nlp: Language, ner_name: str, labels: Sequence[str], scheme: str = "BILUO") -> CRFEntityRecognizer:
    """An unfitted CRF head over the features of component `ner_name`; not added to the
    pipeline (it shares the component's encoder, whose weights it never changes)."""
    if ner_name not in nlp.pipe_names:
        raise PipelineError(f"No component {ner_name!r} in the pipeline (components: {nlp.pipe_names})")
    model = build_crf_tagger(feature_reader(nlp.get_pipe(ner_name)))
    surrogate = CRFEntityRecognizer(nlp.vocab, model, f"{ner_name}_surrogate", scheme=scheme)
    for label in sorted(labels):
        surrogate.add_label(label)
    return surrogate


def indexed_surrogate(nlp: Language, ner_name: str) -> Optional[CRFEntityRecognizer]:
    """None when `ner_name` is a crf_ner; else the surrogate a `segment_influence`
    component of the pipeline fitted for it, or a clear error when there is none."""
    if isinstance(nlp.get_pipe(ner_name) if ner_name in nlp.pipe_names else None, CRFEntityRecognizer):
        return None
    for name in nlp.pipe_names:
        component: Any = nlp.get_pipe(name)
        if nlp.get_pipe_meta(name).factory == "segment_influence" and component.cfg["ner"] == ner_name:
            if component.surrogate is not None:
                return component.surrogate
    raise PipelineError(
        f"{ner_name!r} is not a crf_ner component and no segment_influence component has a CRF surrogate of it: "
        f"index the pipeline first (segment-influence index MODEL_DIR TRAIN.spacy OUT_DIR --ner {ner_name})"
    )


def _size(surrogate: CRFEntityRecognizer, n_features: int) -> None:
    head = surrogate.model.get_ref("head")
    head.set_dim("nI", n_features, force=True)
    head.set_dim("nO", len(surrogate.tags), force=True)
    surrogate.head.resize(n_features, len(surrogate.tags))


def fit_surrogate(
    nlp: Language,
    ner_name: str,
    docs: Sequence[Doc],
    *,
    l2: float = 1e-3,
    batch_size: int = 64,
    show_progress: bool = True,
) -> CRFEntityRecognizer:
    """The CRF head minimising mean sentence NLL + l2 / 2 |theta|^2 on `docs`' gold
    entities, over the frozen features of component `ner_name` (`head_fit`; the objective
    is convex in the head, so the fit is its unique optimum)."""
    component = nlp.get_pipe(ner_name) if ner_name in nlp.pipe_names else None
    labels = [label for label in getattr(component, "labels", ()) if label]
    labels = labels or sorted({ent.label_ for doc in docs for ent in doc.ents})
    if not labels:
        raise DataError(f"Cannot fit a CRF surrogate of {ner_name!r}: no entity labels")
    surrogate = build_surrogate(nlp, ner_name, labels)
    batch = labelled_batch(nlp, ner_name, docs, batch_size, ner=surrogate)
    widths = {x.shape[1] for x in batch.features if len(x)}
    if not widths:
        raise DataError(f"Cannot fit a CRF surrogate of {ner_name!r}: the training corpus has no tokens")
    _size(surrogate, widths.pop())
    fit = fit_head(surrogate, batch, l2, show_progress=show_progress, desc=f"Fitting the CRF surrogate of {ner_name!r}")
    bridge.set_flat_head(surrogate, fit.theta.float())
    return surrogate


def surrogate_to_bytes(surrogate: CRFEntityRecognizer) -> bytes:
    buffer = io.BytesIO()
    torch.save({"cfg": surrogate.cfg, "head": surrogate.head.state_dict()}, buffer)
    return buffer.getvalue()


def surrogate_from_bytes(nlp: Language, ner_name: str, data: bytes) -> CRFEntityRecognizer:
    state = load_state(data, "cpu", f"the CRF surrogate of {ner_name!r}", IndexCorruptError)
    surrogate = build_surrogate(nlp, ner_name, state["cfg"]["labels"], state["cfg"]["scheme"])
    n_tags, n_features = state["head"]["weight"].shape
    _size(surrogate, n_features)
    surrogate.head.load_state_dict(state["head"])
    return surrogate


def predicted_entities(surrogate: CRFEntityRecognizer, features: Sequence[numpy.ndarray]) -> List[List[Entity]]:
    """The entities the surrogate's Viterbi path gives each sentence (features [n, E])."""
    rows = [i for i, x in enumerate(features) if len(x)]
    found: List[List[Entity]] = [[] for _ in features]
    if not rows:
        return found
    with torch.no_grad(), crf.one_thread():
        chain = surrogate.chain_scores([surrogate.head(torch.from_numpy(features[i])) for i in rows])
        for i, path in zip(rows, crf.viterbi(chain, surrogate.constraints)):
            found[i] = surrogate.entities_from_tag_ids(path)
    return found


def agreement(nlp: Language, ner_name: str, surrogate: CRFEntityRecognizer, docs: Sequence[Doc]) -> Dict[str, float]:
    """How far the surrogate agrees with the component it explains on reference `docs`:
    entity F1 of its predictions against the component's, each one's F1 against gold,
    and the share of the component's correct entities the surrogate predicts too."""
    upstream = [*bridge.upstream_components(nlp, ner_name), ner_name]
    with nlp.select_pipes(enable=upstream):
        processed = list(nlp.pipe([bridge.unannotated(doc) for doc in docs]))
    surrogate_ents = predicted_entities(surrogate, bridge.head_features(surrogate, processed))
    pipeline, own, gold = set(), set(), set()
    for i, (doc, reference, ents) in enumerate(zip(processed, docs, surrogate_ents)):
        pipeline |= {(i, e.start, e.end, e.label_) for e in doc.ents}
        gold |= {(i, e.start, e.end, e.label_) for e in reference.ents}
        own |= {(i, *ent) for ent in ents}
    correct = pipeline & gold
    return {
        "surrogate_vs_pipeline_f": _f1(own, pipeline),
        "pipeline_f": _f1(pipeline, gold),
        "surrogate_f": _f1(own, gold),
        "pipeline_correct_recalled": len(correct & own) / len(correct) if correct else 1.0,
        "n_docs": len(docs),
    }


def _f1(candidates: set, reference: set) -> float:
    score = PRFScore()
    score.score_set(candidates, reference)
    return float(score.fscore)
