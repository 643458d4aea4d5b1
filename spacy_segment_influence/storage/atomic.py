"""The one atomic writer: files and directories are replaced all-or-nothing, so a reader,
a crash, a kill or a full disk sees the previous output, whole, or the new one, never a mix.

Files (`write_atomic`): the data goes to `.NAME.PID.RANDOM.tmp` beside the file, is flushed
and renamed over it (`os.replace`); temporaries of dead writers (by PID) are removed by the
next write of the same file.

Directories (`staged_dir`): built in an empty sibling `.NAME.tmp-*`, flushed, then swapped in.
On Linux the swap is one atomic `renameat2(RENAME_EXCHANGE)`; elsewhere it is two renames,
and a writer killed between them leaves the previous directory aside, which the next
`replaced_dir` writer puts back.

`replaced_dir(path)` is `staged_dir` for a command's output directory: it also locks `path`
against other writers, removes killed writers' leftovers (`.NAME.tmp-*`, `.NAME.old-*`), and
replaces only what a previous writer wrote: each new directory gets a marker file (`MARKER`)
naming its owner, its top-level entries and a snapshot id unique to this write. An existing
`path` is replaced only when it is empty or carries a marker of the same owner and holds
nothing else; it is refused when it holds one of the writer's inputs or the current
directory. The snapshot id lets a reader tell whether `path` was replaced while it was
reading (`snapshot_id`).
"""

import ctypes
import errno
import glob
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

import srsly

from ..exceptions import ConfigError, OutputInUseError, OutputWriteError, SegmentInfluenceError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writers are not serialised
    fcntl = None  # type: ignore[assignment]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# The file naming a directory as written by `replaced_dir` (and by whom), so that a
# mistyped output path never deletes files the writer did not write.
MARKER = "written-by-segment-influence.json"


@contextmanager
def replaced_dir(path: Union[str, Path], owner: str, inputs: Iterable[Union[str, Path]] = ()) -> Iterator[Path]:
    """Yield an empty directory beside `path` whose contents replace `path` (which may
    not exist yet) if the block succeeds; on failure `path` is left as it was. `owner`
    names the writer in the marker; `path` must not hold any of `inputs` (it may be one)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        _recover(path)
        _check_replaceable(path, owner, inputs)
        with staged_dir(path, on_success=lambda tmp: _mark(tmp, owner)) as tmp:
            yield tmp


@contextmanager
def staged_dir(path: Union[str, Path], on_success: Callable[[Path], None] = lambda tmp: None) -> Iterator[Path]:
    """Yield an empty sibling of `path`; when the block succeeds, `on_success` runs on it, its
    files are flushed and it takes `path`'s place. On failure `path` is left as it was and an
    `OSError` becomes one `OutputWriteError` line."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        on_success(tmp)
        _fsync_tree(tmp)
        _swap(tmp, path)
        fsync_dir(path.parent)
    except SegmentInfluenceError:
        raise
    except OSError as err:  # a full disk, a permission: one line, not a traceback
        where = f" ({err.filename})" if err.filename else ""
        raise OutputWriteError(f"{path}: {err.strerror or err}{where}; {path} was left as it was") from None
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
    try:  # O_NOFOLLOW: a symlink planted at the lock's name must not redirect the write
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        raise ConfigError(f"{lock_path}: cannot open the writer lock ({err.strerror}); is it a symlink?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{path} is being written by another process (it holds {lock_path}); "
                "wait for it to finish or choose another output directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def snapshot_id(path: Union[str, Path]) -> Optional[str]:
    """The id of the write that produced directory `path`, None when it has no readable
    marker (or does not exist). Each write has a new id, so equal ids read before and
    after reading `path` mean it was not replaced in between."""
    marker = _read_marker(Path(path))
    return marker.get("snapshot") if marker is not None else None


def _mark(directory: Path, owner: str) -> None:
    entries = sorted(entry.name for entry in directory.iterdir())
    srsly.write_json(directory / MARKER, {"written_by": owner, "entries": entries, "snapshot": uuid.uuid4().hex})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)  # mkdtemp's 0700 would make the output private


def _read_marker(path: Path) -> Optional[dict]:
    try:
        marker = srsly.read_json(path / MARKER)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _check_replaceable(path: Path, owner: str, inputs: Iterable[Union[str, Path]]) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory")
    real, cwd = path.resolve(), Path.cwd().resolve()
    # an input may be `path` itself (re-indexing in place: it is read before the swap)
    for given in [*inputs, cwd]:
        resolved = Path(given).resolve()
        if real in resolved.parents or (given is cwd and resolved == real):
            what = "the current directory" if given is cwd else str(given)
            raise ConfigError(
                f"{path} holds {what}, which replacing it would delete: choose an output directory outside it"
            )
    present = {entry.name for entry in path.iterdir()} if path.is_dir() else set()
    if not present:
        return
    marker = _read_marker(path)
    if marker is None or marker.get("written_by") != owner or not isinstance(marker.get("entries"), list):
        raise ConfigError(
            f"{path} is not empty and was not written by {owner} (no {MARKER}): refusing to replace it; "
            "choose a new or empty output directory"
        )
    unknown = sorted(present - {MARKER, *map(str, marker["entries"])})
    if unknown:
        raise ConfigError(
            f"{path} holds {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}, which {owner} did not "
            "write: refusing to replace it; move them out or choose another output directory"
        )


def _recover(path: Path) -> None:
    """Remove what killed writers left beside `path`. A writer killed between the two
    renames of the fallback swap left no `path` but the previous one aside: put it back."""
    old = sorted(_leftovers(path, "old"), key=lambda p: p.stat().st_mtime)
    if not os.path.lexists(path) and old:
        os.replace(old.pop(), path)
    for leftover in [*old, *_leftovers(path, "tmp")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _leftovers(path: Path, kind: str) -> List[Path]:
    """The `.NAME.<kind>-*` directories beside `path`. Symlinks of such a name (dangling
    or not) are unlinked, never followed."""
    found = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
        if leftover.is_symlink():
            leftover.unlink()
        else:
            found.append(leftover)
    return found


def _swap(src: Path, dst: Path) -> None:
    """Put `src` at `dst`; the previous `dst`, if any, ends up at `src` (deleted by the caller)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    if _exchange(src, dst):
        return
    old = src.with_name(f".{dst.name}.old-{src.name.rsplit('.tmp-', 1)[1]}")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:  # a failed rename (not a kill) puts the previous directory back at once
        os.replace(old, dst)
        raise
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
        fsync_dir(Path(directory))


def fsync_dir(directory: Path) -> None:
    """Flush `directory`'s entries, so a rename in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> None:
    """Replace `path` by `data` (str: UTF-8) at once; OutputWriteError in one line (full
    disk, no permission) with `path` unchanged."""
    path = Path(path)
    raw = data.encode("utf8") if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as file_:
            file_.write(raw)
            file_.flush()
            os.fsync(file_.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the output private
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as err:
        raise OutputWriteError(
            f"{path}: could not write it ({err.strerror or err}); the previous {path.name}, if any, is unchanged"
        ) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def _remove_orphans(path: Path) -> None:
    """Remove `.NAME.PID.*.tmp` files beside `path` whose writer process no longer runs."""
    prefix = f".{path.name}."
    for entry in path.parent.iterdir():
        rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
        pid = rest.split(".", 1)[0]
        if entry.name.endswith(".tmp") and pid.isdigit() and not _running(int(pid)):
            entry.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM  # exists, owned by someone else
    return True
