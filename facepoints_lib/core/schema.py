"""The 14-point face schema: names, horizontal-flip permutation, drawing skeleton.

This module is the single place where the keypoint layout is defined. "Left" means
the image's left (the viewer's left), not the person's.

Coordinate convention (used by every module of the package):

* Pixel coordinates, as in ``gt.csv``: the centre of pixel column ``i`` is ``x = i``,
  so an image of width ``w`` spans ``[-0.5, w - 0.5]`` and a horizontal flip maps
  ``x -> w - 1 - x``.
* Normalised coordinates, used inside the package: ``u = (x + 0.5) / w`` and
  ``v = (y + 0.5) / h``, so the image spans ``[0, 1]`` on both axes whatever its size
  and a flip maps ``u -> 1 - u``. The course metric scales x errors by ``100 / w`` and
  y errors by ``100 / h``, so an error of ``d`` in normalised units costs ``(100 d)^2``.
"""

NUM_POINTS = 14

POINT_NAMES = (
    "left_eyebrow_outer",
    "left_eyebrow_inner",
    "right_eyebrow_inner",
    "right_eyebrow_outer",
    "left_eye_outer",
    "left_eye_centre",
    "left_eye_inner",
    "right_eye_inner",
    "right_eye_centre",
    "right_eye_outer",
    "nose_tip",
    "mouth_left",
    "mouth_centre",
    "mouth_right",
)

# After mirroring an image, point FLIP_PERMUTATION[i] of the original is point i of the mirror.
FLIP_PERMUTATION = (3, 2, 1, 0, 9, 8, 7, 6, 5, 4, 10, 13, 12, 11)

# Facial parts, for drawing and for per-part error reports: name -> point indices.
POINT_GROUPS = {
    "left_eyebrow": (0, 1),
    "right_eyebrow": (2, 3),
    "left_eye": (4, 5, 6),
    "right_eye": (7, 8, 9),
    "nose": (10,),
    "mouth": (11, 12, 13),
}

# Line segments drawn between points to show the face's structure.
SKELETON = (
    (0, 1), (2, 3),            # eyebrows
    (4, 5), (5, 6),            # left eye
    (7, 8), (8, 9),            # right eye
    (11, 12), (12, 13),        # mouth
    (6, 10), (7, 10),          # inner eye corners to the nose tip
    (10, 12),                  # nose tip to the mouth centre
)

# Outer eye corners: their distance is the inter-ocular normaliser of NME.
OUTER_EYE_CORNERS = (4, 9)
