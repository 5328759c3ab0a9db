"""The augmentation explorer of notebook 02: sliders move one face, a button draws a batch.

``transform_face`` applies chosen values of the transforms that ``augment.augment_batch``
draws at random: the same affine matrices, the same resampling and the same
photometric formula, so what the sliders show is what training sees.
``AugmentationExplorer(faces).widget`` is an ipywidgets 8 box: sliders and check boxes
with stable descriptions (``face``, ``rotation``, ``scale``, ``shift x``, ``shift y``,
``flip``, ``brightness``, ``contrast``, ``grayscale``), a ``random batch`` button and a
``reset`` button, in two columns above the pictures; the pictures are matplotlib
figures (``figure``, ``batch_figure``) as wide as the notebook's output area, shown in
``Output`` widgets and redrawn on every change. Beside the transformed face it shows what the detector's second
look sees: the face aligned upright onto the mean shape (``align.align_faces``), however
far the sliders turned it. Not frozen into ``solution.py``.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from ..core.align import align_faces, rotation_degrees, similarity_to
from ..core.augment import (AffineParams, AugmentConfig, adjust_colours, affine_matrices, augment_batch,
                      transform_keypoints, warp_images)
from ..core.dataset import FaceSet
from .figure_layout import FIGURE_WIDTH, wrapped
from .plotting import face_grid, show_face


def adjust_photometric(images: torch.Tensor, brightness: float = 0.0, contrast: float = 1.0,
                       grayscale: bool = False) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1] with chosen values of training's photometric
    formula (``augment.adjust_colours``, the function ``augment.photometric`` uses)."""
    n = images.shape[0]
    full = torch.ones(n, dtype=images.dtype)
    return adjust_colours(images, torch.full((n,), bool(grayscale)), full * contrast,
                          full * brightness).clamp(0.0, 1.0)


def transform_face(image: torch.Tensor, keypoints: torch.Tensor, *, rotation: float = 0.0,
                   scale: float = 1.0, shift_x: float = 0.0, shift_y: float = 0.0, flip: bool = False,
                   brightness: float = 0.0, contrast: float = 1.0, grayscale: bool = False,
                   out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One uint8 face (3, S, S) and its normalised points (14, 2), transformed.

    ``rotation`` in degrees (positive turns clockwise on screen), ``scale`` > 1 zooms in,
    shifts in fractions of the image side. Returns a float image (3, out, out) in [0, 1]
    and the moved points, relabelled when mirrored (``schema.FLIP_PERMUTATION``).
    """
    params = AffineParams(flip=torch.tensor([bool(flip)]),
                          angle=torch.tensor([math.radians(rotation)]),
                          scale=torch.tensor([float(scale)]),
                          shift=torch.tensor([[2.0 * shift_x, 2.0 * shift_y]]))   # grid units
    matrices = affine_matrices(params)
    warped = warp_images(image[None].float() / 255.0, matrices, out_size or image.shape[-1])
    moved = transform_keypoints(keypoints[None].float(), matrices, params.flip)
    return adjust_photometric(warped, brightness, contrast, grayscale)[0], moved[0]


def _slider(description: str, value: float, low: float, high: float, step: float, fmt: str = ".2f"):
    return widgets.FloatSlider(value=value, min=low, max=high, step=step, description=description,
                               readout_format=fmt, continuous_update=True,
                               style={"description_width": "80px"}, layout={"width": "340px"})


class AugmentationExplorer:
    """Sliders for one face's augmentation, redrawn live, and a training-time batch button.

    ``controls`` maps each description to its widget; ``last`` holds the image and
    points drawn last (for tests); ``widget`` is the box to display.
    """

    def __init__(self, faces: FaceSet, cfg: AugmentConfig | None = None, *, batch_size: int = 12,
                 seed: int = 0, figsize: tuple[float, float] = (FIGURE_WIDTH, 3.3)):
        if faces.keypoints is None or len(faces) == 0:
            raise ValueError("the explorer needs labelled faces")
        self.faces, self.cfg = faces, cfg or AugmentConfig()
        self.mean_shape = faces.keypoints.mean(0)          # the canonical frame of the aligned view
        self.batch_size, self.figsize = batch_size, figsize
        self.generator = torch.Generator().manual_seed(seed)
        self.controls = {
            "face": widgets.IntSlider(value=0, min=0, max=len(faces) - 1, description="face",
                                      style={"description_width": "80px"}, layout={"width": "340px"}),
            "rotation": _slider("rotation", 0.0, -180.0, 180.0, 1.0, ".0f"),
            "scale": _slider("scale", 1.0, 0.6, 1.4, 0.02),
            "shift x": _slider("shift x", 0.0, -0.25, 0.25, 0.01),
            "shift y": _slider("shift y", 0.0, -0.25, 0.25, 0.01),
            "flip": widgets.Checkbox(value=False, description="flip", indent=False),
            "brightness": _slider("brightness", 0.0, -0.5, 0.5, 0.02),
            "contrast": _slider("contrast", 1.0, 0.3, 1.7, 0.05),
            "grayscale": widgets.Checkbox(value=False, description="grayscale", indent=False),
            "numbers": widgets.Checkbox(value=True, description="numbers", indent=False),
        }
        self.defaults = {name: w.value for name, w in self.controls.items()}
        self.reset_button = widgets.Button(description="reset", tooltip="all sliders back to no change")
        self.batch_button = widgets.Button(description="random batch", button_style="info",
                                           tooltip="a batch as training sees it (random augmentations)")
        self.view = widgets.Output(layout={"min_height": f"{int(figsize[1] * 100) + 10}px"})
        self.batch_view = widgets.Output()
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batches_drawn = 0
        self._paused = False
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.reset_button.on_click(self._on_reset)
        self.batch_button.on_click(self._on_batch)
        checks = widgets.HBox([self.controls[n] for n in ("flip", "grayscale", "numbers")])
        sliders = [w for n, w in self.controls.items() if n not in ("flip", "grayscale", "numbers")]
        columns = widgets.HBox([widgets.VBox(sliders[:4]), widgets.VBox([*sliders[4:], checks])])
        # the pictures go below the knobs: there they get the output area's whole width
        self.widget = widgets.VBox([columns, widgets.HBox([self.reset_button, self.batch_button]),
                                    self.view, self.batch_view])
        self.redraw()

    def values(self) -> dict:
        """The current settings as keyword arguments of ``transform_face``."""
        c = self.controls
        return {"rotation": c["rotation"].value, "scale": c["scale"].value, "shift_x": c["shift x"].value,
                "shift_y": c["shift y"].value, "flip": c["flip"].value,
                "brightness": c["brightness"].value, "contrast": c["contrast"].value,
                "grayscale": c["grayscale"].value}

    def figure(self):
        """The chosen face before and after the current transform, and aligned upright."""
        index = self.controls["face"].value
        image, points = self.faces.images[index], self.faces.keypoints[index]
        settings = self.values()
        moved_image, moved_points = transform_face(image, points, **settings)
        self.last = (moved_image, moved_points)
        outside = int(((moved_points < 0) | (moved_points > 1)).any(-1).sum())
        numbers = self.controls["numbers"].value
        aligned, matrices = align_faces(moved_image[None], moved_points[None], self.mean_shape)
        fig, axes = plt.subplots(1, 3, figsize=self.figsize, layout="constrained")
        width = self.figsize[0] / 3 - 0.1
        show_face(axes[0], image, points, normalized=True, numbers=numbers,
                  title=wrapped(f"face {index}: {self.faces.filenames[index]}", width))
        show_face(axes[1], moved_image, moved_points, normalized=True, numbers=numbers,
                  title=wrapped("transformed" + (f" ({outside} points outside)" if outside else ""), width))
        show_face(axes[2], aligned[0], None, normalized=True, numbers=numbers,
                  title=wrapped(f"aligned upright (turned {-rotation_degrees(matrices).item():+.0f}°)", width))
        return fig

    def redraw(self) -> None:
        """Draw the chosen face before and after the current transform."""
        fig = self.figure()
        with self.view:
            self.view.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    def batch_figure(self):
        """A random batch with the training configuration's augmentations."""
        n = min(self.batch_size, len(self.faces))
        index = torch.randint(len(self.faces), (n,), generator=self.generator)
        before = self.faces.keypoints[index]
        images, points = augment_batch(self.faces.images[index], before, self.cfg,
                                       self.faces.image_size, self.generator)
        turns = rotation_degrees(similarity_to(before, points)).tolist()   # mirrors read as turns too
        self.batches_drawn += 1
        return face_grid(list(images), list(points), normalized=True, ncols=4, numbers=False,
                         titles=[f"face {i}, {t:+.0f}°" for i, t in zip(index.tolist(), turns)],
                         suptitle=f"random training batch {self.batches_drawn}")

    def draw_batch(self) -> None:
        """Show a new random batch below the explorer."""
        fig = self.batch_figure()
        with self.batch_view:
            self.batch_view.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    def _on_change(self, _change) -> None:
        if not self._paused:
            self.redraw()

    def _on_reset(self, _button) -> None:
        self._paused = True                 # one redraw for all the changes
        try:
            for name, value in self.defaults.items():
                if name != "face":
                    self.controls[name].value = value
        finally:
            self._paused = False
        self.redraw()

    def _on_batch(self, _button) -> None:
        self.draw_batch()
