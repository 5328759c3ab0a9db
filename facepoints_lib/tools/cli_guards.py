"""What the command line checks and catches around its commands: lists of file names a
person edits (``--exclude``), output paths that would overwrite an input, and Ctrl-C or
SIGTERM, which end a command with a line instead of a traceback.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.files import is_stream_target

MAX_NAME_LIST_BYTES = 16 * 2 ** 20     # a list of file names: 16 MB holds over 300 000 of them


def read_names(path: str | None) -> list[str]:
    """File names listed one per line in a text file a person edits (``--exclude``): blank
    lines and ``#`` comments ignored, a UTF-8 byte-order mark (Notepad writes one) dropped.

    Refuses, naming the file: one that is missing, not a regular file (a FIFO would wait
    for ever, ``/dev/zero`` fill the memory), larger than ``MAX_NAME_LIST_BYTES``, or not
    UTF-8 text.
    """
    if not path:
        return []
    listing = Path(path)
    try:
        info = os.stat(listing)
    except FileNotFoundError:
        raise FileNotFoundError(f"list of file names not found: {listing}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"list of file names {listing} is not a regular file (a folder, FIFO or "
                         f"device): give a text file with one file name per line")
    if info.st_size > MAX_NAME_LIST_BYTES:
        raise ValueError(f"list of file names {listing} is {info.st_size / 2**20:.0f} MB: a text file of "
                         f"file names is far smaller (at most {MAX_NAME_LIST_BYTES // 2**20} MB)")
    try:
        text = listing.read_bytes()[:MAX_NAME_LIST_BYTES + 1].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"list of file names {listing} is not UTF-8 text ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# Existing files ``detect --out`` and ``--confidence`` never replace: the course's tables
# and anything that is not a table of results (an image, code, a model, a notebook).
RESULT_SUFFIXES = (".csv", ".tsv", ".txt")
INPUT_TABLES = ("gt.csv", "img_shapes.csv")


def check_result_target(path: Path, flag: str, model: Path, images: Path) -> None:
    """Refuse an output path that names an input: the model file, a file in the image
    folder (or the one picture), the course's ``gt.csv`` or ``img_shapes.csv``, or an
    existing file that is not a table of results (by its suffix)."""
    if is_stream_target(path) or not path.is_file():
        return                      # a new file, or a stream (/dev/stdout, a FIFO) written through
    real = path.resolve()
    if model.exists() and real == model.resolve():
        raise ValueError(f"{flag} {path} is the model file: it would be overwritten")
    inside = images.resolve() if images.is_dir() else images.resolve().parent
    if real == images.resolve() or real.parent == inside:
        raise ValueError(f"{flag} {path} lies in the image folder being read: write it elsewhere")
    if real.name.lower() in INPUT_TABLES:
        raise ValueError(f"{flag} {path} is a keypoint or image-size table of the course data: "
                         f"it would be overwritten")
    if real.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(f"{flag} {path} exists and is not a table of results (not "
                         f"{', '.join(RESULT_SUFFIXES)}): refusing to overwrite it")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, ``docker stop``, systemd and Slurm send), raised where the
    program is, so that clean-up runs as for Ctrl-C: a half-written temporary file is
    removed, a stopped training keeps its model."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def interrupted_message(command: str, exc: KeyboardInterrupt) -> str:
    from ..core.fit import TrainingInterrupted

    what = "stopped (SIGTERM)" if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated) \
        else "interrupted"
    if isinstance(exc, TrainingInterrupted):
        if exc.saved_to is not None:
            return (f"facepoints {command}: {what} at step {exc.step} of {exc.total_steps}. The model so "
                    f"far was kept in {exc.saved_to} (use it with --model; the model file itself "
                    f"was not written or replaced)")
        return (f"facepoints {command}: {what} at step {exc.step} of {exc.total_steps}; no model was "
                f"written or replaced")
    return (f"facepoints {command}: {what}. train, detect and bench write their output only when "
            f"they finish, so none of it was written or replaced")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (main thread only; elsewhere the
    signal keeps its handler). The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
