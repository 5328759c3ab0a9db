"""Inference: device and precision choice, and ``predict``, shared by training and detection.

``predict`` runs a network on uint8 faces as ``detect`` does (flip test-time augmentation,
the second look on the aligned face, bfloat16 where the CPU computes it natively) and
is what training's validation measures, so the two cannot drift apart. The CPU checks
read ``/proc/cpuinfo`` (see docs/cpu-notes.md).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .align import invert_transform, rotation_degrees, similarity_to
from .augment import apply_transform, flip_images, flip_keypoints, warp_images
from .model import KeypointNet, memory_format_for
from .schema import NUM_POINTS

MAX_THREADS = 256                    # torch CPU threads; OpenMP crashed (SIGSEGV) at 100000
TURNED_DEGREES = 10.0                # the second look: for faces the first finds turned more than this
EXTRA_LOOKS = 2                      # ... looks on the aligned face (a third look helped turned faces)
DOUBT_SPREAD = 1.0                   # the second try: for faces whose flip pair disagrees more than
                                     # this (mean spread, err units) ...
DOUBT_BLUR = 6.0                     # ... or whose heatmaps are broader than this (mean blur, % of the
                                     # side; the recipe's network: 5.7 at the 99th percentile of upright
                                     # validation faces, 10.3 at the 90th of cut ones), for a network
DOUBT_BLUR_SIDE = 96                 # of this input side; scaled by DOUBT_BLUR_SIDE / side for others:
                                     # a 64 px network's maps are 1.5x as broad (median 6.6 % against
                                     # 4.4 %), and at 6 % it doubted 84 % of upright faces (doubt_blur) ...
NEAR_BORDER = 0.05                   # ... or with a point this close to the border (share of the side;
                                     # 1 % of upright validation faces come closer than 0.08)
PAD_MARGIN = 0.25                    # the padded look's margin around the picture (share of its side)
PREDICT_MEMORY_BYTES = 256 * 2 ** 20   # feature maps of one predict batch, at most, as estimated (the
                                       # recipe: 3.0 MB a face, 6.0 MB with its mirror, so 42 a batch)


def restores_torch_threads(function):
    """Decorator: the caller's torch thread count is back when ``function`` returns or
    raises, whatever the function set (``torch.set_num_threads`` is process-wide)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    return wrapper


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")   # the flags that decide the kernels

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below native bfloat16: with one of these set, oneDNN
# runs as on a CPU without it, and so does the bf16 choice (see docs/cpu-notes.md).
_ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                          "AVX512_CORE_VNNI")


def cpu_flags() -> dict[str, bool]:
    """Which of ``CPU_FLAGS`` this CPU reports in /proc/cpuinfo (Linux; all False elsewhere)."""
    present: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {flag: flag in present for flag in CPU_FLAGS}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), Linux only.

    False as well when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below bfloat16 (for example
    ``AVX2``), so that such a cap reproduces a CPU without it.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISA_CAPS_WITHOUT_BF16:
        return False
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def use_bf16(setting: str, device: torch.device) -> bool:
    """Decide whether training runs under bfloat16 autocast."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {setting!r}")
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


@dataclass
class Prediction:
    """What ``predict_details`` found for each face.

    ``points`` (N, 14, 2) normalised; ``spread`` (N, 14) each point's disagreement between
    the flip pair's two answers, in the course err's units (the mean over x and y of
    ``(100 * half the difference / side)^2``; zeros without flip TTA), measured in the
    picture's frame whatever look gave the answer; ``blur`` (N, 14) each point's
    ``heatmap_blur`` in that look; ``look`` (N,) which look gave it:
    ``FIRST``, ``ALIGNED`` (a face found turned, looked at upright) or ``PADDED`` (the
    second try on a doubted face: the picture inside a margin, then aligned).
    """

    points: np.ndarray
    spread: np.ndarray
    blur: np.ndarray
    look: np.ndarray


FIRST, ALIGNED, PADDED = 0, 1, 2
LOOK_NAMES = ("first", "aligned", "padded")


def near_border(points: torch.Tensor, margin: float = NEAR_BORDER) -> torch.Tensor:
    """(N,) True where a point lies within ``margin`` of the picture's border or beyond it:
    a face the picture may cut, whose first answer cannot reach past the border."""
    return ((points < margin) | (points > 1 - margin)).flatten(1).any(1)


def padded_view(n: int, margin: float = PAD_MARGIN) -> torch.Tensor:
    """Forward matrices (n, 2, 3) that shrink the picture about its centre into a frame with
    ``margin`` (a share of the picture's side) on every side, its border repeated there."""
    zoom = 1.0 / (1.0 + 2.0 * margin)
    return torch.tensor([[zoom, 0.0, 0.0], [0.0, zoom, 0.0]]).repeat(n, 1, 1)


def heatmap_blur(probs: torch.Tensor | None, n: int) -> torch.Tensor:
    """(n, 14) how widely each point's heatmap spreads: the standard deviation of its
    distribution, in percent of the view's side (zeros for the regression head). A face
    the network reads gives sharp maps; a picture with no face gives broad ones."""
    if probs is None:
        return torch.zeros(n, NUM_POINTS)
    probs = probs.float()
    side = probs.shape[-1]
    centres = (torch.arange(side, dtype=probs.dtype, device=probs.device) + 0.5) / side
    variance = 0
    for marginal in (probs.sum(-2), probs.sum(-1)):                  # over x, over y
        mean = (marginal * centres).sum(-1, keepdim=True)
        variance = variance + (marginal * (centres - mean) ** 2).sum(-1)
    blur = 100 * variance.sqrt()                                      # (2n or n, 14)
    return 0.5 * (blur[:n] + blur[n:]) if len(blur) > n else blur


@torch.no_grad()
def look_at(model: KeypointNet, x: torch.Tensor, matrices: torch.Tensor | None = None,
            flip_tta: bool = True, bf16: bool = False, layout: torch.memory_format = torch.contiguous_format,
            out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One look at float pictures ``x`` (N, 3, S, S), through forward ``matrices`` (picture
    -> view of side ``out_size``, default S; None: the picture itself): the answer (N, 14,
    2) and each point's spread (N, 14), both in the picture's frame (the view's answer
    mapped back exactly, so it may lie outside the picture), and each point's
    ``heatmap_blur`` (N, 14) in the view."""
    view = x if matrices is None else warp_images(x, matrices, out_size or x.shape[-1])
    if flip_tta:
        view = torch.cat([view, flip_images(view)])
    view = view.contiguous(memory_format=layout)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred, probs = model(view, with_heatmaps=True)
    pred, blur = pred.float(), heatmap_blur(probs, len(x))
    if flip_tta:
        half = len(pred) // 2
        pair = torch.stack([pred[:half], flip_keypoints(pred[half:])])     # (2, N, 14, 2)
    else:
        pair = pred[None]
    if matrices is not None:
        back = invert_transform(matrices)
        pair = torch.stack([apply_transform(back, p) for p in pair])
    spread = (100.0 * (pair[0] - pair[-1]) / 2).pow(2).mean(-1)            # (N, 14)
    return pair.mean(0), spread, blur


def predict_bytes_per_image(model: KeypointNet, side: int, flip_tta: bool = True) -> int:
    """What ``predict_details`` holds for one picture of ``side`` px, as estimated: the
    feature maps of the larger of its networks (twice with the mirror) and the picture
    as float."""
    activations = model.config.estimated_activations()
    if model.refiner is not None:
        activations = max(activations, model.refiner.net.config.estimated_activations())
    return 4 * activations * (2 if flip_tta else 1) + 12 * side ** 2


def doubt_blur(side: int) -> float:
    """The heatmap blur (% of the side) above which a network of input ``side`` doubts its
    answer: ``DOUBT_BLUR`` at ``DOUBT_BLUR_SIDE``, as broad in heatmap cells at any other side."""
    return DOUBT_BLUR * DOUBT_BLUR_SIDE / side


@torch.no_grad()
def shrink_for(images: torch.Tensor, side: int) -> torch.Tensor:
    """``images`` (N, 3, S, S) resampled to ``side`` px for a network, bilinear with
    antialiasing, as training shrinks them (``dataset.shrunk``). Resampling the uint8
    pictures took about a third of the time of resampling their float copies on one
    thread, and its pixels differ from training's rounded float ones by at most one level."""
    return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def predict_details(model: KeypointNet, images: torch.Tensor, batch_size: int = 64,
                    flip_tta: bool = True, bf16: bool = False, second_look: bool | None = None,
                    second_try: bool = True) -> Prediction:
    """Keypoints of uint8 images (N, 3, S, S), with each point's flip spread and the look used.

    ``flip_tta`` averages with the (re-labelled) prediction on the mirrored image;
    ``bf16`` runs the backbone under bfloat16 autocast (the heatmap logits and the
    soft-argmax stay fp32). ``second_look`` (default: the model config's): a face whose
    first answer lies turned by more than ``TURNED_DEGREES`` from the mean face is
    aligned upright onto the model's mean shape (``align.align_faces``) and predicted
    again, ``EXTRA_LOOKS`` times, each look aligning by the last answer; the answer is
    mapped back exactly. Faces found upright keep their first answer: on the recipe's
    holdout, looking again at every face made the upright ones slightly worse (err 3.50
    against 3.43), while turned faces gain most from the second look and a third.

    ``second_try`` (with the second look and flip TTA): a face the answer doubts (its
    mean spread above ``DOUBT_SPREAD``, its heatmaps broader than ``doubt_blur``, or a
    point near the picture's border, where a picture that cuts the face leaves it) is
    looked at again inside a margin (``padded_view``), which lets points fall outside
    the picture, then aligned by that answer ``EXTRA_LOOKS`` times, and that answer is
    kept. On the cut copies of the recipe's validation faces, keeping it always beat
    keeping the answer whose flip pair or heatmaps agreed better (err 19.7 against 25.5
    and 20.3; all first answers: 54.4); on upright faces it changes 1 % of them.

    A model with a refiner (the cascade's second stage, ``model.refiner``) then aligns
    every face by that answer onto the refiner's frame, cut from the pictures as given
    (``images`` of side ``model.decode_side()``; the first stage sees them shrunk to its
    input side), and keeps the refiner's answer, mapped back exactly. The second try's
    faces are refined too: keeping the first stage's answer for them changed the shipped
    network's cascade by 0.005 upright and 0.1 on cut copies, while a first stage trained
    12 epochs doubted every face and its cascade refined none (bench/README.md). The
    spread and blur stay the first stage's: they describe how surely the face was found,
    which is what the confidence and the no-face check read.
    """
    model.eval()
    device = next(model.parameters()).device
    layout = memory_format_for(model)
    again = model.config.second_look if second_look is None else second_look
    retry = again and flip_tta and second_try
    refiner = model.refiner
    side = model.config.image_size
    per_image = predict_bytes_per_image(model, images.shape[-1], flip_tta)
    batch_size = max(1, min(batch_size, PREDICT_MEMORY_BYTES // per_image))   # bounded by any model file

    def look(x: torch.Tensor, matrices: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return look_at(model, x, matrices, flip_tta, bf16, layout)

    def aligned(x: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for _ in range(EXTRA_LOOKS):
            answer, spread, blur = look(x, similarity_to(answer, model.mean_shape))
        return answer, spread, blur

    points, spreads, blurs, looks = [], [], [], []
    for start in range(0, len(images), batch_size):
        part = images[start:start + batch_size]
        full = part.to(device).float().div_(255.0)
        x = full if part.shape[-1] == side else shrink_for(part, side).to(device).float().div_(255.0)
        pred, spread, blur = look(x)
        used = torch.full((len(x),), FIRST, dtype=torch.long)
        if again:
            turned = rotation_degrees(similarity_to(pred, model.mean_shape)).abs() > TURNED_DEGREES
            if bool(turned.any()):
                pred[turned], spread[turned], blur[turned] = aligned(x[turned], pred[turned])
                used[turned] = ALIGNED
        if retry:
            doubted = (spread.mean(1) > DOUBT_SPREAD) | (blur.mean(1) > doubt_blur(side)) | near_border(pred)
            if bool(doubted.any()):
                first = look(x[doubted], padded_view(int(doubted.sum())).to(device))[0]
                pred[doubted], spread[doubted], blur[doubted] = aligned(x[doubted], first)
                used[doubted] = PADDED
        if refiner is not None:
            pred = look_at(refiner.net, full, similarity_to(pred, refiner.canonical), flip_tta and refiner.flip_tta,
                           bf16, layout, refiner.net.config.image_size)[0]
        points.append(pred.double().cpu())
        spreads.append(spread.double().cpu())
        blurs.append(blur.double().cpu())
        looks.append(used)
    if not points:
        empty = np.zeros((0, NUM_POINTS))
        return Prediction(np.zeros((0, NUM_POINTS, 2)), empty, empty, np.zeros(0, dtype=np.int64))
    return Prediction(torch.cat(points).numpy(), torch.cat(spreads).numpy(), torch.cat(blurs).numpy(),
                      torch.cat(looks).numpy())


def predict(model: KeypointNet, images: torch.Tensor, batch_size: int = 64, flip_tta: bool = True,
            bf16: bool = False, second_look: bool | None = None, second_try: bool = True) -> np.ndarray:
    """Normalised keypoints (N, 14, 2) of uint8 images (N, 3, S, S): ``predict_details``'s
    points (what detection returns and training's validation measures)."""
    return predict_details(model, images, batch_size, flip_tta, bf16, second_look, second_try).points
