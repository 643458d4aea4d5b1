"""Runs every peer annotation-error detector (cleanlab, nessie) on a peer input directory; writes the scores file.

Runs in the peers' own environment (bench/peers/setup_env.sh), never imports spacy_segment_influence:

    bench/peers/.venv/bin/python bench/peers/run_peers.py DIR [--out FILE] [--only PATTERN ...] [--skip PATTERN ...]

Writes `peer_scores.json` ({method: {"span", "sentence", "token"?}}, "_failed": {method: error}) and, beside it,
`peer_scores.info.json` (seconds per method, what each flagged, peer versions).
"""

from __future__ import annotations

import os

# One thread unless the caller sets these: on the shared 2-core machine, faiss' OpenMP search (nessie's KNN
# detectors) ran 27x slower with 2 threads than with 1 while other jobs were running (measured: 166 s vs 6 s).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import fnmatch  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, Iterable, List, Optional, Tuple  # noqa: E402

import cleanlab_peers  # noqa: E402
import nessie_peers  # noqa: E402
from peer_input import PeerInput, load_peer_input  # noqa: E402

log = logging.getLogger("run_peers")


def run(
    data: PeerInput,
    only: Optional[List[str]] = None,
    skip: Optional[List[str]] = None,
    **nessie_options,
) -> Tuple[Dict, Dict]:
    """Returns (scores file content, info file content)."""
    methods: Iterable = list(cleanlab_peers.detectors(data)) + list(nessie_peers.detectors(data, **nessie_options))
    results: Dict = {}
    failed: Dict[str, str] = {}
    info: Dict[str, Dict] = {}
    for name, thunk in methods:
        if (only and not _matches(name, only)) or (skip and _matches(name, skip)):
            continue
        start = time.perf_counter()
        try:
            entry = thunk()
        except nessie_peers.NotApplicable as exc:
            failed[name] = f"not applicable: {exc}"
            log.info("%-55s not applicable: %s", name, exc)
            continue
        except Exception as exc:  # a peer that breaks is reported, the others still run
            failed[name] = f"{type(exc).__name__}: {exc}"
            info[name] = {"seconds": round(time.perf_counter() - start, 2), "traceback": traceback.format_exc()}
            log.warning("%-55s FAILED %s: %s", name, type(exc).__name__, exc)
            continue
        seconds = time.perf_counter() - start
        info[name] = {"seconds": round(seconds, 2)} | entry.pop("_info", {})
        results[name] = entry
        log.info("%-55s %8.1f s", name, seconds)
    results["_failed"] = failed
    return results, {"methods": info, "versions": _versions(), "input": _shape(data)}


def _matches(name: str, patterns: List[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _versions() -> Dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("cleanlab", "nessie", "torch", "numpy", "scipy", "scikit-learn", "faiss-cpu")}


def _shape(data: PeerInput) -> Dict[str, int]:
    return {
        "sentences": data.n_sentences,
        "tokens": data.n_tokens,
        "candidates": len(data.candidates),
        "members": len(data.members),
        "tags": len(data.tag_names),
        "feature_dim": int(data.features.shape[1]),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="peer input directory (inputs.json, arrays.npz)")
    parser.add_argument("--out", type=Path, help="scores file (default: INPUT/peer_scores.json)")
    parser.add_argument("--only", nargs="*", help="run only methods matching these glob patterns")
    parser.add_argument("--skip", nargs="*", help="skip methods matching these glob patterns")
    parser.add_argument("--knn-k", type=int, default=10, help="k of nessie's KNN detectors (nessie's default 10)")
    parser.add_argument("--irt-iters", type=int, default=10_000, help="SVI steps of nessie's IRT (its default)")
    parser.add_argument("--pe-folds", type=int, default=10, help="folds for nessie's projection ensemble")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("nessie", "flair", "pyro"):
        logging.getLogger(name).setLevel(logging.WARNING)

    start = time.perf_counter()
    data = load_peer_input(args.input)
    log.info("loaded %s: %s", args.input, _shape(data))
    results, info = run(data, args.only, args.skip, knn_k=args.knn_k, irt_iters=args.irt_iters, pe_folds=args.pe_folds)
    info["total_seconds"] = round(time.perf_counter() - start, 1)
    out = args.out or args.input / "peer_scores.json"
    out.write_text(json.dumps(results))
    out.with_name(out.stem + ".info.json").write_text(json.dumps(info, indent=1))
    log.info("%d methods scored, %d failed or not applicable -> %s", len(results) - 1, len(results["_failed"]), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
