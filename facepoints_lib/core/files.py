"""Writing output files safely: check the target before the work, write it whole or not at all.

``check_writable`` refuses a target that cannot be written (a folder, a missing or
read-only folder) before training or detection is spent on it. ``write_atomically``
writes a regular file through a temporary file of the writer's own beside the target,
flushed to disk and renamed over the target at the end, so a reader never sees a
half-written file, a failure (a full disk, a signal) leaves any earlier file as it was,
and two writers of one path cannot collide. A target that exists and is not a regular
file (a FIFO, ``/dev/null``, ``/dev/stdout``, a terminal) is written through instead:
it is never replaced by a regular file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

TEMP_NAME_CHARS = 32        # of the target's name kept in its temporary file's name (a 255-byte
                            # name limit: a long target name must still leave room for the rest)


def is_stream_target(path: Path) -> bool:
    """True for an existing target that is not a regular file and so is written through:
    a FIFO, a character device (``/dev/null``, a terminal), a socket, or any path under
    ``/dev`` or ``/proc`` (``/dev/stdout`` names whatever standard output is)."""
    for candidate in (path, Path(os.path.abspath(path))):
        if str(candidate).startswith(("/dev/", "/proc/")):
            return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:TEMP_NAME_CHARS]}."


def check_writable(path: Path, what: str = "output file") -> None:
    """Refuse a file path that cannot be written, naming it as ``what``."""
    if is_stream_target(path):
        if not os.access(path, os.W_OK):
            raise PermissionError(f"cannot write the {what} {path}: permission denied")
        return
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder: give a file name")
    folder = _real_target(path).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"folder for the {what} not found: {folder}")
    try:
        handle, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".probe", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"cannot write the {what} {path}: {exc}") from exc


def _real_target(path: Path) -> Path:
    """The file a rename must replace: a symlink's target (the link itself is kept)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _naming(exc: OSError, path: Path, note: str) -> OSError:
    """The same error, its message naming the file it was writing."""
    text = f"could not write {path}: {exc.strerror or exc}{note}"
    return type(exc)(exc.errno, text) if exc.errno is not None else type(exc)(text)


def write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(file_path)`` so that ``path`` ends up written whole or not at all.

    For a regular file (or a new one), ``write`` gets a temporary path beside the target,
    with the permissions an ordinary new file would have (``mkstemp`` makes it private);
    the result is flushed to disk and renamed over the target. On any failure, a signal
    turned into an exception included, the temporary file is removed and the error
    raised; an ``OSError`` names ``path``. A stream target (see ``is_stream_target``) is
    passed to ``write`` itself.
    """
    path = Path(path)
    if is_stream_target(path):
        try:
            write(str(path))
        except OSError as exc:
            raise _naming(exc, path, "") from exc
        return path
    target = _real_target(path)
    handle, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb+") as written:       # on disk before the rename, or a crash could
            os.fsync(written.fileno())          # leave an empty file under the old name
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and str(path) not in str(exc):
            raise _naming(exc, path, "; any earlier file there is unchanged") from exc
        raise
    return path
