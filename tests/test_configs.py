"""The shipped configs: a pipeline trained with them can be trained further, and fold
models trained from its config follow their own number of steps."""

from pathlib import Path

import pytest
import spacy
from spacy.cli.train import train
from spacy.tokens import DocBin
from thinc.api import Config

from spacy_segment_influence.annotation_errors.fold_training import train_fold_models
from spacy_segment_influence.training import training_config

from .conftest import TRAIN_DATA, make_examples

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["crf_ner_trf.cfg", "ner_builtin_trf.cfg"])
def test_trained_pipeline_resumes_training(tmp_path, tiny_bert_dir, name):
    """`total_steps = ${training.max_steps}` must not reach the saved pipeline unresolved:
    `nlp.resume_training()` resolves the optimizer on its own."""
    nlp = spacy.blank("en")
    docs = []
    for text, entities in TRAIN_DATA:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in entities]
        docs.append(doc)
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    config = Config().from_disk(CONFIGS / name, interpolate=False)
    config["components"]["transformer"]["model"]["name"] = str(tiny_bert_dir)
    config["components"]["transformer"]["model"]["get_spans"].update(window=16, stride=12)
    config.to_disk(tmp_path / "config.cfg")
    overrides = {
        "paths.train": str(tmp_path / "train.spacy"),
        "paths.dev": str(tmp_path / "train.spacy"),
        "training.max_steps": 3,
        "training.eval_frequency": 3,
        "system.gpu_allocator": None,
    }
    train(tmp_path / "config.cfg", tmp_path / "out", overrides=overrides)

    trained = spacy.load(tmp_path / "out" / "model-last")
    optimizer = trained.resume_training()
    assert trained.config["training"]["optimizer"]["learn_rate"]["total_steps"] == 3
    losses: dict = {}
    trained.update(make_examples(trained), sgd=optimizer, losses=losses)
    optimizer.step_schedules()
    assert optimizer.learn_rate > 0 and losses

    fold_config = training_config(trained.config)
    folds = train_fold_models(fold_config, docs, tmp_path / "train.spacy", tmp_path / "folds", max_steps=2, log=str)
    for fold in folds:
        assert spacy.load(fold.path).config["training"]["optimizer"]["learn_rate"]["total_steps"] == 2


@pytest.mark.parametrize("name", ["crf_ner_trf.cfg", "ner_builtin_trf.cfg"])
def test_transformer_configs_show_training_progress(name):
    """A transformer's first evaluation comes minutes into training on CPU: a progress bar
    shows it is running."""
    config = Config().from_disk(CONFIGS / name, interpolate=False)
    assert config["training"]["logger"]["progress_bar"] is True
