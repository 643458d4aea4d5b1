"""Checksums of a stored index's files, written with them and verified on load, so that
a truncated, deleted or bit-flipped file is reported by name instead of answering with
wrong scores (a flipped float in `h.npy` loads fine and can score 1e33).

The manifest (`checksums.json`) holds each file's size and sha256, and a digest of that
table itself, so a damaged manifest is recognised as such too.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import srsly

from ..exceptions import IndexCorruptError

MANIFEST = "checksums.json"
_CHUNK = 1 << 20


def write_manifest(directory: Path, names: Optional[Iterable[str]] = None) -> None:
    """Digest the files `names` (paths relative to `directory`; default: every file
    directly in it) of `directory` (written, not yet published) into its manifest."""
    if names is None:
        names = [path.name for path in directory.iterdir() if path.is_file() and path.name != MANIFEST]
    files = {
        name: {"bytes": (directory / name).stat().st_size, "sha256": file_digest(directory / name)}
        for name in sorted(names)
    }
    srsly.write_json(directory / MANIFEST, {"files": files, "sha256": _table_digest(files)})


def verify(directory: Path) -> None:
    """IndexCorruptError naming the first file of `directory` that is missing, has
    another size or another digest than its manifest says."""
    manifest = read_json(directory / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("sha256") != _table_digest(files):
        raise IndexCorruptError(f"{directory / MANIFEST}: the checksum table is damaged; rebuild the index")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise IndexCorruptError(f"{path}: missing from the stored index; rebuild the index")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise IndexCorruptError(
                f"{path}: {size} bytes where {expected['bytes']} were written (truncated or overwritten); "
                "rebuild the index"
            )
        if file_digest(path) != expected["sha256"]:
            raise IndexCorruptError(f"{path}: its contents changed since it was written (checksum); rebuild the index")


def read_json(path: Path) -> Any:
    """A stored JSON file, or IndexCorruptError naming it when it is missing or unreadable."""
    try:
        return srsly.read_json(path)
    except FileNotFoundError:
        raise IndexCorruptError(f"{path}: missing from the stored index; rebuild the index") from None
    except ValueError as err:  # also UnicodeDecodeError
        raise IndexCorruptError(f"{path}: not valid JSON ({err}); rebuild the index") from None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file_:
        while chunk := file_.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _table_digest(files: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
