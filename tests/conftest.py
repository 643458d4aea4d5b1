"""Shared fixtures: tiny pipelines and a tiny random BERT built in a tmp dir (no hub)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import List, Tuple  # noqa: E402

import pytest  # noqa: E402
import spacy  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Config, fix_random_seed  # noqa: E402

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
