"""Distillation losses: L1 + (1 - SSIM) against the real frames, optional LPIPS, and feature MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effconv.recipe import LossWeights
from effconv.video.metrics import ssim, video_frames
from effconv.errors import EffconvError


def load_lpips() -> nn.Module:
    """LPIPS(VGG) if the `lpips` package and its backbone weights are available offline."""
    try:
        import lpips
    except ImportError:
        raise EffconvError(
            "--lpips needs the 'lpips' package and its VGG weights cached locally.",
            "pip install lpips and pre-download the weights, or drop --lpips.",
        ) from None
    try:
        return lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
    except (OSError, RuntimeError) as exc:
        raise EffconvError(f"LPIPS weights are not available offline ({exc}).", "cache them first, or drop --lpips.") from None


class DistillLoss(nn.Module):
    def __init__(self, weights: LossWeights, lpips_model: nn.Module | None = None):
        super().__init__()
        self.weights = weights
        self.lpips = lpips_model

    def forward(self, prediction: torch.Tensor, target: torch.Tensor,
                student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = {"l1": F.l1_loss(prediction, target)}
        if self.weights.ssim > 0:
            terms["ssim"] = 1.0 - ssim(prediction, target)
        if self.lpips is not None and self.weights.lpips > 0:
            terms["lpips"] = self.lpips(video_frames(prediction), video_frames(target)).mean()
        if self.weights.features > 0 and teacher_features:
            terms["features"] = sum(
                F.mse_loss(student_features[name], teacher_features[name]) for name in teacher_features
            ) / len(teacher_features)
        terms["total"] = sum(getattr(self.weights, name) * value for name, value in terms.items())
        return terms
