"""Shared fixtures and data: tiny pipelines and a tiny random BERT built in a tmp dir (no hub), random
factored gradients, review records, JSONL sentences and a corpus with one wrong annotation. Test modules
mirror the package's wings (tests/storage, tests/ner, ...) and share data through this module only."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import List, Tuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import spacy  # noqa: E402
from spacy.tokens import Doc, DocBin, Span  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Config, fix_random_seed  # noqa: E402

from spacy_segment_influence.annotation_errors import find_candidates, review_record  # noqa: E402
from spacy_segment_influence.influence.curvature import ExactCurvature, KFACCurvature  # noqa: E402
from spacy_segment_influence.influence.gradients import FactoredGradients, WindowLabels  # noqa: E402
from spacy_segment_influence.influence.index import SegmentIndex  # noqa: E402

TRAIN_DATA: List[Tuple[str, List[Tuple[int, int, str]]]] = [
    ("Peter Smith lives in New York City .", [(0, 11, "PER"), (21, 34, "LOC")]),
    ("Apple bought IBM last year .", [(0, 5, "ORG"), (13, 16, "ORG")]),
    ("Anna Berg visited Paris .", [(0, 9, "PER"), (18, 23, "LOC")]),
    ("The Olympics start in Rome .", [(4, 12, "MISC"), (22, 26, "LOC")]),
    ("Nothing to see here .", []),
]

# The shared tok2vec of the tiny test pipelines.
TOK2VEC_BLOCK = """
[components.tok2vec]
factory = "tok2vec"

[components.tok2vec.model]
@architectures = "spacy.HashEmbedCNN.v2"
pretrained_vectors = null
width = 16
depth = 1
embed_size = 300
window_size = 1
maxout_pieces = 2
subword_features = true
"""

TOK2VEC_CONFIG = (
    """
[nlp]
lang = "en"
pipeline = ["tok2vec", "crf_ner"]

[components]

"""
    + TOK2VEC_BLOCK
    + """
[components.crf_ner]
factory = "crf_ner"
scheme = "{scheme}"

[components.crf_ner.model]
@architectures = "spacy-segment-influence.CRFTagger.v1"

[components.crf_ner.model.tok2vec]
@architectures = "spacy.Tok2VecListener.v1"
width = 16
upstream = "tok2vec"
"""
)

TRF_CONFIG = """
[nlp]
lang = "en"
pipeline = ["transformer", "crf_ner"]

[components]

[components.transformer]
factory = "transformer"
max_batch_items = 4096

[components.transformer.model]
@architectures = "spacy-transformers.TransformerModel.v3"
name = "{name}"
mixed_precision = false
tokenizer_config = {{"use_fast": true}}
transformer_config = {{}}
grad_scaler_config = {{}}

[components.transformer.model.get_spans]
@span_getters = "spacy-transformers.strided_spans.v1"
window = 16
stride = 12

[components.crf_ner]
factory = "crf_ner"

[components.crf_ner.model]
@architectures = "spacy-segment-influence.CRFTagger.v1"

[components.crf_ner.model.tok2vec]
@architectures = "spacy-transformers.TransformerListener.v1"
grad_factor = 1.0
upstream = "*"

[components.crf_ner.model.tok2vec.pooling]
@layers = "reduce_mean.v1"
"""


def make_examples(nlp, data=TRAIN_DATA) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def train(nlp, examples, steps: int = 40, seed: int = 0):
    fix_random_seed(seed)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer, losses={})
    return nlp


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 1-layer random BERT with a small word-level vocab, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny_bert")
    words = {w.lower() for text, _ in TRAIN_DATA for w in text.split()}
    pieces = ["##s", "##e", "##a", "##n", "##t"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *sorted(words | set(pieces))]
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    fix_random_seed(0)
    BertModel(config).save_pretrained(path)
    return path


def tok2vec_nlp(scheme: str = "BILUO"):
    return spacy.util.load_model_from_config(
        Config().from_str(TOK2VEC_CONFIG.replace("{scheme}", scheme)), auto_fill=True
    )


def trf_nlp(model_dir: Path):
    return spacy.util.load_model_from_config(Config().from_str(TRF_CONFIG.format(name=model_dir)), auto_fill=True)


@pytest.fixture(scope="session")
def trained_tok2vec_nlp():
    nlp = tok2vec_nlp()
    return train(nlp, make_examples(nlp), steps=60)


# -- random factored gradients: the index, shard and distributed tests ---------------------
E, C = 7, 5
D = C * C + 2 * C
P = C * E + D
DAMPING = 0.1


def make_grads(rng, n_segments, max_len=4):
    """Random segments of 1..max_len tokens, with the marginals that made r."""
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, max_len + 1, n_segments))])
    n = offsets[-1]
    h = np.concatenate([rng.normal(size=(n, E - 1)), np.ones((n, 1))], axis=1)
    marginals = rng.dirichlet(np.ones(C), size=n)
    r = marginals - np.eye(C)[rng.integers(0, C, n)]
    # Dense blocks as the bridge makes them: mostly zeros, some columns never
    # used (forbidden transitions), some segments with no dense entry at all.
    dense = rng.normal(size=(n_segments, D)) * (rng.random((n_segments, D)) < 0.3)
    dense[:, [0, 3, D - 1]] = 0.0
    dense[::7] = 0.0
    return FactoredGradients(h, r, offsets, dense), marginals


def random_index(curvature, dtype="float32"):
    """A random 50-segment index (with window labels for exact curvature) and 9 random queries."""
    rng = np.random.default_rng(3)
    train, marginals = make_grads(rng, 50)
    queries, _ = make_grads(rng, 9)
    if curvature == "exact":
        root = rng.normal(size=(P, P))
        fitted = ExactCurvature(root @ root.T / P, DAMPING, C, E)
        windows = WindowLabels(rng.integers(-1, C, len(train.h)).astype(np.int16), rng.integers(0, 9, (50, 4)))
    else:
        fitted, windows = KFACCurvature.from_tokens(train.h, marginals, train.dense, DAMPING), None
    metadata = [{"segment": i} for i in range(len(train))]
    return SegmentIndex.build(train, metadata, fitted, True, dtype, windows), queries


# -- review records as find-errors writes them: the review page, input and kill tests ------
EVIL = "<img/src=x/onerror=alert(9)>"
HELD_OUT = [
    {
        "doc_id": "dev_3_1",
        "text": "Leeds",
        "left": "Fans of",
        "right": "cheered .",
        "label": "ORG",
        "predicted": "LOC",
        "correct": False,
        "score": 0.42,
    },
    {
        "doc_id": "dev_4_0",
        "text": "Paris",
        "left": "",
        "right": "is big .",
        "label": "LOC",
        "predicted": "LOC",
        "correct": True,
        "score": -0.9,
    },
]
REVIEW_SENTENCES = [
    # words, gold entities, predicted entities (token start, end exclusive, label)
    (
        "Shares in Sunvale Foods rose in Leeds ; <Monaco> & Co hired Anna Berg .".split(),
        [(3, 4, "ORG"), (6, 7, "LOC"), (8, 11, "ORG"), (12, 14, "PER")],
        [(0, 1, "MISC"), (2, 4, "ORG"), (6, 7, "ORG"), (12, 14, "PER")],
    ),
    ("Visit </script><script>alert(1)</script> Paris now".split(), [(1, 2, EVIL)], [(1, 2, "LOC")]),
]


def ranking():
    """Review records as find-errors writes them: all candidates of REVIEW_SENTENCES, scored so
    that they are ranked in an order that mixes the sentences."""
    vocab = spacy.blank("en").vocab
    found = []
    for i, (words, gold, predicted) in enumerate(REVIEW_SENTENCES):
        doc = Doc(vocab, words=words)
        doc.user_data["id"] = f"demo_train_5_{i}"
        found += [(doc, candidate) for candidate in find_candidates(i, gold, predicted)]
    order = [2, 5, 0, 4, 1, 3]  # rank of each candidate - 1
    records = [None] * len(found)
    for (doc, candidate), position in zip(found, order):
        ranking = {"score": 10.0 - position, "method": "influence", "rank": position + 1, "candidates": len(found)}
        records[position] = review_record(doc, candidate, ranking, HELD_OUT if position == 0 else [])
    return records


# -- JSONL sentences and cut rankings: the input checks and the kill tests -----------------
JSONL_SENTENCES = [
    {"id": "a_0", "tokens": ["Anna", "visited", "Rome"], "ner_tags": ["B-PER", "O", "B-LOC"]},
    {"id": "a_1", "tokens": ["Bob", "left", "Oslo"], "ner_tags": ["B-PER", "O", "B-LOC"]},
]


def ranked_lines(*regions):
    return [
        {
            "meta": {"doc_id": sid, "rank": i + 1, "candidates": len(regions)},
            "spans": [{"token_start": s, "token_end": e}],
        }
        for i, (sid, s, e) in enumerate(regions)
    ]


# -- a tiny corpus with one wrong annotation: the error-finder and review-loop tests --------
# "Anna Berg visited Paris ." with Paris mislabelled PER: the one wrong annotation.
NOISY_DOC, NOISY_SPAN = 2, (3, 4)


@pytest.fixture(scope="module")
def nlp():
    nlp = tok2vec_nlp()
    return train(nlp, make_examples(nlp), steps=60)


def gold_docs(nlp):
    docs = [eg.reference for eg in make_examples(nlp)]
    for i, doc in enumerate(docs):
        doc.user_data["id"] = f"demo_train_{i}_0"
    return docs


def noisy_docs(nlp):
    docs = gold_docs(nlp)
    doc = docs[NOISY_DOC]
    doc.ents = [ent if (ent.start, ent.end) != NOISY_SPAN else Span(doc, *NOISY_SPAN, label="PER") for ent in doc.ents]
    return docs


def write_corpus(docs, path):
    DocBin(docs=docs, store_user_data=True).to_disk(path)
    return path


def _chromium_driver():
    """scripts/check_report_in_browser.py, the headless-Chromium driver the browser tests share."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_report_in_browser", Path(__file__).resolve().parents[1] / "scripts" / "check_report_in_browser.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chromium = _chromium_driver()
