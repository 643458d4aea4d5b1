"""Write an output file all-or-nothing: readers, a kill or a full disk see the previous
file, whole, or the new one, never a truncated mix.

The data goes to a temporary file in the same directory (`.NAME.PID.RANDOM.tmp`), is
flushed to disk and renamed over `path` (`os.replace`, atomic on POSIX). A failure removes
the temporary file and keeps `path` as it was; temporary files that a killed writer left
(its process is gone) are removed by the next write of the same file.
"""

import errno
import os
import tempfile
from pathlib import Path
from typing import Union

from ..exceptions import OutputWriteError
from .atomic_dir import fsync_dir


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
