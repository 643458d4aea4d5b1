"""Checks the runner end to end on a generated peer input with one planted error (run by check.sh, in the peers'
environment; the package's own test suite never needs that environment).

Asserts that the scores file keeps the contract for every method (one finite score per candidate and per sentence,
failures listed under "_failed") and that detectors which see a confidently contradicted label put the planted
span and its sentence first, alone. Prints the planted span's rank under every method.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import make_peer_input
import numpy as np
import run_peers

MUST_RANK_FIRST = [
    "cleanlab:self_confidence/min",
    "cleanlab:find_label_issues/self_confidence",
    "cleanlab-bio:normalized_margin/softmin",
    "nessie:ClassificationUncertainty",
    "nessie:Retag",
    "nessie:ConfidentLearning",
    "nessie:MajorityVotingEnsemble",
    "nessie-span:ClassificationUncertainty",
    "nessie-span:Retag",
    "nessie-span:ConfidentLearning",
    "nessie-span:VariationNGramsSpan",
]
NOT_APPLICABLE = {"nessie:CurriculumSpotter", "nessie:LeitnerSpotter", "nessie:DataMapConfidence"}


def rank(scores: np.ndarray, i: int) -> tuple:
    """(1-based rank of item i, number of other items tied with it)."""
    return int((scores > scores[i]).sum()) + 1, int((scores == scores[i]).sum()) - 1


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "input"
        make_peer_input.main([str(out), "--sentences", "300", "--members", "3", "--plant", "1", "--seed", "0"])
        run_peers.main([str(out), "--irt-iters", "300", "--pe-folds", "2"])
        results = json.loads((out / "peer_scores.json").read_text())
        planted = json.loads((out / "planted.json").read_text())
        meta = json.loads((out / "inputs.json").read_text())
        with np.load(out / "arrays.npz") as arrays:
            n_candidates, n_tokens = len(arrays["candidates"]), len(arrays["gold"])
    n_sentences = len(meta["sentence_ids"])
    failed = results.pop("_failed")
    problems = [f"{m} failed: {e}" for m, e in failed.items() if m not in NOT_APPLICABLE]
    problems += [f"{m} was expected to be reported not applicable" for m in NOT_APPLICABLE if m not in failed]
    span_i, sentence_i = planted["candidates"][0], planted["sentences"][0]
    for method, entry in sorted(results.items()):
        span, sentence = np.array(entry["span"]), np.array(entry["sentence"])
        if span.shape != (n_candidates,) or sentence.shape != (n_sentences,):
            problems.append(f"{method}: {span.shape} span / {sentence.shape} sentence scores")
            continue
        if "token" in entry and len(entry["token"]) != n_tokens:
            problems.append(f"{method}: {len(entry['token'])} token scores for {n_tokens} tokens")
        (r, t), (rs, ts) = rank(span, span_i), rank(sentence, sentence_i)
        print(f"{method:58s} span rank {r:4d} (+{t} tied)   sentence rank {rs:4d} (+{ts} tied)")
        if method in MUST_RANK_FIRST and (r, t, rs, ts) != (1, 0, 1, 0):
            problems.append(f"{method}: planted span rank {r} (+{t} tied), sentence rank {rs} (+{ts} tied)")
    problems += [f"{m}: no scores" for m in MUST_RANK_FIRST if m not in results]
    for p in problems:
        print("FAIL", p)
    print(f"{len(results)} methods scored, {len(failed)} not applicable; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
