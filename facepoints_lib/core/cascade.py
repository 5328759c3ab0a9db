"""The cascade's second stage: a network trained only on faces aligned by their points.

The first network finds a face however it is turned or framed; its answer gives the
similarity that puts the face onto a fixed frame (``canonical_frame``: the first
network's mean face, magnified about a point, so the points get more pixels than in the
loose course crops). A second network trained only on such aligned crops refines the
points, and its answer maps back exactly (``inference.predict_details``), as in the
cascades of Sun et al. (2013) and the Deep Alignment Network (Kowalski et al., 2017).

Training (``train_refiner``) aligns each training face by its true points and jitters
the alignment by a multiple (``CascadeConfig.jitter``) of how much the first network's
answers miss it: the residual similarity between the alignment by the first network's
answer and by the truth, measured on the validation faces (``alignment_residuals``),
never seen in training. The robust spread measured there is the typical face's; the
tails are wider, and a jitter three times that spread trained the best second network.
Each training crop is resampled once from the decoded picture, jitter and alignment
together, as detection cuts its crop (``FaceSet.frames``). The validation faces are
aligned as detection aligns them, by the first network's answer.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch

from .align import invert_transform, rotation_degrees, similarity_to
from .augment import AugmentConfig, apply_transform, compose, cut_crops
from .config import RunConfig, TrainConfig
from .dataset import FaceSet
from .fit import fit
from .inference import predict
from .model import KeypointNet, Refiner
from .progress import TextProgress

MIN_RESIDUAL_FACES = 20          # fewer validation faces than this: the default jitter below
DEFAULT_RESIDUALS = {"rotation_deg": 3.0, "scale": 0.03, "shift": 0.012, "faces": 0}
MAX_RESIDUALS = {"rotation_deg": 15.0, "scale": 0.15, "shift": 0.08}   # an untrained first stage's are
                                                                       # kept to these (tiny test runs)


def canonical_frame(mean_shape: torch.Tensor, zoom: float, centre_y: float) -> torch.Tensor:
    """The second stage's frame (14, 2): ``mean_shape`` (normalised) magnified ``zoom``
    times about ``(0.5, centre_y)``."""
    centre = torch.tensor([0.5, centre_y], dtype=mean_shape.dtype)
    return (mean_shape - centre) * zoom + centre


def _robust_std(values: torch.Tensor) -> float:
    """The standard deviation a normal distribution with this median absolute deviation
    has: the spread of the typical faces, not inflated by a few missed ones."""
    values = values.double()
    return float(1.4826 * (values - values.median()).abs().median())


def alignment_residuals(points: torch.Tensor, truth: torch.Tensor, canonical: torch.Tensor) -> dict:
    """How far aligning by ``points`` (N, 14, 2, a first stage's answers) lands from
    aligning by ``truth``, as the spread of the similarity between the two crops:
    ``rotation_deg`` (degrees), ``scale`` (relative), ``shift`` (share of the crop's side),
    each a robust standard deviation over the faces, and ``faces``."""
    by_truth = similarity_to(truth.float(), canonical)
    by_answer = similarity_to(points.float(), canonical)
    residual = compose(by_answer, invert_transform(by_truth))       # truth's crop -> answer's crop
    zoom = torch.linalg.det(residual[:, :, :2].double()).sqrt()
    shift = residual[:, :, 2].double() / 2                           # grid units -> share of the side
    found = {"rotation_deg": _robust_std(rotation_degrees(residual)), "scale": _robust_std(zoom.log()),
             "shift": _robust_std(shift.flatten())}
    return {**{key: min(value, MAX_RESIDUALS[key]) for key, value in found.items()}, "faces": len(points)}


def jitter_augment(base: AugmentConfig, residuals: dict, factor: float) -> AugmentConfig:
    """The second stage's augmentation: ``base``'s mirror and photometric changes, no
    turned or cut faces, and a similarity jitter whose uniform ranges have the standard
    deviations of ``residuals`` times ``factor`` (a uniform draw on ``[-r, r]`` has
    deviation ``r / sqrt(3)``)."""
    root3 = math.sqrt(3.0) * factor
    return replace(base, rotation_deg=root3 * residuals["rotation_deg"], scale=root3 * residuals["scale"],
                   shift=root3 * residuals["shift"], full_turn_prob=0.0, cut_prob=0.0, margin=0.0)


def second_stage_recipe(cfg: TrainConfig, residuals: dict) -> TrainConfig:
    """The recipe the second stage trains by: ``cfg``'s optimiser and schedule settings,
    ``cfg.cascade``'s network and epochs, and the jitter of ``jitter_augment``."""
    cc = cfg.cascade
    return replace(cfg, model=cc.model, epochs=cc.epochs, cascade=None,
                   augment=jitter_augment(cfg.augment, residuals, cc.jitter))


def aligned_faces(faces: FaceSet, points: torch.Tensor, canonical: torch.Tensor, out_size: int) -> FaceSet:
    """``faces`` warped onto ``canonical`` by the similarity that best maps ``points``
    (N, 14, 2) onto it, at ``out_size`` px, with their true keypoints in the crop's frame:
    the second stage's validation faces, cut as detection cuts them."""
    matrices = similarity_to(points.float(), canonical)
    sizes = torch.full((len(faces), 2), float(out_size), dtype=torch.float64)
    return FaceSet(cut_crops(faces.images, matrices, out_size), apply_transform(matrices, faces.keypoints.float()),
                   sizes, list(faces.filenames))


def train_refiner(first: KeypointNet, train: FaceSet, val: FaceSet, cfg: TrainConfig,
                  run: RunConfig | None = None, *, schedule=None, progress: Callable[..., object] = TextProgress,
                  log: Callable[[str], None] = print) -> tuple[Refiner, list[dict], dict]:
    """Train the second stage behind the trained first stage ``first``.

    ``train`` and ``val`` are labelled faces decoded at ``cfg.decode_side()``. Returns the
    refiner (not yet attached: ``first.attach_refiner``), its ``fit`` history (errs in the
    aligned crop's frame) and the residuals its jitter was drawn from. ``schedule``: as
    in ``fit`` (default: the stage's epochs).
    """
    run = run if run is not None else RunConfig()
    cc = cfg.cascade
    if cc is None:
        raise ValueError("the recipe has no second stage (cfg.cascade is None)")
    canonical = canonical_frame(first.mean_shape.detach().float().cpu(), cc.zoom, cc.centre_y)
    side = cc.model.image_size
    found = None
    if val is not None and len(val) >= 1:
        found = torch.from_numpy(predict(first, val.images)).float()
    if found is not None and len(val) >= MIN_RESIDUAL_FACES:
        residuals = alignment_residuals(found, val.keypoints, canonical)
        log(f"first stage's alignment residuals on {len(val)} validation faces: rotation "
            f"{residuals['rotation_deg']:.2f} deg, scale {100 * residuals['scale']:.2f} %, "
            f"shift {100 * residuals['shift']:.2f} % of the side (robust standard deviations)")
    else:
        residuals = dict(DEFAULT_RESIDUALS)
        log(f"fewer than {MIN_RESIDUAL_FACES} validation faces: the second stage's jitter is the default one")
    recipe = second_stage_recipe(cfg, residuals)
    train_aligned = replace(train, frames=similarity_to(train.keypoints.float(), canonical))   # cut per batch
    val_aligned = aligned_faces(val, found, canonical, side) if found is not None else None
    net, history = fit(train_aligned, val_aligned, recipe, run, schedule=schedule, progress=progress, log=log)
    refiner = Refiner(net, cc.source_scale, cc.flip_tta)
    refiner.canonical.copy_(canonical)
    return refiner.to(next(first.parameters()).device), history, residuals
