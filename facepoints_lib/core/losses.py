"""The training loss: L1 distance between predicted and true keypoints, in percent of the
side, plus (optionally) a term that shapes the heatmaps behind them.

Both point sets are normalised coordinates (see ``schema``), so ``100 * |pred - true|`` is
the error in per cent of the picture's width or height, the unit of the course's err
(which squares it). L1 beat the squared error, smooth L1 and the Wing loss in notebook
03's ablations (bench/results/exp-loss-*.json); those are retired (bench/README.md).

``heatmap_js_loss`` is DSNT's regulariser (Nibali et al. 2018): the coordinate loss alone
only fixes each heatmap's mean; this term also asks for one compact peak there. The
recipe leaves it off (``TrainConfig.heatmap_js = 0``); at 90 epochs a weight of 30 gave
holdout err 3.20 / 3.19 on two seeds against 3.22 / 3.24 without it (cand-90-js30*.json,
before turned faces joined the recipe).
"""

from __future__ import annotations

import torch


def keypoint_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between (N, 14, 2) normalised keypoints, in percent of the side."""
    return ((pred.float() - target) * 100.0).abs().mean()


def cell_distance_squared(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Squared distance, in heatmap cells, from every cell centre to each normalised keypoint.

    ``keypoints`` (N, K, 2) -> (N, K, H, W).
    """
    xs = (torch.arange(width, dtype=keypoints.dtype, device=keypoints.device) + 0.5) / width
    ys = (torch.arange(height, dtype=keypoints.dtype, device=keypoints.device) + 0.5) / height
    dx = (xs.view(1, 1, 1, width) - keypoints[..., 0, None, None]) * width
    dy = (ys.view(1, 1, height, 1) - keypoints[..., 1, None, None]) * height
    return dx ** 2 + dy ** 2


def gaussian_log_targets(keypoints: torch.Tensor, height: int, width: int,
                         sigma: float) -> torch.Tensor:
    """Log of a normalised Gaussian on the heatmap grid around each keypoint.

    ``keypoints`` are normalised (N, K, 2); the result is (N, K, H, W) log-probabilities
    (computed in log space, so points far outside the image still give a valid map).
    """
    logits = -cell_distance_squared(keypoints, height, width) / (2 * sigma ** 2)
    n, k = keypoints.shape[:2]
    return torch.log_softmax(logits.reshape(n, k, -1), dim=-1).view(n, k, height, width)


def heatmap_js_loss(probs: torch.Tensor, keypoints: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats) between heatmaps and Gaussians at the keypoints."""
    target = gaussian_log_targets(keypoints, probs.shape[-2], probs.shape[-1], sigma).exp()
    mixture = 0.5 * (probs + target)
    kl_p = torch.special.xlogy(probs, probs) - torch.special.xlogy(probs, mixture)
    kl_q = torch.special.xlogy(target, target) - torch.special.xlogy(target, mixture)
    return 0.5 * (kl_p + kl_q).flatten(2).sum(-1).mean()


def training_loss(pred: torch.Tensor, probs: torch.Tensor | None, targets: torch.Tensor,
                  heatmap_js: float = 0.0, sigma: float = 1.0) -> torch.Tensor:
    """The loss ``train_step`` minimises: the keypoint loss, plus ``heatmap_js`` times the
    heatmap-shape term when that weight is above 0 (``probs``: the heatmap head's maps)."""
    loss = keypoint_loss(pred, targets)
    if heatmap_js:
        loss = loss + heatmap_js * heatmap_js_loss(probs, targets, sigma)
    return loss
