"""Reads a peer input directory (inputs.json + arrays.npz, the contract in README.md) into one object.

Everything the detectors need is derived here once, so that each runner sees the same labels, probabilities and
sentence boundaries: BIO tag strings, the class-level view (B-X and I-X summed), and per-sentence slices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np


@dataclass
class PeerInput:
    tag_names: List[str]
    class_names: List[str]
    sentence_ids: List[str]
    tokens: List[List[str]]
    members: List[str]
    offsets: np.ndarray  # [S + 1]
    gold: np.ndarray  # [N] BIO tag ids
    probs: np.ndarray  # [N, T]
    pred: np.ndarray  # [N]
    member_probs: np.ndarray  # [M, N, T]
    member_pred: np.ndarray  # [M, N]
    features: np.ndarray  # [N, E]
    candidates: np.ndarray  # [C, 3] sentence, start, end (exclusive)
    tag_to_class: np.ndarray = field(init=False)  # [T] class id of each BIO tag

    def __post_init__(self) -> None:
        index = {name: i for i, name in enumerate(self.class_names)}
        self.tag_to_class = np.array([index[_entity_type(t)] for t in self.tag_names], dtype=np.int64)
        self.validate()

    @property
    def n_sentences(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def sentence_of_token(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_sentences), self.sizes)

    @property
    def flat_tokens(self) -> List[str]:
        return [t for sentence in self.tokens for t in sentence]

    @property
    def gold_tags(self) -> np.ndarray:
        return np.asarray(self.tag_names, dtype=object)[self.gold]

    @property
    def pred_tags(self) -> np.ndarray:
        return np.asarray(self.tag_names, dtype=object)[self.pred]

    @property
    def gold_class(self) -> np.ndarray:
        return self.tag_to_class[self.gold]

    def class_probs(self, probs: np.ndarray) -> np.ndarray:
        """Sums the BIO columns of each entity type: [..., T] -> [..., K]."""
        out = np.zeros(probs.shape[:-1] + (len(self.class_names),), dtype=np.float64)
        for tag, cls in enumerate(self.tag_to_class):
            out[..., cls] += probs[..., tag]
        # sums of float32 columns can exceed 1 by 1e-7; cleanlab's entropy scores refuse p > 1
        return np.clip(out, 0.0, 1.0)

    def ragged(self, flat: np.ndarray) -> List[np.ndarray]:
        """Splits a per-token array into one array per sentence."""
        return [flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def candidate_token_rows(self) -> List[np.ndarray]:
        """Flat token rows of each candidate span."""
        starts = self.offsets[self.candidates[:, 0]]
        return [np.arange(s + a, s + b) for s, (_, a, b) in zip(starts, self.candidates)]

    def validate(self) -> None:
        n, t = self.probs.shape
        assert self.tag_names[0] == "O" and self.class_names[0] == "O", "O must be the first tag and class"
        assert self.offsets[0] == 0 and self.offsets[-1] == n and np.all(np.diff(self.offsets) > 0)
        assert len(self.tokens) == len(self.sentence_ids) == self.n_sentences
        assert [len(s) for s in self.tokens] == self.sizes.tolist(), "tokens disagree with offsets"
        assert t == len(self.tag_names) and self.gold.shape == self.pred.shape == (n,)
        assert self.member_probs.shape[1:] == (n, t) and self.member_pred.shape == self.member_probs.shape[:2]
        assert self.member_probs.shape[0] == len(self.members) >= 1
        assert self.features.shape[0] == n
        c = self.candidates
        assert c.ndim == 2 and c.shape[1] == 3
        assert np.all((c[:, 1] >= 0) & (c[:, 1] < c[:, 2]) & (c[:, 2] <= self.sizes[c[:, 0]])), "bad candidate span"


def _entity_type(tag: str) -> str:
    return tag if tag == "O" else tag.split("-", 1)[1]


def load_peer_input(path: Path) -> PeerInput:
    """Loads `path/inputs.json` and `path/arrays.npz`."""
    meta = json.loads((Path(path) / "inputs.json").read_text())
    with np.load(Path(path) / "arrays.npz") as arrays:
        a = {k: arrays[k] for k in arrays.files}
    return PeerInput(
        tag_names=list(meta["tag_names"]),
        class_names=list(meta["class_names"]),
        sentence_ids=list(meta["sentence_ids"]),
        tokens=[list(s) for s in meta["tokens"]],
        members=list(meta["members"]),
        offsets=a["offsets"].astype(np.int64),
        gold=a["gold"].astype(np.int64),
        probs=a["probs"].astype(np.float64),
        pred=a["pred"].astype(np.int64),
        member_probs=a["member_probs"].astype(np.float32),
        member_pred=a["member_pred"].astype(np.int64),
        features=a["features"].astype(np.float32),
        candidates=a["candidates"].astype(np.int64).reshape(-1, 3),
    )


def save_peer_input(path: Path, meta: dict, arrays: dict) -> None:
    """Writes a peer input directory (used by the generator; the lead's exporter writes the same files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "inputs.json").write_text(json.dumps(meta))
    np.savez_compressed(path / "arrays.npz", **arrays)
