"""A dependency-free progress bar for long loops (training, decoding, detection).

In a terminal it redraws one line (``\\r``); anywhere else (CI logs, captured output,
notebooks) it prints a plain line now and then, so logs stay readable. It has the
small part of ``tqdm``'s interface the package uses (``update``, ``set_postfix_str``,
``close``, use as a context manager), so callers may pass ``tqdm.auto.tqdm`` instead
wherever a ``progress`` factory is accepted, e.g. to get a widget in JupyterLab.
"""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``'1:15'``; ``3725`` -> ``'1:02:05'``."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TextProgress:
    """Progress over ``total`` steps with elapsed time, time left and a free-text postfix."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 disable: bool | None = False, stream=None, min_interval: float = 0.5,
                 log_interval: float = 30.0, interactive: bool | None = None, **_ignored):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.disable = bool(disable)
        # redraw one line with "\r": in a terminal, or where asked (a notebook's stdout does it too)
        self.interactive = (hasattr(self.stream, "isatty") and self.stream.isatty()) if interactive is None \
            else interactive
        self.min_interval = min_interval if self.interactive else log_interval
        self.n, self.postfix = 0, ""
        self.start = self.last_print = time.monotonic()
        self._printed_fraction = 0.0
        self._printed: tuple[int, str] | None = None

    def __enter__(self) -> "TextProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        parts = [f"{self.desc}:" if self.desc else ""]
        if self.total:
            fraction = min(self.n / self.total, 1.0)
            bar = "#" * int(20 * fraction)
            rate = self.n / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.n) / rate if rate > 0 else 0.0
            parts.append(f"{100 * fraction:3.0f}% |{bar:<20}| {self.n}/{self.total} "
                         f"[{format_seconds(elapsed)}<{format_seconds(left)}, {rate:.1f} {self.unit}/s]")
        else:
            parts.append(f"{self.n} {self.unit} [{format_seconds(elapsed)}]")
        if self.postfix:
            parts.append(self.postfix)
        return " ".join(p for p in parts if p)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        fraction = self.n / self.total if self.total else 0.0
        due = now - self.last_print >= self.min_interval
        if not self.interactive:   # plain lines: every 10% or every log_interval seconds
            due = due or fraction >= self._printed_fraction + 0.1
        if due:
            self._emit()
            self.last_print, self._printed_fraction = now, fraction

    def _emit(self, final: bool = False) -> None:
        self._printed = (self.n, self.postfix)
        if self.interactive:
            self.stream.write("\r" + self._line() + ("\n" if final else ""))
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final state, unless a plain line already showed it (a redrawn line
        is finished with a newline)."""
        if not self.disable and self.n and (self.interactive or self._printed != (self.n, self.postfix)):
            self._emit(final=True)
        self.disable = True
