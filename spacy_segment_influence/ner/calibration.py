"""Temperature scaling of a CRF head's entity probabilities (Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017, applied to the whole chain): one
scalar T divides every score, fitted on held-out sentences. A head trained to
convergence on a few thousand sentences is overconfident on new text (CoNLL, tok2vec,
2,000 sentences: mean probability .94 for entities of which 74 % are right); T > 1
flattens its distribution without changing any prediction.
"""

import math
from functools import partial
from typing import List, Sequence

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc

from ..exceptions import DataError
from . import bridge, crf
from .bridge import LabelledBatch, labelled_batch
from .entity_scores import PathQuery, entity_pattern, path_log_probs
from .tagger import CRFEntityRecognizer

_GOLDEN = (5**0.5 - 1) / 2


def fit_temperature(
    ner: CRFEntityRecognizer, batch: LabelledBatch, low: float = 0.05, high: float = 20.0, chunk: int = 256
) -> float:
    """The T in [low, high] whose probabilities of the head's predicted entities on the
    held-out `batch` best predict which of them are right (the log loss of
    p_T(entity) against exact span and label match with the gold tags): one-parameter
    Platt scaling on the quantity that is reported. Viterbi does not depend on T, so
    the entities are found once; a golden-section search on log T does the rest."""
    rows = sorted((i for i, x in enumerate(batch.features) if len(x)), key=lambda i: len(batch.features[i]))
    chains: List[crf.ChainScores] = []
    queries: List[List[PathQuery]] = []
    correct: List[bool] = []
    with torch.no_grad(), crf.one_thread():
        for first in range(0, len(rows), chunk):
            part = rows[first : first + chunk]
            emissions = [ner.head(torch.from_numpy(batch.features[i])).double() for i in part]
            chain = ner.chain_scores(emissions)
            chain = crf.ChainScores(*(x.double() if x.is_floating_point() else x for x in chain))
            found = [ner.entities_from_tag_ids(path) for path in crf.viterbi(chain, ner.constraints)]
            gold = [set(ner.entities_from_tag_ids([max(t, 0) for t in batch.tags[i]])) for i in part]
            chains.append(chain)
            pattern = partial(entity_pattern, ner.tags, ner.scheme)
            queries.append([pattern(b, ent) for b, ents in enumerate(found) for ent in ents])
            correct.extend(ent in gold[b] for b, ents in enumerate(found) for ent in ents)
    if not correct:
        raise DataError("Cannot fit a temperature: the model predicts no entities on the held-out sample")
    right = numpy.flatnonzero(correct)
    wrong = numpy.flatnonzero([not c for c in correct])

    def log_loss(log_t: float) -> float:
        tempered = [crf.tempered(chain, math.exp(log_t)) for chain in chains]
        log_p = numpy.concatenate([path_log_probs(c, q, ner.constraints) for c, q in zip(tempered, queries)])
        return float(-log_p[right].sum() - numpy.log1p(-numpy.exp(numpy.minimum(log_p[wrong], -1e-12))).sum())

    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    f_c, f_d = log_loss(c), log_loss(d)
    while b - a > 1e-3:
        if f_c < f_d:
            b, d, f_d = d, c, f_c
            c = b - _GOLDEN * (b - a)
            f_c = log_loss(c)
        else:
            a, c, f_c = c, d, f_d
            d = a + _GOLDEN * (b - a)
            f_d = log_loss(d)
    return math.exp((a + b) / 2)


def calibrate(nlp: Language, docs: Sequence[Doc], ner_name: str = "crf_ner") -> float:
    """Fit the crf_ner component's temperature on held-out reference `docs` (not the
    training data: there the model is confident for good reason) and store it in its cfg,
    so it is saved with the pipeline. Returns T."""
    ner = bridge.crf_component(nlp, ner_name)
    temperature = fit_temperature(ner, labelled_batch(nlp, ner_name, docs))
    ner.cfg["temperature"] = temperature
    return temperature
