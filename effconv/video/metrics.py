"""Video quality metrics on tensors in [-1, 1]: PSNR and per-frame SSIM (pytorch-msssim)."""

from __future__ import annotations

import torch

VIDEO_RANGE = 2.0  # [-1, 1]


def psnr_tensor(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) as a 0-d float64 tensor on the inputs' device: reading it is the only host sync."""
    mse = torch.mean((prediction.float().clamp(-1, 1) - target.float()) ** 2).double().clamp(min=1e-12)
    return 10.0 * torch.log10(VIDEO_RANGE**2 / mse)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(psnr_tensor(prediction, target))


def video_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W): every frame as an image, for per-frame image metrics."""
    batch, channels, frames, height, width = video.shape
    return video.transpose(1, 2).reshape(batch * frames, channels, height, width)


def _unit_range(video: torch.Tensor) -> torch.Tensor:
    return (video_frames(video).float().clamp(-1, 1) + 1) / 2


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-frame SSIM (11x11 Gaussian window); differentiable, so it also serves as a loss."""
    from pytorch_msssim import ssim as frame_ssim

    pred, ref = _unit_range(prediction), _unit_range(target)
    window = min(11, pred.shape[-1], pred.shape[-2])
    window -= 1 - window % 2  # odd
    return frame_ssim(pred, ref, data_range=1.0, win_size=window)
