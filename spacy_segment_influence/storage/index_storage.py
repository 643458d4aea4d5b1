"""What a `SegmentIndex` stores, and how it is written and read: a directory of .npy
arrays and JSON (memory-mapped on load), or one msgpack blob.

A directory is written by the one atomic writer (`atomic.staged_dir`), with a checksum of
every file (`checksums`), so a failed or interrupted write never leaves a partial index
behind, and a file damaged later is named on load. This module knows arrays and the
curvature's state only; `SegmentIndex` turns `IndexParts` into an index.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, NamedTuple, Optional, Tuple, Union

import numpy as np
import srsly

from ..exceptions import IndexCorruptError, IndexFormatError
from . import checksums
from .atomic import staged_dir

FORMAT_VERSION = 3  # 3: checksums.json


@dataclass
class SparseRows:
    """Rows in CSR form: row i holds values[indptr[i]:indptr[i + 1]] at those
    columns. Stores each training segment's dense block, whose nonzeros are the
    few transitions, starts and ends its Markov window allows."""

    indptr: np.ndarray  # int64 [S + 1]
    columns: np.ndarray  # int32 [nnz]
    values: np.ndarray  # [nnz]
    n_columns: int

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> "SparseRows":
        rows, columns = np.nonzero(dense)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(dense)))])
        return cls(indptr.astype(np.int64), columns.astype(np.int32), dense[rows, columns], dense.shape[1])

    def __len__(self) -> int:
        return self.indptr.size - 1

    def select(self, start: int, stop: int) -> "SparseRows":
        """Rows start:stop, sharing memory with self."""
        n0, n1 = int(self.indptr[start]), int(self.indptr[stop])
        indptr = self.indptr[start : stop + 1] - n0
        return SparseRows(indptr, self.columns[n0:n1], self.values[n0:n1], self.n_columns)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.columns.nbytes + self.values.nbytes

    def to_dense(self) -> np.ndarray:
        out = np.zeros((len(self), self.n_columns), dtype=self.values.dtype)
        out[self.row_ids(), self.columns] = self.values
        return out

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.indptr))

    def dot(self, vector: np.ndarray) -> np.ndarray:
        """Per row, row . vector in float64."""
        products = self.values.astype(np.float64) * vector[self.columns]
        return np.bincount(self.row_ids(), products, minlength=len(self))


@dataclass
class StoredSegments:
    """What the index keeps: the curvature-prepared token factors h [N, E] and
    r [N, C] (segment s owns rows offsets[s]:offsets[s + 1]) and the raw dense
    block as sparse rows."""

    h: np.ndarray
    r: np.ndarray
    offsets: np.ndarray
    dense: SparseRows

    def __len__(self) -> int:
        return self.offsets.size - 1

    def select(self, start: int, stop: int) -> "StoredSegments":
        """Segments start:stop, sharing memory with self (but for their offsets)."""
        t0, t1 = int(self.offsets[start]), int(self.offsets[stop])
        offsets = np.asarray(self.offsets[start : stop + 1]) - t0
        return StoredSegments(self.h[t0:t1], self.r[t0:t1], offsets, self.dense.select(start, stop))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(E, C, D)."""
        return self.h.shape[1], self.r.shape[1], self.dense.n_columns

    @property
    def nbytes(self) -> int:
        return self.h.nbytes + self.r.nbytes + self.offsets.nbytes + self.dense.nbytes


CurvatureState = Tuple[dict, Dict[str, np.ndarray]]  # `Curvature.to_state()`: its config and arrays


class IndexParts(NamedTuple):
    """What an index stores: `SegmentIndex`'s arguments, the curvature as its state and the
    window labels as their (tags, bounds) arrays."""

    stored: StoredSegments
    norms: np.ndarray
    metadata: List[dict]
    curvature: CurvatureState
    normalize: bool
    windows: Optional[Tuple[np.ndarray, np.ndarray]]


def write_dir(parts: IndexParts, path: Union[str, Path]) -> None:
    """Write an index as a directory of .npy arrays and JSON at `path`, atomically."""
    with staged_dir(path) as tmp:
        for name, array in _arrays(parts).items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        srsly.write_json(tmp / "metadata.json", parts.metadata)
        srsly.write_json(tmp / "settings.json", _settings(parts))
        checksums.write_manifest(tmp)


def read_dir(path: Union[str, Path], mmap: bool = True) -> IndexParts:
    """The parts of an index written by `write_dir`, its arrays memory-mapped if `mmap`,
    after checking every file against its checksum (IndexCorruptError naming the file)."""
    path = Path(path)
    settings = checksums.read_json(path / "settings.json")
    if not (path / checksums.MANIFEST).exists():
        _check_format(settings)  # written before checksums: ask for a rebuild, not blame damage
    checksums.verify(path)
    mode: Optional[Literal["r"]] = "r" if mmap else None
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in settings["arrays"]}
    return _parts(settings, arrays, checksums.read_json(path / "metadata.json"))


def to_bytes(parts: IndexParts) -> bytes:
    arrays = {
        name: {"dtype": array.dtype.str, "shape": list(array.shape), "data": np.ascontiguousarray(array).tobytes()}
        for name, array in _arrays(parts).items()
    }
    payload = srsly.msgpack_dumps({"settings": _settings(parts), "metadata": parts.metadata, "arrays": arrays})
    return srsly.msgpack_dumps({"payload": payload, "sha256": hashlib.sha256(payload).hexdigest()})


def from_bytes(data: bytes) -> IndexParts:
    """The parts of an index serialized by `to_bytes`, after checking its checksum."""
    try:
        outer = srsly.msgpack_loads(data)
        payload = outer["payload"]
        intact = hashlib.sha256(payload).hexdigest() == outer["sha256"]
    except (ValueError, KeyError, TypeError):
        raise IndexCorruptError("The serialized index is damaged (not the message to_bytes writes)") from None
    if not intact:
        raise IndexCorruptError("The serialized index is damaged (checksum mismatch)")
    msg = srsly.msgpack_loads(payload)
    arrays = {
        name: np.frombuffer(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"])
        for name, a in msg["arrays"].items()
    }
    return _parts(msg["settings"], arrays, msg["metadata"])


def _arrays(parts: IndexParts) -> Dict[str, np.ndarray]:
    g = parts.stored
    arrays = {
        "h": g.h,
        "r": g.r,
        "offsets": g.offsets,
        "dense_indptr": g.dense.indptr,
        "dense_columns": g.dense.columns,
        "dense_values": g.dense.values,
        "norms": parts.norms,
    }
    if parts.windows is not None:
        arrays.update({"window_tags": parts.windows[0], "window_bounds": parts.windows[1]})
    _, curvature_arrays = parts.curvature
    arrays.update({f"curvature.{name}": array for name, array in curvature_arrays.items()})
    return arrays


def _settings(parts: IndexParts) -> dict:
    config, _ = parts.curvature
    return {
        "format": FORMAT_VERSION,
        "normalize": parts.normalize,
        "n_dense": parts.stored.dense.n_columns,
        "curvature": config,
        "arrays": list(_arrays(parts)),
    }


def _check_format(settings: dict) -> None:
    found = settings.get("format") if isinstance(settings, dict) else None
    if found != FORMAT_VERSION:
        raise IndexFormatError(
            f"Unsupported index format {found!r} (this version reads {FORMAT_VERSION}): "
            "rebuild the index with `segment-influence index`"
        )


def _parts(settings: dict, arrays: Dict[str, np.ndarray], metadata: List[dict]) -> IndexParts:
    _check_format(settings)
    config = settings["curvature"]
    curvature_arrays = {
        name.split(".", 1)[1]: np.asarray(array) for name, array in arrays.items() if name.startswith("curvature.")
    }
    dense = SparseRows(
        np.asarray(arrays["dense_indptr"]), arrays["dense_columns"], arrays["dense_values"], settings["n_dense"]
    )
    stored = StoredSegments(arrays["h"], arrays["r"], np.asarray(arrays["offsets"]), dense)
    windows = None
    if "window_tags" in arrays:
        windows = (np.asarray(arrays["window_tags"]), np.asarray(arrays["window_bounds"]))
    return IndexParts(stored, arrays["norms"], metadata, (config, curvature_arrays), settings["normalize"], windows)
