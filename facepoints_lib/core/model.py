"""The keypoint networks, written from scratch: a small residual backbone and two heads.

* ``head="heatmap"`` (the recipe): a light feature pyramid brings the backbone back to
  stride 4 and predicts one heatmap per point; a spatial softmax turns each map into a
  distribution whose mean is the point (integral regression / soft-argmax), so the
  output is still coordinates and the whole net trains end to end on a coordinate loss.
* ``head="regression"``: the last feature map is flattened into a small MLP that predicts
  offsets from the mean face shape (notebook 03's baseline).

Every network takes float images in [0, 1], (N, 3, S, S), normalises them with its own
buffers, and returns normalised keypoints (N, 14, 2) (see ``schema``). ``ModelConfig``
is plain data: it is stored in checkpoints and is all that is needed to rebuild the net.
Variants that lost to these in notebook 03 (a heatmap + offsets head, stacked hourglass
refinement) are described in bench/README.md, with the commit that can still run them.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schema import NUM_POINTS


HEADS = ("heatmap", "regression")
# Upper bounds of a config's sizes (ModelConfig.validate): far above any network this
# project trains (96 px, widths <= 256, depths <= 3), far below what exhausts a machine.
MAX_IMAGE_SIZE, MAX_WIDTH, MAX_DEPTH, MAX_HIDDEN = 256, 1024, 16, 4096
MAX_PARAMETERS = 50_000_000        # 200 MB of float32 weights; the recipe has 2.3 M
MAX_ACTIVATIONS = 16_000_000       # feature-map values of one image's forward pass (64 MB of
                                   # float32); the recipe has about 0.8 M


@dataclass
class ModelConfig:
    """Hyper-parameters of a keypoint network (stored in checkpoints as a dict)."""

    image_size: int = 96                         # network input side, pixels
    head: str = "heatmap"                        # "heatmap" (soft-argmax) or "regression"
    stem_width: int = 24                         # channels after the stride-2 stem
    widths: tuple = (48, 96, 160, 256)           # stage widths at strides 4, 8, 16, 32
    depths: tuple = (2, 2, 2, 1)                 # residual blocks per stage
    decoder_width: int = 64                      # feature-pyramid channels (heatmap head)
    hidden: int = 256                            # MLP width (regression head)
    dropout: float = 0.1                         # before the regression MLP
    second_look: bool = True                     # predict again on the face aligned upright (align.py)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Rebuild from ``to_dict`` output; unknown keys are refused.

        Model files written before the refining stacks were retired carry ``stacks: 1``,
        which is what every network now is: that key is accepted at 1 and dropped.
        """
        data = dict(data)
        if "stacks" in data:
            if data["stacks"] != 1:
                raise ValueError(f"refining stacks (stacks={data['stacks']!r}) are no longer supported; "
                                 "see bench/README.md for the commit that can still load such a model")
            del data["stacks"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse configurations the networks cannot be built from, and sizes beyond any
        sensible keypoint network (a config read from a model file is untrusted input: a
        10000-wide stage or a 200000-block stage would take gigabytes before failing)."""
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(map(repr, HEADS))}, got {self.head!r}")
        if not isinstance(self.widths, (tuple, list)) or not isinstance(self.depths, (tuple, list)) \
                or len(self.widths) != 4 or len(self.depths) != 4:
            raise ValueError("widths and depths need one entry per stage (4)")
        for name, value, top in (("image_size", self.image_size, MAX_IMAGE_SIZE),
                                 ("stem_width", self.stem_width, MAX_WIDTH),
                                 ("decoder_width", self.decoder_width, MAX_WIDTH),
                                 ("hidden", self.hidden, MAX_HIDDEN),
                                 *((f"widths[{i}]", w, MAX_WIDTH) for i, w in enumerate(self.widths)),
                                 *((f"depths[{i}]", d, MAX_DEPTH) for i, d in enumerate(self.depths))):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        if not isinstance(self.second_look, bool):
            raise ValueError(f"second_look must be True or False, got {self.second_look!r}")
        if self.image_size % 32 or self.image_size < 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.estimated_parameters() > MAX_PARAMETERS:
            raise ValueError(f"the network would have about {self.estimated_parameters() / 1e6:.0f} M "
                             f"parameters, more than {MAX_PARAMETERS / 1e6:.0f} M")
        if self.estimated_activations() > MAX_ACTIVATIONS:
            raise ValueError(f"one image's forward pass would hold about {self.estimated_activations() / 1e6:.0f} M "
                             f"feature values, more than {MAX_ACTIVATIONS / 1e6:.0f} M")

    def estimated_activations(self) -> int:
        """Feature-map values one image's forward pass writes (each convolution's output and
        its batch norm's), counted from the config alone: an upper bound on what inference
        holds at once, and about what training keeps per image for the backward pass."""
        s = self.image_size
        count = 2 * (s // 2) ** 2 * self.stem_width
        sides = [max(s // (4 * 2 ** i), 1) for i in range(4)]
        for side, width, depth in zip(sides, self.widths, self.depths):
            count += (6 + 4 * (depth - 1)) * side * side * width
        if self.head == "regression":
            return count + self.hidden + 2 * NUM_POINTS
        d, fine = self.decoder_width, sides[0] ** 2
        return count + 2 * d * sum(side * side for side in sides) + 2 * d * fine + 3 * NUM_POINTS * fine

    def estimated_parameters(self) -> int:
        """Convolution and linear weights of the network, counted from the config alone
        (within a few per cent: batch norms and biases are left out)."""
        count, c_in = 27 * self.stem_width, self.stem_width
        for width, depth in zip(self.widths, self.depths):
            count += 9 * c_in * width + c_in * width + 9 * width * width    # first block + shortcut
            count += (depth - 1) * 18 * width * width
            c_in = width
        d = self.decoder_width
        if self.head == "regression":
            side = self.image_size // 32
            return count + self.widths[-1] * side * side * self.hidden + self.hidden * 2 * NUM_POINTS
        return count + sum(self.widths) * d + 9 * d * d + d * NUM_POINTS


def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3, relu: bool = True) -> nn.Sequential:
    """Convolution + batch norm (+ ReLU), padding keeping the size at stride 1."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), conv_bn(c_out, c_out, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else conv_bn(c_in, c_out, stride, kernel=1, relu=False))
        nn.init.zeros_(self.body[1][1].weight)      # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class Backbone(nn.Module):
    """Stride-2 stem then four residual stages; returns the four stage outputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.stem = conv_bn(3, cfg.stem_width, stride=2)
        stages, c_in = [], cfg.stem_width
        for width, depth in zip(cfg.widths, cfg.depths):
            blocks = [ResidualBlock(c_in, width, stride=2)]
            blocks += [ResidualBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Each (N, K, H, W) logit map as a probability distribution over its cells (fp32)."""
    n, k, h, w = logits.shape
    return torch.softmax(logits.flatten(2).float(), dim=-1).view(n, k, h, w)


def expected_coordinates(probs: torch.Tensor) -> torch.Tensor:
    """Mean (u, v) of each heatmap distribution: (N, K, H, W) -> (N, K, 2).

    Cell centres sit at ``(j + 0.5) / W``, matching the normalised coordinates.
    """
    h, w = probs.shape[-2:]
    xs = (torch.arange(w, dtype=probs.dtype, device=probs.device) + 0.5) / w
    ys = (torch.arange(h, dtype=probs.dtype, device=probs.device) + 0.5) / h
    u = (probs.sum(2) * xs).sum(-1)
    v = (probs.sum(3) * ys).sum(-1)
    return torch.stack([u, v], dim=-1)


class KeypointNet(nn.Module):
    """Backbone + heatmap or regression head; images in [0, 1] -> normalised keypoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.register_buffer("pixel_mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("pixel_std", torch.full((1, 3, 1, 1), 0.25))
        self.register_buffer("mean_shape", torch.full((NUM_POINTS, 2), 0.5))
        self.refiner: Refiner | None = None          # the cascade's second stage (``attach_refiner``)
        self.backbone = Backbone(cfg)
        if cfg.head == "heatmap":
            d = cfg.decoder_width
            self.lateral = nn.ModuleList(conv_bn(w, d, kernel=1, relu=False) for w in cfg.widths)
            self.smooth = conv_bn(d, d)
            self.heatmaps = nn.Conv2d(d, NUM_POINTS, 1)
        else:
            side = cfg.image_size // 32
            self.regressor = nn.Sequential(
                nn.Flatten(), nn.Dropout(cfg.dropout),
                nn.Linear(cfg.widths[-1] * side * side, cfg.hidden), nn.ReLU(inplace=True),
                nn.Linear(cfg.hidden, 2 * NUM_POINTS))
            nn.init.zeros_(self.regressor[-1].weight)
            nn.init.zeros_(self.regressor[-1].bias)

    def set_statistics(self, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                       mean_shape: torch.Tensor) -> None:
        """Store the training set's channel mean/std (of [0, 1] pixels) and mean shape."""
        self.pixel_mean.copy_(pixel_mean.view(1, 3, 1, 1))
        self.pixel_std.copy_(pixel_std.view(1, 3, 1, 1))
        self.mean_shape.copy_(mean_shape.view(NUM_POINTS, 2))

    def attach_refiner(self, refiner: "Refiner | None") -> None:
        """Make ``refiner`` this network's second stage (None: remove it). The refiner's
        weights become part of this network's ``state_dict`` (``refiner.*``)."""
        if refiner is None:
            self._modules.pop("refiner", None)
            self.refiner = None
        else:
            self.refiner = refiner

    def decode_side(self) -> int:
        """The side pictures are decoded at for this network: its input side, or, with a
        refiner, the larger side the refiner cuts its aligned crops from."""
        if self.refiner is None:
            return self.config.image_size
        return max(self.config.image_size, self.refiner.source_side)

    def heatmap_logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Top-down pyramid from stride 32 to stride 4: one (N, 14, H, W) fp32 logit map per point."""
        x = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            x = F.interpolate(x, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        x = self.smooth(x)
        with torch.autocast(x.device.type, enabled=False):   # bf16 logits would blur the softmax
            return self.heatmaps(x.float())

    def forward(self, images: torch.Tensor, with_heatmaps: bool = False):
        """(N, 3, S, S) images in [0, 1] -> (N, 14, 2) normalised keypoints (fp32 for the heatmap head).

        With ``with_heatmaps``: ``(keypoints, heatmaps)``, the heatmaps being the (N, 14, H, W)
        distributions whose means are the points (None for the regression head), for the
        training loss's heatmap-shape term (``losses.heatmap_js_loss``).
        """
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)
        if self.config.head == "heatmap":
            probs = spatial_softmax(self.heatmap_logits(features))
            points = expected_coordinates(probs)
        else:
            probs = None
            points = self.mean_shape + self.regressor(features[-1]).view(-1, NUM_POINTS, 2)
        return (points, probs) if with_heatmaps else points


class Refiner(nn.Module):
    """The cascade's second stage: a network that sees only aligned faces.

    ``net`` was trained on faces warped onto ``canonical`` (14, 2), a tight frame around
    the first stage's mean face, from pictures decoded at ``source_scale`` times its input
    side; ``inference.predict_details`` aligns each face by the first stage's answer,
    asks ``net`` and maps its answer back exactly (see ``cascade``).
    """

    MAX_SOURCE_SCALE = 4

    def __init__(self, net: "KeypointNet", source_scale: int = 2, flip_tta: bool = True):
        super().__init__()
        if not isinstance(source_scale, int) or isinstance(source_scale, bool) \
                or not 1 <= source_scale <= self.MAX_SOURCE_SCALE:
            raise ValueError(f"source_scale must be an integer from 1 to {self.MAX_SOURCE_SCALE}, "
                             f"got {source_scale!r}")
        if not isinstance(flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {flip_tta!r}")
        self.net = net
        self.source_scale = source_scale
        self.flip_tta = flip_tta          # average with the mirrored crop's answer (when the caller flips)
        self.register_buffer("canonical", torch.full((NUM_POINTS, 2), 0.5))

    @property
    def source_side(self) -> int:
        """The side of the pictures the aligned crops are cut from."""
        return self.net.config.image_size * self.source_scale

    def to_dict(self) -> dict:
        """Plain-data form for model files: what rebuilds it (the weights come separately)."""
        return {"model_config": self.net.config.to_dict(), "source_scale": self.source_scale,
                "flip_tta": self.flip_tta}

    @classmethod
    def from_dict(cls, data: dict) -> "Refiner":
        """An untrained refiner of the shape ``to_dict`` describes (unknown keys refused)."""
        if not isinstance(data, dict) or not {"model_config", "source_scale"} <= set(data) \
                or not set(data) <= {"model_config", "source_scale", "flip_tta"}:
            raise ValueError("a refiner is described by model_config, source_scale and flip_tta (default True)")
        return cls(build_model(data["model_config"]), data["source_scale"], data.get("flip_tta", True))


def memory_format_for(model: nn.Module) -> torch.memory_format:
    """The memory layout ``model`` trains and predicts in: channels-last, unless it has a
    convolution that oneDNN gets wrong in that layout.

    Channels-last is the faster layout for oneDNN's convolutions. But the AVX2 kernel for
    the weight gradient of a strided 1x1 convolution (oneDNN 3.12 in torch 2.13,
    ``jit_1x1:avx2`` backward_weights) writes past its workspace when a channels-last
    input has 2 to 7 channels: the process aborts with a glibc heap error on one thread,
    and on two threads the gradient comes out wrong without a word (docs/cpu-notes.md).
    The recipe's networks never have such a layer (their narrowest strided 1x1
    convolution reads 24 channels); networks with a stage narrower than 8 channels do.
    Those use the contiguous layout on every CPU, so that the choice, and hence the
    weights a seed gives, do not depend on which CPU runs them.
    """
    for module in model.modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                and max(module.stride) > 1 and 1 < module.in_channels // module.groups < 8):
            return torch.contiguous_format
    return torch.channels_last


@torch.no_grad()
def fold_batch_norm(model: KeypointNet) -> KeypointNet:
    """A copy of ``model`` for inference with every batch norm folded into the convolution
    before it (its scale into the weights, its shift into a bias).

    In eval mode a batch norm is a fixed per-channel affine map, so the copy computes the
    same function (to float rounding) with one pass less over each feature map: detection
    spends about a tenth of its time in batch norm otherwise. Not for training.
    """
    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            conv, norm = block[i], block[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            shift = norm.bias - norm.running_mean * scale
            fused.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
            block[i], block[i + 1] = fused.to(conv.weight.device), nn.Identity()
    return folded


def build_model(cfg: ModelConfig | dict) -> KeypointNet:
    """Build a network from a config (or its plain-data dict)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return KeypointNet(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
