"""How the course's crops frame a face, measured on its training faces (``facepoints measure-framing``).

Two framings, both as medians over a seeded sample of training faces (``Framing``):

* against the face finder's box: the finder looks at each crop, shown with its longer
  side drawn at random from ``FINDER_VIEW`` px (every face large enough for it; the
  finder's scale pyramid has steps of 5/6, so one fixed size would give every face the
  same step's box); where it finds exactly one face, the crop's width, height and centre
  are measured in units of the box's side;
* against the 14 labelled points: the crop's width, height and centre in units of the
  points' scale, in the face's own frame (``photo.points_frame``).

The result file (``bench/results/course-framing.json``) holds both, how many faces the
finder found, and the spread (quartiles) of each measure, so a reader sees how tightly
the course frames its faces.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..core.gt_csv import read_gt
from ..core.images import read_image
from .photo import Framing, _detector, points_frame

FINDER_VIEW = (200, 480)   # px: the range of a crop's longer side as the finder sees it here


def _quartiles(values) -> list[float]:
    return [round(float(v), 4) for v in np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])]


def measure_course_framing(gt_csv: str | os.PathLike, img_dir: str | os.PathLike, faces: int = 1000,
                           seed: int = 0, progress=None) -> dict:
    """Measure ``Framing`` on ``faces`` training faces drawn with ``seed``; returns the
    result record (``framing``, counts, quartiles of each measure)."""
    table = read_gt(gt_csv)
    names = sorted(table)
    if not names:
        raise ValueError(f"{gt_csv} lists no faces")
    rng = np.random.default_rng(seed)
    chosen = [names[i] for i in sorted(rng.choice(len(names), size=min(faces, len(names)), replace=False))]
    detector = _detector()
    box_measures, point_measures, counts = [], [], {"none": 0, "one": 0, "several": 0}
    bar = progress(total=len(chosen), desc="framing", unit="face") if progress else None
    for name in chosen:
        img = read_image(os.path.join(img_dir, name))
        w, h = img.size
        points = np.asarray(table[name], dtype=np.float64).reshape(14, 2)
        centre, scale, rotation = points_frame(points)
        crop_centre = np.array([w / 2 - 0.5, h / 2 - 0.5])        # in the points' pixel-centre coordinates
        offset = rotation.T @ (crop_centre - centre) / scale
        point_measures.append((w / scale, h / scale, offset[0], offset[1]))

        view_scale = rng.uniform(*FINDER_VIEW) / max(w, h)
        view = img.resize((max(1, round(w * view_scale)), max(1, round(h * view_scale))), Image.Resampling.BILINEAR)
        rects, _, _ = detector.run(np.asarray(view), 0, 0.0)
        counts["none" if len(rects) == 0 else "one" if len(rects) == 1 else "several"] += 1
        if len(rects) == 1:
            r = rects[0]
            x0, y0, x1, y1 = (r.left() / view_scale, r.top() / view_scale,
                              (r.right() + 1) / view_scale, (r.bottom() + 1) / view_scale)
            side = np.sqrt((x1 - x0) * (y1 - y0))
            box_measures.append((w / side, h / side, (w / 2 - (x0 + x1) / 2) / side, (h / 2 - (y0 + y1) / 2) / side))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not box_measures:
        raise ValueError("the finder found no face in any sampled crop: nothing to measure the box framing on")
    box, pts = np.array(box_measures), np.array(point_measures)
    framing = Framing(*(float(np.median(box[:, i])) for i in range(4)), *(float(np.median(pts[:, i])) for i in range(4)))
    keys = ("width", "height", "dx", "dy")
    return {
        "framing": framing.to_dict(),
        "faces": len(chosen), "seed": seed, "finder_view_px": list(FINDER_VIEW),
        "finder_found": counts, "finder_recall": counts["one"] / len(chosen) + counts["several"] / len(chosen),
        "quartiles": {**{f"box_{k}": _quartiles(box[:, i]) for i, k in enumerate(keys)},
                      **{f"points_{k}": _quartiles(pts[:, i]) for i, k in enumerate(keys)}},
    }
