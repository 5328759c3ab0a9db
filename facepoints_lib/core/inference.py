"""Inference: device and precision choice, and ``predict``, shared by training and detection.

``predict`` runs a network on uint8 faces as ``detect`` does (flip test-time augmentation,
the second look on the aligned face, bfloat16 where the CPU computes it natively) and
is what training's validation measures, so the two cannot drift apart. The CPU checks
read ``/proc/cpuinfo`` (see docs/cpu-notes.md).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .align import align_faces, invert_transform, rotation_degrees, similarity_to
from .augment import apply_transform, flip_images, flip_keypoints
from .model import KeypointNet, memory_format_for

MAX_THREADS = 256                    # torch CPU threads; OpenMP crashed (SIGSEGV) at 100000
TURNED_DEGREES = 10.0                # the second look: for faces the first finds turned more than this
EXTRA_LOOKS = 2                      # ... looks on the aligned face (a third look helped turned faces)
PREDICT_MEMORY_BYTES = 256 * 2 ** 20   # feature maps of one predict batch, at most, as estimated (the
                                       # recipe: 3.0 MB a face, 6.0 MB with its mirror, so 42 a batch)


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


@torch.no_grad()
def predict(model: KeypointNet, images: torch.Tensor, batch_size: int = 64,
            flip_tta: bool = True, bf16: bool = False, second_look: bool | None = None) -> np.ndarray:
    """Normalised keypoints (N, 14, 2) for uint8 images (N, 3, S, S).

    ``flip_tta`` averages with the (re-labelled) prediction on the mirrored image;
    ``bf16`` runs the backbone under bfloat16 autocast (the heatmap logits and the
    soft-argmax stay fp32). ``second_look`` (default: the model config's): a face whose
    first answer lies turned by more than ``TURNED_DEGREES`` from the mean face is
    aligned upright onto the model's mean shape (``align.align_faces``) and predicted
    again, ``EXTRA_LOOKS`` times, each look aligning by the last answer; the answer is
    mapped back exactly. Faces found upright keep their first answer: on the recipe's
    holdout, looking again at every face made the upright ones slightly worse (err 3.50
    against 3.43), while turned faces gain most from the second look and a third.
    """
    model.eval()
    device = next(model.parameters()).device
    layout = memory_format_for(model)
    again = model.config.second_look if second_look is None else second_look
    per_image = 4 * model.config.estimated_activations() * (2 if flip_tta else 1)
    batch_size = max(1, min(batch_size, PREDICT_MEMORY_BYTES // per_image))   # bounded by any model file

    def look(x: torch.Tensor) -> torch.Tensor:
        if flip_tta:
            x = torch.cat([x, flip_images(x)])
        x = x.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(x).float()
        if flip_tta:
            half = len(pred) // 2
            pred = 0.5 * (pred[:half] + flip_keypoints(pred[half:]))
        return pred

    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255.0)
        pred = look(x)
        if again:
            turned = rotation_degrees(similarity_to(pred, model.mean_shape)).abs() > TURNED_DEGREES
            if bool(turned.any()):
                faces, answer = x[turned], pred[turned]
                for _ in range(EXTRA_LOOKS):
                    crops, matrices = align_faces(faces, answer, model.mean_shape)
                    answer = apply_transform(invert_transform(matrices), look(crops))
                pred[turned] = answer
        out.append(pred.double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.mean_shape.shape[0], 2))
