"""Train pipelines with the user's own config on other corpora (fold models, LDS subset
models) through spaCy's training API (`spacy.cli.train.train`), so that each is the
user's model trained on different data, not a different model.

A job's output folder holds its corpus, config and spaCy's `model-best`/`model-last`,
and a `key.json` with the hash of config, corpus, dev corpus, steps and seed: a job whose
key is unchanged is reused, so a rerun trains nothing twice. Jobs run in this process or
in `jobs` spawned processes (torch hangs under fork).
"""

import hashlib
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from thinc.api import Config

from .exceptions import ConfigError


@dataclass
class TrainingJob:
    """One pipeline to train: its output folder, training corpus (DocBin bytes), seed,
    step limit (None: the config's) and which of spaCy's outputs is the result
    ("model-best", chosen on the dev corpus, or "model-last", the weights after the last
    step)."""

    out: Path
    corpus: bytes
    seed: int
    max_steps: Optional[int]
    result: str = "model-best"
    name: str = "pipeline"  # in the log: "[2/4] fold 1 seed 0: training on ..."
    training: str = "training"

    @property
    def model_path(self) -> Path:
        return self.out / self.result


def run_training_jobs(
    config: Config,
    jobs: Sequence[TrainingJob],
    dev_path: Path,
    *,
    n_processes: int = 1,
    gpu_id: int = -1,
    log: Callable[[str], None] = print,
) -> List[Path]:
    """Train every job not already done with `config`; returns their model paths in order."""
    if n_processes < 1:
        raise ConfigError(f"--jobs must be at least 1, got {n_processes}")
    config_text = config.to_str()
    dev_hash = file_hash(Path(dev_path))
    todo = []
    for number, job in enumerate(jobs, 1):
        key = job_key(config_text, job, dev_hash)
        if _reusable(job.out, key):
            log(f"[{number}/{len(jobs)}] {job.name}: reusing {job.model_path}")
        else:
            todo.append((number, job, key))
    if n_processes == 1 or len(todo) < 2:
        for number, job, key in todo:
            log(f"[{number}/{len(jobs)}] {job.name}: {job.training} -> {job.out}")
            _train(config_text, job, str(dev_path), key, gpu_id)
    else:
        log(f"Training {len(todo)} pipelines in {n_processes} processes")
        with ProcessPoolExecutor(n_processes, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_train, config_text, job, str(dev_path), key, gpu_id) for _, job, key in todo]
            for (number, job, _), future in zip(todo, futures):
                future.result()
                log(f"[{number}/{len(jobs)}] {job.name}: trained -> {job.out}")
    return [job.model_path for job in jobs]


def job_key(config_text: str, job: TrainingJob, dev_hash: str) -> dict:
    return {
        "config": hashlib.sha256(config_text.encode()).hexdigest(),
        "train": hashlib.sha256(job.corpus).hexdigest(),
        "dev": dev_hash,
        "max_steps": job.max_steps,
        "seed": job.seed,
    }


def _train(config_text: str, job: TrainingJob, dev_path: str, key: dict, gpu_id: int) -> None:
    from spacy.cli.train import train as spacy_train

    config = Config().from_str(config_text, interpolate=False)
    out = job.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "train.spacy").write_bytes(job.corpus)
    config_path = out / "config.cfg"
    config.to_disk(config_path)
    overrides = {"paths.train": str(out / "train.spacy"), "paths.dev": dev_path, "training.seed": job.seed}
    if job.max_steps is not None:
        overrides["training.max_steps"] = job.max_steps
        schedule = config["training"].get("optimizer", {}).get("learn_rate")
        if isinstance(schedule, dict) and "total_steps" in schedule:
            # a pipeline saves its schedule's total_steps as a number (callbacks.resolved_optimizer)
            overrides["training.optimizer.learn_rate.total_steps"] = job.max_steps
    spacy_train(config_path, out, use_gpu=gpu_id, overrides=overrides)
    (out / "key.json").write_text(json.dumps(key))


def _reusable(out: Path, key: dict) -> bool:
    try:
        return json.loads((out / "key.json").read_text()) == key and (out / "model-last" / "config.cfg").is_file()
    except (OSError, ValueError):
        return False


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The factory of the components a training config leaves out
INFLUENCE_FACTORY = "segment_influence"


def training_config(config: Config) -> Config:
    """A trained pipeline's config as a training config: the `segment_influence`
    components (they index a training corpus at initialization, which fold training does
    not need) left out."""
    config = Config(config).copy()
    components = config.get("components", {})
    dropped = [name for name, block in components.items() if block.get("factory") == INFLUENCE_FACTORY]
    for name in dropped:
        del components[name]
    config["nlp"]["pipeline"] = [name for name in config["nlp"]["pipeline"] if name not in dropped]
    init_components = config.get("initialize", {}).get("components", {})
    for name in dropped:
        init_components.pop(name, None)
    if "training" not in config:
        raise ConfigError("The pipeline's config has no [training] section: pass a training config (--fold-config)")
    frozen = config["training"].get("frozen_components", [])
    annotating = config["training"].get("annotating_components", [])
    config["training"]["frozen_components"] = [name for name in frozen if name not in dropped]
    config["training"]["annotating_components"] = [name for name in annotating if name not in dropped]
    return config
