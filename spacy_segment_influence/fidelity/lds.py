"""The linear datamodeling score (LDS; Park et al. 2023, "TRAK", section 2): does an
attribution predict what retraining does?

Train the pipeline from scratch, with its own config, on M random subsets of the training
sentences. For a test prediction e (an entity the full pipeline predicts on held-out
text) the model output is its CRF segment loss l_e under each subset model m. An
attribution gives a score tau[e, i] per training sentence i (positive = i supports e:
including it lowers l_e), so its prediction for subset m is -sum_{i in m} tau[e, i].
LDS(e) is the Spearman correlation, across the M subsets, between the predicted and the
actual loss; the reported figure is its mean over test predictions with a bootstrap
interval.

The subset models are trained once and reused on a rerun (`training.train_pipeline`),
optionally in parallel processes.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from thinc.api import Config

from ..exceptions import ConfigError, DataError
from ..influence.segments import Segment


def subset_masks(n_docs: int, n_subsets: int, fraction: float, seed: int) -> numpy.ndarray:
    """[M, N] bool: M random subsets of round(fraction * N) training sentences each."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--fraction must be between 0 and 1 (exclusive), got {fraction}")
    if n_subsets < 3:
        raise ConfigError(f"--subsets must be at least 3 for a rank correlation, got {n_subsets}")
    size = int(round(fraction * n_docs))
    if not 0 < size < n_docs:
        raise DataError(f"A {fraction} subset of {n_docs} training sentences is empty or the whole corpus")
    rng = numpy.random.default_rng(seed)
    return numpy.stack([rng.permutation(n_docs) < size for _ in range(n_subsets)])


def ranks(values: numpy.ndarray) -> numpy.ndarray:
    """Ranks 0..n-1 along the last axis, ties sharing their mean rank (as Spearman needs)."""
    values = numpy.asarray(values, dtype=float)
    order = numpy.argsort(values, kind="stable")
    raw = numpy.empty(values.shape)
    raw[order] = numpy.arange(values.size)
    _, group, counts = numpy.unique(values, return_inverse=True, return_counts=True)
    return (numpy.bincount(group.reshape(-1), raw) / counts)[group.reshape(-1)]


def spearman(a: numpy.ndarray, b: numpy.ndarray) -> float:
    """Spearman's rank correlation; nan when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = numpy.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / scale) if scale > 0 else float("nan")


def lds_per_prediction(actual: numpy.ndarray, masks: numpy.ndarray, scores: numpy.ndarray) -> numpy.ndarray:
    """LDS of each test prediction [T]: Spearman, across subsets, between the actual
    losses `actual` [T, M] and the attribution's predicted loss -scores @ masks.T
    (`scores` [T, N] per training sentence, positive = supports). nan where the
    prediction is constant (e.g. the attribution gives that test prediction no score)."""
    if actual.shape[1] != masks.shape[0] or scores.shape[1] != masks.shape[1] or scores.shape[0] != actual.shape[0]:
        raise ValueError(f"shapes do not match: actual {actual.shape}, masks {masks.shape}, scores {scores.shape}")
    predicted = -(scores @ masks.T.astype(float))
    return numpy.array([spearman(actual[e], predicted[e]) for e in range(len(actual))])


@dataclass
class Summary:
    """Mean LDS over the test predictions where it is defined, with a bootstrap interval."""

    mean: float
    low: float
    high: float
    n_defined: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n_defined})"


def summarize(values: numpy.ndarray, n_boot: int = 1000, seed: int = 0) -> Summary:
    """The mean of the defined values and its 95% percentile-bootstrap interval."""
    defined = values[~numpy.isnan(values)]
    if not defined.size:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    rng = numpy.random.default_rng(seed)
    means = defined[rng.integers(0, defined.size, (n_boot, defined.size))].mean(axis=1)
    low, high = numpy.percentile(means, [2.5, 97.5])
    return Summary(float(defined.mean()), float(low), float(high), int(defined.size))


def paired_difference(a: numpy.ndarray, b: numpy.ndarray, n_boot: int = 1000, seed: int = 0) -> Summary:
    """Mean of a - b over the predictions where both are defined, with a bootstrap
    interval: how much attribution a beats b on the same test predictions."""
    both = ~numpy.isnan(a) & ~numpy.isnan(b)
    return summarize((a - b)[both], n_boot, seed)


def string_count_scores(
    train_docs: Sequence[Doc], test_docs: Sequence[Doc], test_segments: Sequence[Segment]
) -> numpy.ndarray:
    """The baseline every attribution must beat [T, N]: 1 where training sentence i has a
    gold entity with the test prediction's string and label, else 0."""
    keys: Dict[Tuple[str, str], List[int]] = {}
    for i, doc in enumerate(train_docs):
        for key in {(ent.text, ent.label_) for ent in doc.ents}:
            keys.setdefault(key, []).append(i)
    out = numpy.zeros((len(test_segments), len(train_docs)))
    for row, entity in enumerate(test_entities(test_docs, test_segments)):
        out[row, keys.get((entity.text, entity.label_), [])] = 1.0
    return out


def seed_noise_ceiling(actual: numpy.ndarray, repeats: Dict[int, numpy.ndarray]) -> Tuple[float, float]:
    """How much of the across-subset variance of each test loss is seed noise, from
    subsets m trained again with another seed (`repeats[m]` [T]): the median share of
    seed variance, and the LDS a perfect predictor of the seed-averaged loss could reach
    (mean over predictions of sqrt(1 - share), the attenuation of a correlation by noise)."""
    if not repeats:
        return float("nan"), float("nan")
    diffs = numpy.stack([repeats[m] - actual[:, m] for m in repeats])
    seed_var = (diffs**2).mean(axis=0) / 2
    total_var = actual.var(axis=1, ddof=1)
    share = numpy.clip(seed_var / numpy.maximum(total_var, 1e-12), 0.0, 1.0)
    return float(numpy.median(share)), float(numpy.mean(numpy.sqrt(1.0 - share)))


def predicted_test_segments(nlp: Language, ner_name: str, docs: Sequence[Doc]) -> Tuple[List[Doc], List[Segment]]:
    """The test predictions: the entities the pipeline predicts on `docs`, as reference docs
    labelled with those predictions and one segment per entity."""
    from ..ner.bridge import labelled as bridge_labelled
    from ..ner.bridge import unannotated

    labelled: List[Doc] = []
    segments: List[Segment] = []
    for predicted in nlp.pipe([unannotated(doc) for doc in docs]):
        segments.extend(Segment(len(labelled), e.start, e.end) for e in predicted.ents)
        labelled.append(bridge_labelled(predicted, predicted.ents))
    if not segments:
        raise DataError("The pipeline predicts no entities on the test sentences: LDS needs predictions")
    return labelled, segments


def subset_losses(
    model_paths: Sequence[Path], ner_name: str, test_docs: Sequence[Doc], test_segments: Sequence[Segment]
) -> numpy.ndarray:
    """[T, M]: each test prediction's CRF segment loss under each subset model."""
    import spacy

    from ..influence.segments import segment_losses
    from ..ner.bridge import crf_component, labelled_batch

    columns = []
    for path in model_paths:
        nlp = spacy.load(path)
        batch = labelled_batch(nlp, ner_name, [_copy(doc, nlp) for doc in test_docs])
        columns.append(segment_losses(crf_component(nlp, ner_name), batch, test_segments))
    return numpy.stack(columns, axis=1)


def _copy(doc: Doc, nlp: Language) -> Doc:
    """The doc in another pipeline's vocab, its entities kept."""
    return Doc(nlp.vocab).from_bytes(doc.to_bytes(exclude=["user_data"]))


def train_subset_models(
    config: Config,
    train_docs: Sequence[Doc],
    dev_path: Path,
    out_dir: Path,
    masks: numpy.ndarray,
    *,
    max_steps: Optional[int],
    seed: int = 0,
    seed_repeats: int = 0,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> Tuple[List[Path], Dict[int, Path]]:
    """Train (or reuse) one pipeline per subset (`subset-<m>/`), and subsets 0..r-1 again
    with seed + 1 (`subset-<m>-seed-<seed+1>/`) for the seed-noise ceiling. Returns the
    model paths and the repeats' paths by subset."""
    from ..training import TrainingJob, run_training_jobs

    jobs_list = []
    for m, mask in enumerate(masks):
        corpus = DocBin(docs=[d for d, keep in zip(train_docs, mask) if keep], store_user_data=True).to_bytes()
        size = int(mask.sum())
        jobs_list.append(
            TrainingJob(
                out_dir / f"subset-{m}",
                corpus,
                seed,
                max_steps,
                "model-last",
                f"subset {m}",
                f"training on {size} sentences",
            )
        )
    for m in range(min(seed_repeats, len(masks))):
        repeat = TrainingJob(
            out_dir / f"subset-{m}-seed-{seed + 1}",
            jobs_list[m].corpus,
            seed + 1,
            max_steps,
            "model-last",
            f"subset {m} seed {seed + 1}",
            jobs_list[m].training,
        )
        jobs_list.append(repeat)
    paths = run_training_jobs(config, jobs_list, Path(dev_path), n_processes=jobs, log=log)
    return paths[: len(masks)], {m: paths[len(masks) + m] for m in range(len(paths) - len(masks))}


ATTRIBUTIONS = {
    "string-count": "baseline: 1 per training sentence with a gold entity of the same string and label",
    "head": "the CRF head's gradients at the trained weights, K-FAC, cosine (segment_influence's defaults)",
    "embeddings": "gradients of the encoder's embedding rows at initial weights (an ensemble of --inits), 1/hits",
}


@dataclass
class LDSInputs:
    """What every attribution is computed from."""

    nlp: Language
    ner_name: str
    config: Config
    train_path: Path
    train_docs: List[Doc]
    test_docs: List[Doc]
    test_segments: List[Segment]
    n_inits: int = 1  # the `embeddings` attribution's ensemble of initialisations


def per_sentence(scores: numpy.ndarray, doc_index: Sequence[int], n_docs: int) -> numpy.ndarray:
    """[T, N]: scores per training segment [T, S] summed per training sentence."""
    out = numpy.zeros((scores.shape[0], n_docs))
    numpy.add.at(out.T, numpy.asarray(doc_index, dtype=numpy.int64), scores.T)
    return out


def attribution_scores(name: str, inputs: LDSInputs) -> numpy.ndarray:
    """[T, N] scores of the attribution `name` (see ATTRIBUTIONS) per training sentence."""
    if name == "string-count":
        return string_count_scores(inputs.train_docs, inputs.test_docs, inputs.test_segments)
    if name == "head":
        return _head_scores(inputs)
    if name == "embeddings":
        from ..influence.encoder_influence import initial_embedding_scores

        train_segments = [Segment(i, e.start, e.end) for i, doc in enumerate(inputs.train_docs) for e in doc.ents]
        scores = initial_embedding_scores(
            inputs.config,
            inputs.train_path,
            inputs.ner_name,
            (inputs.train_docs, train_segments),
            (inputs.test_docs, inputs.test_segments),
            inputs.n_inits,
        )
        return per_sentence(scores, [s.doc_index for s in train_segments], len(inputs.train_docs))
    raise ConfigError(f"Unknown attribution {name!r}; choose from {', '.join(ATTRIBUTIONS)}")


def _head_scores(inputs: LDSInputs) -> numpy.ndarray:
    from ..pipeline.component import SegmentInfluence

    component = SegmentInfluence(inputs.nlp, "lds_head", ner=inputs.ner_name)
    component.initialize(lambda: [], train_path=inputs.train_path, show_progress=False)
    scores = component.scores(test_entities(inputs.test_docs, inputs.test_segments))
    assert component.index is not None
    doc_index = [record["doc_index"] for record in component.index.metadata]
    return per_sentence(scores, doc_index, len(inputs.train_docs))


def test_entities(docs: Sequence[Doc], segments: Sequence[Segment]) -> List[Span]:
    """The labelled entity span of each test segment."""
    found = {(i, e.start, e.end): e for i, doc in enumerate(docs) for e in doc.ents}
    return [found[(s.doc_index, s.start, s.end)] for s in segments]


def run_lds(
    nlp: Language,
    config: Config,
    train_path: Path,
    dev_path: Path,
    out_dir: Path,
    *,
    ner_name: str,
    methods: Sequence[str] = tuple(ATTRIBUTIONS),
    n_subsets: int = 16,
    fraction: float = 0.5,
    max_steps: Optional[int] = None,
    seed: int = 0,
    n_test: int = 200,
    seed_repeats: int = 2,
    jobs: int = 1,
    n_inits: int = 4,
    log: Callable[[str], None] = print,
) -> dict:
    """LDS of each attribution in `methods` against retraining the pipeline with `config`
    on `n_subsets` random `fraction`s of the training corpus (models under `out_dir`,
    reused on a rerun); the test predictions are the pipeline's entities on the first
    `n_test` sentences of `dev_path`. Returns per method the mean LDS with its interval,
    its per-prediction values, the difference to the string-count baseline, and the
    seed-noise ceiling."""
    from ..corpus import read_docbin

    _check_methods(nlp, ner_name, methods)
    train_docs = read_docbin(Path(train_path), nlp.vocab)
    dev_docs = read_docbin(Path(dev_path), nlp.vocab)[:n_test]
    masks = subset_masks(len(train_docs), n_subsets, fraction, seed)
    test_docs, test_segments = predicted_test_segments(nlp, ner_name, dev_docs)
    log(
        f"{len(test_segments)} test predictions on {len(dev_docs)} dev sentences; {n_subsets} subsets of "
        f"{int(masks[0].sum())} of {len(train_docs)} training sentences, plus {seed_repeats} seed repeats"
    )
    paths, repeat_paths = train_subset_models(
        config,
        train_docs,
        Path(dev_path),
        Path(out_dir),
        masks,
        max_steps=max_steps,
        seed=seed,
        seed_repeats=seed_repeats,
        jobs=jobs,
        log=log,
    )
    actual = subset_losses(paths, ner_name, test_docs, test_segments)
    repeats = {m: subset_losses([p], ner_name, test_docs, test_segments)[:, 0] for m, p in repeat_paths.items()}
    seed_share, ceiling = seed_noise_ceiling(actual, repeats)
    inputs = LDSInputs(nlp, ner_name, config, Path(train_path), train_docs, test_docs, test_segments, n_inits)
    values = {name: lds_per_prediction(actual, masks, attribution_scores(name, inputs)) for name in methods}
    settings: Dict[str, Any] = {"n_subsets": n_subsets, "fraction": fraction, "max_steps": max_steps, "seed": seed}
    settings.update(n_train=len(train_docs), n_inits=n_inits, n_test_predictions=len(test_segments))
    settings.update(seed_repeats=len(repeats), seed_variance_share=seed_share, noise_ceiling=ceiling)
    return _json_safe({"methods": _method_entries(values), "settings": settings})


def _check_methods(nlp: Language, ner_name: str, methods: Sequence[str]) -> None:
    """ConfigError for an unknown attribution, or embeddings without embedding tables: before
    any training, not after."""
    unknown = [m for m in methods if m not in ATTRIBUTIONS]
    if unknown:
        raise ConfigError(f"Unknown attribution(s) {', '.join(unknown)}; choose from {', '.join(ATTRIBUTIONS)}")
    if "embeddings" in methods:
        from ..influence.encoder_influence import require_embedding_tables

        require_embedding_tables(nlp, ner_name)


def _method_entries(values: Dict[str, numpy.ndarray]) -> Dict[str, dict]:
    """Per attribution: its LDS summary and per-prediction values, and against the
    string-count baseline (when it ran) where that is defined, and the paired difference."""
    baseline = values.get("string-count")
    entries = {}
    for name, per_prediction in values.items():
        entry = {"lds": vars(summarize(per_prediction)), "per_prediction": per_prediction.tolist()}
        if baseline is not None and name != "string-count":
            defined = ~numpy.isnan(baseline)
            entry["lds_where_baseline_defined"] = vars(summarize(per_prediction[defined]))
            entry["minus_baseline"] = vars(paired_difference(per_prediction, baseline))
        entries[name] = entry
    return entries


def _json_safe(value):
    """nan (undefined) as None, which JSON can hold."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
