"""Writes a peer input directory from a simulated tagger, for developing and testing the runner.

The model outputs are simulated, not trained: each token's probabilities peak on its true tag (or, for a share of
tokens, on a wrong one, like a confused model), members are independent draws, features are a token-type vector
plus a tag vector plus noise. Two sources of sentences:

- synthetic (default): random sentences over a small vocabulary; `--plant K` relabels K given entities with
  another type while every member predicts the true type confidently; their candidate indices go to planted.json;
- `--given FILE.jsonl [--true FILE.jsonl]` (records with "tokens" and "ner_tags", as shared/data/conll2003): real
  text and tags, the simulated model peaking on the `--true` tags, for CoNLL-sized timing runs.

    python bench/peers/make_peer_input.py OUT_DIR [--sentences 300] [--members 3] [--plant 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Set, Tuple

import numpy as np
from peer_input import save_peer_input

TYPES = ["PER", "LOC", "ORG", "MISC"]
TAGS = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"]


def entities(tags: List[str]) -> List[Tuple[int, int, str]]:
    """(start, end exclusive, type) of each BIO entity; a stray I- starts one."""
    out, start, kind = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        if start is not None and (tag == "O" or tag.startswith("B-") or tag[2:] != kind):
            out.append((start, i, kind))
            start = None
        if tag != "O" and start is None:
            start, kind = i, tag[2:]
    return out


def synthetic_sentences(rng: np.random.Generator, n: int) -> Tuple[List[List[str]], List[List[str]]]:
    """Random sentences: filler words and entities drawn from per-type name lists (so surface forms repeat)."""
    names = {t: [f"{t.lower()}{i}" for i in range(40)] for t in TYPES}
    filler = [f"w{i}" for i in range(300)]
    tokens, tags = [], []
    for _ in range(n):
        sent_tokens, sent_tags = [], []
        for _ in range(rng.integers(4, 20)):
            if rng.random() < 0.15:
                kind = TYPES[rng.integers(len(TYPES))]
                for j in range(rng.integers(1, 4)):
                    sent_tokens.append(names[kind][rng.integers(len(names[kind]))])
                    sent_tags.append(("B-" if j == 0 else "I-") + kind)
            else:
                sent_tokens.append(filler[min(int(rng.zipf(1.3)), len(filler)) - 1])
                sent_tags.append("O")
        tokens.append(sent_tokens)
        tags.append(sent_tags)
    return tokens, tags


def read_jsonl(path: Path) -> Tuple[List[str], List[List[str]], List[List[str]]]:
    ids, tokens, tags = [], [], []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        ids.append(record["id"])
        tokens.append(record["tokens"])
        tags.append(record["ner_tags"])
    return ids, tokens, tags


def plant(rng: np.random.Generator, tags: List[List[str]], k: int) -> List[Tuple[int, int, int]]:
    """Relabels k given entities with another type, in place; returns their (sentence, start, end)."""
    spans = [(i, a, b, t) for i, s in enumerate(tags) for a, b, t in entities(s)]
    planted = []
    for idx in rng.choice(len(spans), size=k, replace=False):
        i, a, b, kind = spans[idx]
        other = [t for t in TYPES if t != kind][rng.integers(len(TYPES) - 1)]
        tags[i][a:b] = [("B-" if j == a else "I-") + other for j in range(a, b)]
        planted.append((i, a, b))
    return planted


def simulate_member(rng: np.random.Generator, true: np.ndarray, model_error: float, sure: np.ndarray) -> np.ndarray:
    """One model's token probabilities [N, T]: peaked on the true tag, or on a wrong one for confused tokens."""
    n, t = len(true), len(TAGS)
    probs = rng.dirichlet(np.ones(t), size=n) * 0.5 + 1e-4
    peak = true.copy()
    confused = (rng.random(n) < model_error) & ~sure
    peak[confused] = (true[confused] + rng.integers(1, t, size=int(confused.sum()))) % t
    confidence = np.where(confused, rng.uniform(0.4, 0.6, n), rng.beta(8, 1, n))
    confidence[sure] = 0.99
    probs *= ((1 - confidence) / probs.sum(1))[:, None]
    probs[np.arange(n), peak] += confidence
    probs[confused, true[confused]] += 0.3 * (1 - confidence[confused])  # a confused model still leans to the truth
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def build(
    tokens: List[List[str]],
    given: List[List[str]],
    true: List[List[str]],
    ids: List[str],
    members: int,
    model_error: float,
    dim: int,
    rng: np.random.Generator,
    sure_spans: Optional[Set[Tuple[int, int, int]]] = None,
) -> Tuple[dict, dict]:
    tag_id = {t: i for i, t in enumerate(TAGS)}
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in tokens])]).astype(np.int64)
    gold = np.array([tag_id[t] for s in given for t in s], dtype=np.int64)
    truth = np.array([tag_id[t] for s in true for t in s], dtype=np.int64)
    sure = np.zeros(len(gold), dtype=bool)
    for i, a, b in sure_spans or ():
        sure[offsets[i] + a : offsets[i] + b] = True
    member_probs = np.stack([simulate_member(rng, truth, model_error, sure) for _ in range(members)])
    probs = member_probs.mean(0)
    pred = probs.argmax(1)
    flat = [w.lower() for s in tokens for w in s]
    vocab = {w: i for i, w in enumerate(sorted(set(flat)))}
    word_vectors = rng.normal(size=(len(vocab), dim)).astype(np.float32)
    tag_vectors = rng.normal(size=(len(TAGS), dim)).astype(np.float32) * 2
    features = (
        0.5 * word_vectors[[vocab[w] for w in flat]]
        + tag_vectors[truth]
        + rng.normal(size=(len(flat), dim)).astype(np.float32)
    )
    candidates = set()
    for i in range(len(tokens)):
        pred_tags = [TAGS[p] for p in pred[offsets[i] : offsets[i + 1]]]
        gold_spans = entities(given[i])
        candidates |= {(i, a, b) for a, b, _ in gold_spans}
        candidates |= {(i, a, b) for a, b, t in entities(pred_tags) if (a, b, t) not in gold_spans}
    meta = {
        "tag_names": TAGS,
        "class_names": ["O"] + TYPES,
        "sentence_ids": ids,
        "tokens": tokens,
        "members": [f"simulated_{m}" for m in range(members)],
    }
    arrays = {
        "offsets": offsets,
        "gold": gold,
        "probs": probs.astype(np.float32),
        "pred": pred.astype(np.int64),
        "member_probs": member_probs,
        "member_pred": member_probs.argmax(2).astype(np.int64),
        "features": features.astype(np.float32),
        "candidates": np.array(sorted(candidates), dtype=np.int64).reshape(-1, 3),
    }
    return meta, arrays


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sentences", type=int, default=300, help="synthetic sentences (or the first N of --given)")
    parser.add_argument("--given", type=Path, help="JSONL with the given (possibly wrong) tags")
    parser.add_argument("--true", type=Path, help="JSONL with the tags the simulated model learned (default: given)")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--plant", type=int, default=1, help="synthetic only: entities relabelled with another type")
    parser.add_argument("--model-error", type=float, default=0.02, help="share of tokens the model is confused on")
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    planted: List[Tuple[int, int, int]] = []
    if args.given:
        ids, tokens, given = read_jsonl(args.given)
        true = read_jsonl(args.true)[2] if args.true else [list(s) for s in given]
        ids, tokens, given, true = (x[: args.sentences] if args.sentences else x for x in (ids, tokens, given, true))
    else:
        tokens, true = synthetic_sentences(rng, args.sentences)
        given = [list(s) for s in true]
        planted = plant(rng, given, args.plant)
        ids = [f"synthetic_{i}" for i in range(len(tokens))]
    meta, arrays = build(tokens, given, true, ids, args.members, args.model_error, args.dim, rng, set(planted))
    save_peer_input(args.out, meta, arrays)
    index = {tuple(c): i for i, c in enumerate(arrays["candidates"].tolist())}
    (args.out / "planted.json").write_text(
        json.dumps(
            {
                "candidates": [index[p] for p in planted],
                "sentences": sorted({p[0] for p in planted}),
            }
        )
    )
    print(
        f"{args.out}: {len(tokens)} sentences, {len(arrays['gold'])} tokens, "
        f"{len(arrays['candidates'])} candidates, {len(planted)} planted"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
