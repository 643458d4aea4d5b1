"""Write a directory all-or-nothing, one writer at a time.

`replaced_dir(path)` locks `path` against other writers and yields an empty sibling to
build the new contents in. When the block succeeds, the sibling's files are flushed to
disk and it takes `path`'s place, so a reader, a crash or a kill sees either the previous
directory, whole, or the new one, never a mix. On Linux the swap is one atomic
`renameat2(RENAME_EXCHANGE)`; elsewhere it is two renames, and a writer killed between
them leaves the previous directory aside, which the next writer puts back.

Leftovers of a killed writer (`.NAME.tmp-*`, `.NAME.old-*` beside `path`) are removed by
the next writer, which holds the lock, so no live writer's files are touched.
"""

import ctypes
import errno
import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from .exceptions import ConfigError, OutputInUseError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writers are not serialised
    fcntl = None  # type: ignore[assignment]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# What an existing directory must contain for `replaced_dir` to replace it: a spaCy
# pipeline, so that a mistyped output path never deletes unrelated files.
_REPLACEABLE_MARKERS = ("config.cfg", "meta.json")


@contextmanager
def replaced_dir(path: Union[str, Path]) -> Iterator[Path]:
    """Yield an empty directory beside `path` whose contents replace `path` (which may
    not exist yet) if the block succeeds; on failure `path` is left as it was."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        _check_replaceable(path)
        _recover(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            yield tmp
            _fsync_tree(tmp)
            _swap(tmp, path)
            _fsync_dir(path.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `.NAME.lock` beside `path`; refuse (rather than
    wait) when another process holds it. The lock file is never deleted: deleting it
    would let two writers lock different files of the same name."""
    if fcntl is None:
        yield
        return
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{path} is being written by another process (it holds {lock_path}); "
                "wait for it to finish or choose another output directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _check_replaceable(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in _REPLACEABLE_MARKERS):
        raise ConfigError(
            f"{path} exists, is not empty and is not a spaCy pipeline (no config.cfg or meta.json): "
            "refusing to replace it; choose a new or empty output directory"
        )


def _recover(path: Path) -> None:
    """Remove what killed writers left beside `path`. A writer killed between the two
    renames of the fallback swap left no `path` but the previous one aside: put it back."""
    name = glob.escape(path.name)
    old = sorted(path.parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and old:
        os.replace(old.pop(), path)
    for leftover in [*old, *path.parent.glob(f".{name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _swap(src: Path, dst: Path) -> None:
    """Put `src` at `dst`; the previous `dst`, if any, ends up at `src` (deleted by the caller)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    if _exchange(src, dst):
        return
    old = src.with_name(f".{dst.name}.old-{src.name.rsplit('.tmp-', 1)[1]}")
    os.replace(dst, old)
    os.replace(src, dst)
    os.replace(old, src)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where it is not available."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root`: otherwise a crash after the swap can
    leave a complete-looking directory of truncated files."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as file_:
                os.fsync(file_.fileno())
        _fsync_dir(Path(directory))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
