"""Figures a person can read where JupyterLab shows them: sizes, fonts, labels that stay clear.

JupyterLab shows an inline figure as a PNG of ``INLINE_DPI`` pixels per inch (matplotlib's
``figure.dpi``; the inline backend of ipykernel 6+ keeps it), cut to the figure's tight
box, at its natural size when it fits the output area and scaled down to the area's width
otherwise. A figure no wider than ``FIGURE_WIDTH`` inches fits ``OUTPUT_WIDTH_PX``, so
its text shows at ``INLINE_DPI / 96`` of its size in CSS points: text of ``MIN_FONT`` pt
shows at 9.4 pt (12.5 CSS px). ``panels`` makes such figures; ``wrapped`` breaks a title
to the width of its panel; ``place_labels`` puts labels beside scatter dots where they
cover no dot, no other label and stay inside the axes (placed when the figure is drawn,
after the layout has settled). ``tests/test_figure_legibility.py`` checks every figure of
this package against these numbers. Not frozen into ``solution.py``.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# Width of a notebook's output area in CSS px, measured in JupyterLab 4.6 (Chromium, page
# zoom 100 %) with the element's getBoundingClientRect: 848 in a 1280 px wide window with
# the file browser open (JupyterLab's default layout), 968 at 1400 px, 1100 at 1280 px
# with the sidebar closed. The narrowest of these, so a figure fitting it is shown at its
# natural size in all three. tests/test_browser.py runs at 1280 x 1000 and checks this.
OUTPUT_WIDTH_PX = 848
INLINE_DPI = 100            # pixels per inch of an inline PNG (matplotlib's figure.dpi)
PNG_PAD = 0.1               # inches the inline PNG adds on each side (savefig.pad_inches)
MIN_FONT = 9                # pt: the smallest text in a figure (9.4 CSS pt as shown)
FONT = 10                   # pt: axis labels, titles of panels
FIGURE_WIDTH = math.floor(100 * (OUTPUT_WIDTH_PX / INLINE_DPI - 2 * PNG_PAD - 0.05)) / 100   # 8.23 in
CHAR_WIDTH = 0.62           # a character's mean width in ems (DejaVu Sans, digits 0.64)


def panels(nrows: int = 1, ncols: int = 1, height: float = 3.6, **kwargs):
    """``plt.subplots`` as wide as the output area shows at natural size, with constrained
    layout: ``(fig, axes)`` as ``plt.subplots`` returns them."""
    return plt.subplots(nrows, ncols, figsize=(FIGURE_WIDTH, height), layout="constrained", **kwargs)


def wrapped(text: str | None, width: float, fontsize: float = MIN_FONT) -> str | None:
    """``text`` broken at spaces into lines that fit ``width`` inches at ``fontsize`` pt
    (a word longer than a line stays whole)."""
    if not text:
        return text
    chars = max(8, int(width * 72 / (fontsize * CHAR_WIDTH)))
    return "\n".join(textwrap.fill(line, chars, break_long_words=False) for line in text.split("\n"))


def _overlap(a: Bbox, b: Bbox) -> float:
    """The area two boxes share (0 when apart)."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


class LabelPlacer(Artist):
    """Draws nothing: before the labels of its axes are drawn, it moves each one (an
    ``Annotation`` in offset points) to the first of a ring of places around its dot
    where the label's box covers no dot, no label placed before it and nothing outside
    the axes; failing that, to the place that covers least. Labels placed away from their
    dot show a thin line to it."""

    def __init__(self, ax, labels, dots, radius: float):
        super().__init__()
        self.ax, self.labels, self.dots, self.radius = ax, labels, dots, radius   # radius in points
        self.set_zorder(min(label.get_zorder() for label in labels) - 0.01)
        self.set_in_layout(False)

    def candidates(self):
        """Offsets (points) and alignments, nearest first."""
        near = self.radius + 2.0
        for distance in (near, 2.2 * near, 3.6 * near, 5.2 * near, 7.0 * near, 9.0 * near):
            for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)):
                ha = {1: "left", -1: "right", 0: "center"}[dx]
                va = {1: "bottom", -1: "top", 0: "center"}[dy]
                yield (dx * distance, dy * distance), ha, va, distance > near

    def draw(self, renderer):
        """Place the labels (called by the axes before it draws them)."""
        if not self.get_visible():
            return
        scale = renderer.points_to_pixels(1.0)
        half = (self.radius + 0.5) * scale
        centres = self.ax.transData.transform(self.dots) if len(self.dots) else []
        obstacles = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in centres]
        frame = self.ax.bbox.padded(-2.0)
        for label in self.labels:
            best = None
            for offset, ha, va, far in self.candidates():
                label.xyann = offset
                label.set(ha=ha, va=va)
                label.update_positions(renderer)
                box = Text.get_window_extent(label, renderer)
                outside = box.width * box.height - _overlap(box, frame)
                cost = 10 * outside + sum(_overlap(box, other) for other in obstacles)
                if best is None or cost < best[0]:
                    best = (cost, offset, ha, va, far, box)
                if cost == 0:
                    break
            _, offset, ha, va, far, box = best
            label.xyann = offset
            label.set(ha=ha, va=va)
            if label.arrow_patch is not None:
                label.arrow_patch.set_visible(far)
            obstacles.append(box.padded(1.0))
        self.stale = False


def place_labels(ax, points, texts, colours, dots, size: float, fontsize: float = MIN_FONT) -> list:
    """Label ``points`` (data coordinates) with ``texts`` beside the scatter ``dots``
    (all dots of the axes, data coordinates, marker area ``size`` in points^2) so that
    no label covers a dot or another label and every label stays inside the axes.
    Returns the labels (``Annotation`` objects)."""
    radius = math.sqrt(size) / 2
    labels = [ax.annotate(text, xy, xytext=(radius + 2, radius + 2), textcoords="offset points",
                          fontsize=fontsize, color=colour, annotation_clip=False, zorder=4,
                          arrowprops={"arrowstyle": "-", "lw": 0.6, "color": colour,
                                      "shrinkA": 1, "shrinkB": radius + 1})
              for xy, text, colour in zip(points, texts, colours)]
    for label in labels:
        label.set_in_layout(False)             # always inside the axes: nothing to make room for
    if labels:
        ax.add_artist(LabelPlacer(ax, labels, dots, radius))
    return labels
