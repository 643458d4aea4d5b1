"""nessie 0.1.1 detectors (Klie et al., Computational Linguistics 2023) on the given model outputs.

Two levels, both nessie's own conventions for sequence labelling:

- `nessie:<Detector>`, token labelling: the corpus flattened to one instance per token, labels = the given BIO tags,
  probabilities over the BIO tags (columns in the LabelEncoder's order), predictions = the model's Viterbi tags,
  the ensemble members' outputs as the repeated probabilities / ensemble predictions, the token features as the
  embeddings. A candidate's score is the max over its tokens, a sentence's the max over its tokens.
- `nessie-span:<Detector>`, span labelling: `nessie.task_support.span_labeling.align_for_span_labeling` turns each
  given (gold) entity into one instance with the entity type as label, the aligned predicted entity as prediction
  and the aligned tokens' probabilities (nessie's mean over tokens, then mean over B-X/I-X per type); embeddings by
  `embed_spans` (mean of the given token features). nessie only scores the given entities, so candidates that are
  not a given entity (missing or mis-bounded entities the model proposes) rank after all given entities, ordered
  by the same detector's token-level score; likewise sentences without a given entity.

Flaggers (booleans) rank flagged items first; inside each block items are ordered by nessie's
ClassificationUncertainty at the same level (1 - p(given label)), so that no ranking depends on an arbitrary tie
order. The raw flags are kept in the `token` list (token level).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import scores
from peer_input import PeerInput
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import LabelEncoder

Thunk = Callable[[], Dict]

# Detectors nessie ships that cannot run on a peer input, and why (reported under "_failed").
NOT_APPLICABLE = {
    "nessie:CurriculumSpotter": "text classification only; trains its own transformer (a Hugging Face model)",
    "nessie:LeitnerSpotter": "text classification only; trains its own transformer (a Hugging Face model)",
    "nessie:DataMapConfidence": "needs training dynamics (probabilities after every epoch of its own model's "
    "training, through a transformers TrainerCallback); the peer input has final outputs only",
}


class _GivenFeatures:
    """The embedder interface `embed_spans` calls: returns the given token features of each sentence."""

    def __init__(self, data: PeerInput):
        self._per_sentence = data.ragged(data.features)
        self.embedding_dim = data.features.shape[1]

    def embed(self, sentences: List[List[str]]) -> List[np.ndarray]:
        assert len(sentences) == len(self._per_sentence)
        return self._per_sentence


class NessieRunner:
    """Holds the flattened and aligned views once; `detectors()` yields one thunk per method."""

    def __init__(self, data: PeerInput, knn_k: int = 10, irt_iters: int = 10_000, pe_folds: int = 10):
        self.data = data
        self.knn_k = knn_k
        self.irt_iters = irt_iters
        self.pe_folds = pe_folds
        self.le = LabelEncoder().fit(data.tag_names)
        position = {t: i for i, t in enumerate(data.tag_names)}
        self.columns = np.array([position[c] for c in self.le.classes_])  # le order -> peer input column
        self.labels = data.gold_tags
        self.predictions = data.pred_tags
        self.probabilities = data.probs[:, self.columns]
        self.repeated = np.swapaxes(data.member_probs[:, :, self.columns], 0, 1)  # [N, M, T]
        self.member_tags = np.asarray(data.tag_names, dtype=object)[data.member_pred]  # [M, N]
        self.texts = np.asarray(data.flat_tokens, dtype=object)
        self.token_scores: Dict[str, np.ndarray] = {}  # graded token-level outputs, for tie-breaks and fallbacks
        self._scorers: List[str] = []  # token-level scorers that ran, for BordaCount
        self._span = None
        self._span_scores: Dict[str, np.ndarray] = {}
        self._span_scorers: List[str] = []

    # ---- token level -------------------------------------------------------------------------------------
    def detectors(self) -> Iterator[Tuple[str, Thunk]]:
        from nessie import detectors as nd

        d = self
        m = len(d.data.members)
        token: List[Tuple[str, Callable[[], np.ndarray], bool]] = [
            # (name, call returning the detector's per-token output, is_flagger)
            (
                "ClassificationUncertainty",
                lambda: nd.ClassificationUncertainty().score(labels=d.labels, probabilities=d.probabilities, le=d.le),
                False,
            ),
            ("ClassificationEntropy", lambda: nd.ClassificationEntropy().score(probabilities=d.probabilities), False),
            ("PredictionMargin", lambda: nd.PredictionMargin().score(probabilities=d.probabilities), False),
            ("Retag", lambda: nd.Retag().score(labels=d.labels, predictions=d.predictions), True),
            (
                "ConfidentLearning",
                lambda: nd.ConfidentLearning().score(labels=d.labels, probabilities=d.probabilities, le=d.le),
                True,
            ),
            (
                "DropoutUncertainty",
                lambda: d._needs_members(m) or nd.DropoutUncertainty().score(repeated_probabilities=d.repeated),
                False,
            ),
            (
                "MajorityVotingEnsemble",
                lambda: (
                    d._needs_members(m)
                    or nd.MajorityVotingEnsemble().score(labels=d.data.gold, ensemble_predictions=d.data.member_pred)
                ),
                True,
            ),
            (
                "LabelAggregation",
                lambda: (
                    d._needs_members(m)
                    or nd.LabelAggregation().score(labels=d.labels, repeated_probabilities=d.repeated, le=d.le)
                ),
                True,
            ),
            (
                "ItemResponseTheoryFlagger",
                lambda: (
                    d._needs_members(m)
                    or nd.ItemResponseTheoryFlagger(num_iters=d.irt_iters).score(
                        labels=d.data.gold, ensemble_predictions=d.data.member_pred
                    )
                ),
                True,
            ),
            (
                "KnnEntropy",
                lambda: nd.KnnEntropy(k=d.knn_k).score(labels=d.labels, embedded_instances=d.data.features),
                False,
            ),
            (
                "KnnFlagger",
                lambda: nd.KnnFlagger(k=d.knn_k).score(labels=d.labels, embedded_instances=d.data.features),
                True,
            ),
            (
                "MeanDistance",
                lambda: nd.MeanDistance().score(labels=d.labels, embedded_instances=d.data.features),
                False,
            ),
            ("LabelEntropy", lambda: nd.LabelEntropy().score(texts=d.texts, labels=d.labels), False),
            ("WeightedDiscrepancy", lambda: nd.WeightedDiscrepancy().score(texts=d.texts, labels=d.labels), False),
            (
                "VariationNGrams",
                lambda: _flat_ragged(nd.VariationNGrams().score(sentences=d.data.tokens, tags=d.data.ragged(d.labels))),
                True,
            ),
            ("MajorityLabelBaseline", lambda: nd.MajorityLabelBaseline().score(texts=d.texts, labels=d.labels), True),
            (
                "MajorityLabelPerSurfaceFormBaseline",
                lambda: nd.MajorityLabelPerSurfaceFormBaseline().score(texts=d.texts, labels=d.labels),
                True,
            ),
            (
                "MaxEntProjectionEnsemble",
                lambda: d._projection_ensemble(d.data.features, d.data.gold, d.data.sentence_of_token),
                True,
            ),
        ]
        for name, call, is_flagger in token:
            yield f"nessie:{name}", lambda n=name, c=call, f=is_flagger: self._token_entry(n, c, f)
        yield "nessie:BordaCount", lambda: self._token_borda()
        for name in NOT_APPLICABLE:
            yield name, lambda n=name: _not_applicable(NOT_APPLICABLE[n])
        yield from self._span_detectors()

    def _token_entry(self, name: str, call: Callable[[], np.ndarray], is_flagger: bool) -> Dict:
        out = np.asarray(call())
        assert out.shape == (self.data.n_tokens,), f"{name}: output shape {out.shape}"
        if is_flagger:
            ranked = scores.flag_then(out.astype(bool), self._token_cu())
            entry = scores.from_tokens(self.data, ranked, keep_tokens=False)
            entry["token"] = out.astype(float).tolist()
            entry["_info"] = {"flagged_tokens": int(out.sum()), "token": "raw flags"}
            self.token_scores[name] = ranked
        else:
            entry = scores.from_tokens(self.data, out.astype(np.float64))
            self.token_scores[name] = out.astype(np.float64)
            self._scorers.append(name)
        return entry

    def _token_cu(self) -> np.ndarray:
        from nessie.detectors import ClassificationUncertainty

        if "ClassificationUncertainty" not in self.token_scores:
            self.token_scores["ClassificationUncertainty"] = ClassificationUncertainty().score(
                labels=self.labels, probabilities=self.probabilities, le=self.le
            )
        return self.token_scores["ClassificationUncertainty"]

    def _token_borda(self) -> Dict:
        from nessie.detectors import BordaCount

        names = [n for n in self._scorers if n in self.token_scores]
        if len(names) < 2:
            raise RuntimeError("BordaCount needs at least two scorers that ran")
        out = BordaCount().score(np.vstack([self.token_scores[n] for n in names]))
        entry = scores.from_tokens(self.data, out.astype(np.float64))
        entry["_info"] = {"combines": names}
        self.token_scores["BordaCount"] = out.astype(np.float64)
        return entry

    @staticmethod
    def _needs_members(m: int) -> None:
        if m < 2:
            raise NotApplicable(f"needs the outputs of >= 2 models; the peer input has M = {m}")

    def _projection_ensemble(self, x: np.ndarray, y: np.ndarray, sentence: np.ndarray) -> np.ndarray:
        """Reiss et al.'s ensemble of logistic regressions on random projections of the given features, each
        instance flagged by models that did not train on its sentence (folds of sentences, as nessie's
        CrossValidationHelper gives every model-based detector out-of-fold outputs)."""
        from nessie.detectors import MaxEntProjectionEnsemble

        flags = np.zeros(len(y), dtype=bool)
        for train, test in GroupKFold(n_splits=self.pe_folds).split(x, y, groups=sentence):
            _, _, fold_flags = MaxEntProjectionEnsemble(num_jobs=2).score(
                X_train_embedded=x[train], y_train_encoded=y[train], X_eval_embedded=x[test], y_eval_encoded=y[test]
            )
            flags[test] = fold_flags
        return flags

    # ---- span level (nessie's alignment of given entities) -----------------------------------------------
    def _span_detectors(self) -> Iterator[Tuple[str, Thunk]]:
        from nessie import detectors as nd

        d = self
        m = len(d.data.members)
        span: List[Tuple[str, Callable[[], np.ndarray], bool]] = [
            ("ClassificationUncertainty", lambda: d._span_cu(), False),
            (
                "ClassificationEntropy",
                lambda: nd.ClassificationEntropy().score(probabilities=d.span.probabilities),
                False,
            ),
            ("PredictionMargin", lambda: nd.PredictionMargin().score(probabilities=d.span.probabilities), False),
            ("Retag", lambda: nd.Retag().score(labels=d.span.labels, predictions=d.span.predictions), True),
            (
                "ConfidentLearning",
                lambda: nd.ConfidentLearning().score(
                    labels=d.span.labels, probabilities=d.span.probabilities, le=d.span.le
                ),
                True,
            ),
            (
                "DropoutUncertainty",
                lambda: (
                    d._needs_members(m)
                    or nd.DropoutUncertainty().score(repeated_probabilities=d.span.repeated_probabilities)
                ),
                False,
            ),
            (
                "MajorityVotingEnsemble",
                lambda: (
                    d._needs_members(m)
                    or nd.MajorityVotingEnsemble().score(
                        labels=d.span.labels, ensemble_predictions=d._span_member_predictions()
                    )
                ),
                True,
            ),
            (
                "LabelAggregation",
                lambda: (
                    d._needs_members(m)
                    or nd.LabelAggregation().score(
                        labels=d.span.labels, repeated_probabilities=d.span.repeated_probabilities, le=d.span.le
                    )
                ),
                True,
            ),
            (
                "ItemResponseTheoryFlagger",
                lambda: (
                    d._needs_members(m)
                    or nd.ItemResponseTheoryFlagger(num_iters=d.irt_iters).score(
                        labels=d.span.labels, ensemble_predictions=d._span_member_predictions()
                    )
                ),
                True,
            ),
            (
                "KnnEntropy",
                lambda: nd.KnnEntropy(k=d.knn_k).score(labels=d.span.labels, embedded_instances=d._span_embeddings()),
                False,
            ),
            (
                "KnnFlagger",
                lambda: nd.KnnFlagger(k=d.knn_k).score(labels=d.span.labels, embedded_instances=d._span_embeddings()),
                True,
            ),
            (
                "MeanDistance",
                lambda: nd.MeanDistance().score(labels=d.span.labels, embedded_instances=d._span_embeddings()),
                False,
            ),
            ("LabelEntropy", lambda: nd.LabelEntropy().score(texts=d._span_texts(), labels=d.span.labels), False),
            (
                "WeightedDiscrepancy",
                lambda: nd.WeightedDiscrepancy().score(texts=d._span_texts(), labels=d.span.labels),
                False,
            ),
            ("VariationNGramsSpan", lambda: d._variation_ngrams_span(), True),
            (
                "MajorityLabelBaseline",
                lambda: nd.MajorityLabelBaseline().score(texts=d._span_texts(), labels=d.span.labels),
                True,
            ),
            (
                "MajorityLabelPerSurfaceFormBaseline",
                lambda: nd.MajorityLabelPerSurfaceFormBaseline().score(texts=d._span_texts(), labels=d.span.labels),
                True,
            ),
            (
                "MaxEntProjectionEnsemble",
                lambda: d._projection_ensemble(
                    d._span_embeddings(),
                    d.span.le.transform(d.span.labels),
                    np.array([s.sentence for s in d.span.span_ids]),
                ),
                True,
            ),
        ]
        for name, call, is_flagger in span:
            yield f"nessie-span:{name}", lambda n=name, c=call, f=is_flagger: self._span_entry(n, c, f)
        yield "nessie-span:BordaCount", lambda: self._span_borda()

    @property
    def span(self):
        """nessie's alignment of the given entities with the model's (computed once)."""
        if self._span is None:
            from nessie.task_support.span_labeling import align_for_span_labeling

            d = self.data
            self._span = align_for_span_labeling(
                d.ragged(self.labels),
                d.ragged(self.predictions),
                d.ragged(self.probabilities),
                d.ragged(self.repeated),
                self.le,
            )
        return self._span

    def _span_cu(self) -> np.ndarray:
        from nessie.detectors import ClassificationUncertainty

        if "ClassificationUncertainty" not in self._span_scores:
            self._span_scores["ClassificationUncertainty"] = ClassificationUncertainty().score(
                labels=self.span.labels, probabilities=self.span.probabilities, le=self.span.le
            )
        return self._span_scores["ClassificationUncertainty"]

    def _span_member_predictions(self) -> np.ndarray:
        """Each member's aligned prediction for every given entity, [M, n_spans]."""
        if not hasattr(self, "_member_span_preds"):
            from nessie.task_support.span_labeling import align_for_span_labeling

            d = self.data
            rows = []
            for member in range(len(d.members)):
                aligned = align_for_span_labeling(
                    d.ragged(self.labels),
                    d.ragged(self.member_tags[member]),
                    d.ragged(d.member_probs[member][:, self.columns]),
                    None,
                    self.le,
                )
                assert _span_keys(aligned.span_ids) == _span_keys(self.span.span_ids)
                rows.append(np.asarray(aligned.predictions, dtype=object))
            self._member_span_preds = np.vstack(rows)
        return self._member_span_preds

    def _span_embeddings(self) -> np.ndarray:
        if not hasattr(self, "_span_vectors"):
            from nessie.task_support.span_labeling import embed_spans

            d = self.data
            import awkward as ak

            ragged = embed_spans(d.tokens, d.ragged(self.labels), _GivenFeatures(d))
            self._span_vectors = ak.to_numpy(ak.flatten(ragged, axis=1)).astype(np.float32)
            assert self._span_vectors.shape == (len(self.span.labels), d.features.shape[1])
        return self._span_vectors

    def _span_texts(self) -> np.ndarray:
        toks = self.data.tokens
        return np.asarray([" ".join(toks[s.sentence][s.start : s.end]) for s in self.span.span_ids], dtype=object)

    def _variation_ngrams_span(self) -> np.ndarray:
        """VariationNGramsSpan flags the entities iobes parses from the given tags; matched to nessie's alignment."""
        from iobes import SpanEncoding, parse_spans
        from nessie.detectors import VariationNGramsSpan

        d = self.data
        tags = d.ragged(self.labels)
        flags = VariationNGramsSpan().score(sentences=d.tokens, tags=tags).to_list()
        by_key = {}
        for i, (sentence_tags, sentence_flags) in enumerate(zip(tags, flags)):
            for span, flag in zip(parse_spans(list(sentence_tags), SpanEncoding.BIO), sentence_flags):
                by_key[(i, span.start, span.end)] = bool(flag)
        return np.array([by_key.get(k, False) for k in _span_keys(self.span.span_ids)], dtype=bool)

    def _span_entry(self, name: str, call: Callable[[], np.ndarray], is_flagger: bool) -> Dict:
        out = np.asarray(call())
        assert out.shape == (len(self.span.labels),), f"{name}: output shape {out.shape}"
        graded = scores.flag_then(out.astype(bool), self._span_cu()) if is_flagger else out.astype(np.float64)
        self._span_scores[name] = graded
        if not is_flagger:
            self._span_scorers.append(name)
        return self._span_to_candidates(name, graded, {"flagged_spans": int(out.sum())} if is_flagger else {})

    def _span_borda(self) -> Dict:
        from nessie.detectors import BordaCount

        names = [n for n in self._span_scorers if n in self._span_scores]
        if len(names) < 2:
            raise RuntimeError("BordaCount needs at least two scorers that ran")
        out = BordaCount().score(np.vstack([self._span_scores[n] for n in names])).astype(np.float64)
        return self._span_to_candidates("BordaCount", out, {"combines": names})

    def _span_to_candidates(self, name: str, span_scores: np.ndarray, info: Dict) -> Dict:
        d = self.data
        fallback_name = _TOKEN_TWIN.get(name, name)
        if fallback_name not in self.token_scores:  # its token-level twin did not run (or does not exist)
            fallback_name = "ClassificationUncertainty"
            self._token_cu()
        fallback = self.token_scores[fallback_name]
        index = {k: i for i, k in enumerate(_span_keys(self.span.span_ids))}
        pos = np.array([index.get(tuple(c), -1) for c in d.candidates.tolist()])
        has = pos >= 0
        span = scores.below(np.where(has, span_scores[np.maximum(pos, 0)], 0.0), has, scores.span_max(d, fallback))
        sentence_best = np.full(d.n_sentences, -np.inf)
        np.maximum.at(sentence_best, np.array([s.sentence for s in self.span.span_ids], dtype=np.int64), span_scores)
        has_s = np.isfinite(sentence_best)
        sentence = scores.below(np.where(has_s, sentence_best, 0.0), has_s, scores.sentence_max(d, fallback))
        info = info | {
            "given_entities_scored": int(len(span_scores)),
            "candidates_that_are_given_entities": int(has.sum()),
            "others_ordered_by": f"nessie:{fallback_name} (token level)",
        }
        return scores.entry(span, sentence) | {"_info": info}


_TOKEN_TWIN = {"VariationNGramsSpan": "VariationNGrams"}


class NotApplicable(RuntimeError):
    """A detector that cannot run on this input (reported, not a crash)."""


def _not_applicable(reason: str) -> Dict:
    raise NotApplicable(reason)


def _flat_ragged(ragged) -> np.ndarray:
    return np.asarray([x for sentence in ragged.to_list() for x in sentence])


def _span_keys(span_ids) -> List[Tuple[int, int, int]]:
    return [(int(s.sentence), int(s.start), int(s.end)) for s in span_ids]


def detectors(data: PeerInput, **options) -> Iterator[Tuple[str, Thunk]]:
    """(method name, thunk computing its scores entry) for every nessie detector, token level then span level."""
    return NessieRunner(data, **options).detectors()
