"""Writing output files safely: check the target before the work, write it whole or not at all.

``check_writable`` refuses a target that cannot be written (a folder, a missing or
read-only folder) before training or detection is spent on it. ``write_atomically``
writes through a temporary file of the writer's own beside the target and renames it
over the target at the end, so a reader never sees a half-written file, a failure leaves
any earlier file as it was, and two writers of one path cannot collide.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def check_writable(path: Path, what: str = "output file") -> None:
    """Refuse a file path that cannot be written, naming it as ``what``."""
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder: give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder for the {what} not found: {path.parent}")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"cannot write the {what} {path}: {exc}") from exc


def write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then rename that file over ``path``.

    The temporary file gets the permissions an ordinary new file would (``mkstemp`` makes
    it private); on any failure it is removed and the error raised.
    """
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
