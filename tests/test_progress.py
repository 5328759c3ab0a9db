"""The dependency-free progress bar."""

import io

from facepoints_lib.core.progress import TextProgress, format_seconds


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_output_prints_the_last_line_once():
    """Captured output (a log, a notebook) gets plain lines; closing does not repeat the
    line that already showed the end (it did: the final line came out twice)."""
    out = io.StringIO()
    bar = TextProgress(total=5, desc="train", unit="step", stream=out)
    for _ in range(5):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines and all("\r" not in line for line in lines)
    assert sum("5/5" in line for line in lines) == 1, lines


def test_closing_shows_a_postfix_set_after_the_last_line():
    out = io.StringIO()
    bar = TextProgress(total=2, stream=out)
    bar.update(2)
    bar.set_postfix_str("val err 3.21")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[-1].endswith("val err 3.21") and sum("2/2" in line for line in lines) == 2


def test_a_terminal_or_a_notebook_redraws_one_line():
    for stream, interactive in ((_Terminal(), None), (io.StringIO(), True)):
        bar = TextProgress(total=3, desc="decode", stream=stream, interactive=interactive, min_interval=0)
        for _ in range(3):
            bar.update(1)
        bar.close()
        text = stream.getvalue()
        assert text.count("\r") >= 3 and text.endswith("\n") and text.count("\n") == 1


def test_format_seconds():
    assert format_seconds(75.3) == "1:15" and format_seconds(3725) == "1:02:05" and format_seconds(-1) == "0:00"
