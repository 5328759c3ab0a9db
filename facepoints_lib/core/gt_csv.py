"""Reading and writing keypoint tables in the course's ``gt.csv`` format.

Format: a header ``filename,x1,y1,x2,y2,...,x14,y14`` and one row per image with 28
pixel coordinates. In memory a table is a ``dict`` mapping file name to a float64 array
of 28 numbers ``[x1, y1, ..., x14, y14]``, exactly as the course's ``run.py`` keeps it.

The reader accepts what the course's files contain and what spreadsheet programs make
of them (a UTF-8 byte-order mark, CRLF line endings, a missing header, blank lines), and
refuses everything ambiguous with a ``GtFormatError`` that names the file and line: a
wrong number of values, a value that is not a finite number, a file name listed twice,
a file that is not UTF-8 text. ``check_gt_table`` applies the same checks to a table
passed in memory.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from .files import write_atomically
from .schema import NUM_POINTS

NUM_COORDS = 2 * NUM_POINTS
GT_HEADER = ["filename"] + [f"{axis}{i}" for i in range(1, NUM_POINTS + 1) for axis in "xy"]


class GtFormatError(ValueError):
    """A keypoint table is malformed; the message names the file and line."""


# The largest coordinate taken for a pixel position. The course's points lie within a few
# hundred pixels of images up to a few thousand wide; a value beyond this is a typo or a
# unit error, and would overflow or swamp the training loss (1e300 overflows float32).
MAX_COORDINATE = 1e6


def _check_plain_name(name: str, where: str) -> None:
    """A listed file must be directly inside the image folder: ``../x.jpg`` or an absolute
    path would train on files outside it, and ``./a.jpg`` would list ``a.jpg`` twice."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise GtFormatError(f"{where}: file name {name!r} is not a plain file name "
                            f"(no folders: the images sit directly in the image folder)")


def _parse_gt_row(row: list[str], where: str) -> tuple[str, np.ndarray]:
    if len(row) != NUM_COORDS + 1:
        raise GtFormatError(f"{where}: expected {NUM_COORDS + 1} values (file name and "
                            f"{NUM_COORDS} coordinates), got {len(row)}")
    name = row[0]                 # as written: a name may begin or end with spaces
    if not name.strip():
        raise GtFormatError(f"{where}: empty file name")
    _check_plain_name(name, where)
    values = np.empty(NUM_COORDS, dtype=np.float64)
    for i, text in enumerate(row[1:]):
        try:
            value = float(text) if "_" not in text else math.nan    # Python reads 1_000 as 1000
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise GtFormatError(f"{where}: column {GT_HEADER[i + 1]} is {text!r}, not a finite number")
        if abs(value) > MAX_COORDINATE:
            raise GtFormatError(f"{where}: column {GT_HEADER[i + 1]} is {text!r}, beyond "
                                f"+-{MAX_COORDINATE:g}: not a pixel position")
        values[i] = value
    return name, values


def read_gt(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``gt.csv`` file into ``{filename: float64 array of 28 coordinates}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint table not found: {path}")
    table: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    line_no, first_row = 0, True
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                is_header = first_row and row[0].strip().lower() == "filename"   # after blank lines too
                first_row = False
                if is_header:
                    continue
                name, values = _parse_gt_row(row, f"{path}, line {line_no}")
                if name in table:
                    raise GtFormatError(f"{path}, line {line_no}: file name {name!r} is already "
                                        f"listed on line {first_line[name]}")
                table[name] = values
                first_line[name] = line_no
    except (UnicodeDecodeError, csv.Error) as exc:   # binary junk, stray quotes, huge fields
        raise GtFormatError(f"{path}, after line {line_no}: not a UTF-8 CSV text file: {exc}") from None
    if not table:
        raise GtFormatError(f"{path}: no keypoint rows")
    return table


def check_gt_table(table, where: str = "keypoint table") -> dict[str, np.ndarray]:
    """Check an in-memory table (``{filename: 28 numbers}``) as ``read_gt`` checks a file.

    Returns a new dict of float64 arrays; raises ``GtFormatError`` naming the first bad
    entry (a name that is not a non-empty string, or not 28 finite numbers).
    """
    if not isinstance(table, dict):
        raise TypeError(f"{where} must be a dict {{filename: 28 coordinates}}, got {type(table).__name__}")
    checked: dict[str, np.ndarray] = {}
    for name, coords in table.items():
        if not isinstance(name, str) or not name.strip():
            raise GtFormatError(f"{where}: file name {name!r} is not a non-empty string")
        _check_plain_name(name, where)
        try:
            values = np.asarray(coords, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise GtFormatError(f"{where}: {name}: coordinates are not numbers ({exc})") from None
        if values.shape != (NUM_COORDS,):
            raise GtFormatError(f"{where}: {name}: expected {NUM_COORDS} coordinates, got {values.size}")
        if not np.isfinite(values).all():
            raise GtFormatError(f"{where}: {name}: coordinates must be finite numbers")
        if np.abs(values).max() > MAX_COORDINATE:
            raise GtFormatError(f"{where}: {name}: a coordinate is beyond +-{MAX_COORDINATE:g}: "
                                f"not a pixel position")
        checked[name] = values
    return checked


def write_gt(table: dict[str, np.ndarray], path: str | os.PathLike, decimals: int = 2) -> Path:
    """Write ``{filename: 28 coordinates}`` as a ``gt.csv`` file, rows sorted by name,
    each coordinate with ``decimals`` digits after the point (the project's one gt.csv writer).

    The file is written whole or not at all (a temporary file beside it, then renamed), so
    a failure leaves any earlier file as it was. File names that are not valid UTF-8 (the
    operating system gave raw bytes) are written as those bytes.
    """
    path = Path(path)
    rows = []
    for name in sorted(table):
        coords = np.asarray(table[name], dtype=np.float64).reshape(-1)
        if coords.shape != (NUM_COORDS,):
            raise ValueError(f"{name}: expected {NUM_COORDS} coordinates, got {coords.size}")
        if not np.isfinite(coords).all():       # the reader refuses them: never write one
            raise ValueError(f"{name}: a coordinate is not a finite number ({coords.tolist()})")
        rows.append([name] + [f"{v:.{decimals}f}" for v in coords])

    return write_csv(path, GT_HEADER, rows)


def csv_line(cells) -> str:
    """One CSV line (with its ``\\n``) that ``csv.reader`` reads back to exactly ``cells``.

    A cell is quoted when it holds a comma, a quote, ``\\n`` or ``\\r`` (``csv.writer``
    with ``\\n`` line endings leaves a lone ``\\r`` unquoted, and its own reader then
    splits the line there), or begins or ends with white space (which other readers drop).
    """
    out = []
    for cell in map(str, cells):
        if any(c in cell for c in ',"\r\n') or cell != cell.strip():
            cell = '"' + cell.replace('"', '""') + '"'
        out.append(cell)
    return ",".join(out) + "\n"


def write_csv(path: str | os.PathLike, header, rows) -> Path:
    """Write a header and rows as a UTF-8 CSV file (``csv_line`` each), whole or not at all.

    File names that are not valid UTF-8 (the operating system gave raw bytes) are
    written as those bytes.
    """
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as out:
            out.write(csv_line(header))
            for row in rows:
                out.write(csv_line(row))

    return write_atomically(Path(path), write)


def read_img_shapes(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Read the course's ``img_shapes.csv`` into ``{filename: (n_rows, n_cols)}``.

    Refuses with a ``GtFormatError`` naming the line: a wrong number of values, a size
    that is not a whole number of at least 1 pixel (a size of 0 made the err infinite),
    a file listed twice (a second row gave an err of millions).
    """
    shapes: dict[str, tuple[int, int]] = {}
    first_line: dict[str, int] = {}
    line_no = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or (line_no == 1 and row[0].strip().lower() in ("img_filename", "filename")):
                    continue
                where = f"{path}, line {line_no}"
                if len(row) != 3:
                    raise GtFormatError(f"{where}: expected 3 values, got {len(row)}")
                name = row[0]
                try:
                    rows, cols = int(row[1]), int(row[2])
                except ValueError as exc:
                    raise GtFormatError(f"{where}: {exc}") from None
                if rows < 1 or cols < 1:
                    raise GtFormatError(f"{where}: image size {rows} x {cols}: sizes are at least 1 pixel")
                if name in shapes:
                    raise GtFormatError(f"{where}: file name {name!r} is already listed on line "
                                        f"{first_line[name]}")
                shapes[name], first_line[name] = (rows, cols), line_no
    except (UnicodeDecodeError, csv.Error) as exc:
        raise GtFormatError(f"{path}, after line {line_no}: not a UTF-8 CSV text file: {exc}") from None
    return shapes


def write_img_shapes(shapes: dict[str, tuple[int, int]], path: str | os.PathLike) -> Path:
    """Write ``{filename: (n_rows, n_cols)}`` in the course's ``img_shapes.csv`` format, rows sorted by name."""
    return write_csv(path, ["img_filename", "n_rows", "n_cols"],
                     [[name, *shapes[name]] for name in sorted(shapes)])
