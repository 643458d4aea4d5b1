"""The manifest of a sharded index (`manifest.json`): its shards' directories, in order,
each with its first segment and segment count."""

from pathlib import Path
from typing import List, Union

import srsly

from ..exceptions import IndexFormatError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def write_manifest(directory: Path, n_segments: int, shards: List[dict]) -> None:
    """`shards`: one {"path", "first", "n_segments"} per shard, in segment order."""
    srsly.write_json(directory / MANIFEST, {"format": FORMAT_VERSION, "n_segments": n_segments, "shards": shards})


def read_manifest(path: Union[str, Path]) -> dict:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.exists():
        raise IndexFormatError(f"{path} is not a sharded index: it has no {MANIFEST}")
    manifest = srsly.read_json(manifest_path)
    if manifest.get("format") != FORMAT_VERSION:
        raise IndexFormatError(f"Unsupported sharded index format {manifest.get('format')!r} in {path}")
    return manifest
