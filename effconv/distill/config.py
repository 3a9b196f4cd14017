"""The `distill:` section of a recipe: losses, optimizer and schedule (defaults from the paper)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from effconv.spec import StrictModel


class LossWeights(StrictModel):
    l1: float = Field(1.0, ge=0)
    ssim: float = Field(0.2, ge=0, description="weight of (1 - SSIM)")
    lpips: float = Field(0.0, ge=0, description="used only with --lpips and locally cached VGG weights")
    features: float = Field(0.1, ge=0, description="MSE between projected student and teacher features")


class DistillRecipe(StrictModel):
    steps: int = Field(300, ge=1, le=10_000_000)
    batch_size: int = Field(1, ge=1, le=1024)
    grad_accum: int = Field(8, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0, le=1.0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    weight_decay: float = Field(1e-4, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    losses: LossWeights = LossWeights()
    # teacher tap (FamilyAdapter.feature_taps) -> student feature name (TurboVAEDDecoder.feature_taps)
    align: dict[str, str] = {"mid": "mid_block", "up0": "up_blocks.0"}
    projection_width: int = Field(64, ge=1, le=4096)
    clips: int | None = Field(None, ge=1, le=1_000_000, description="finite clip pool (epochs); None = fresh clips")
    cache_latents: bool = True
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1, le=100)
    eval_every: int = Field(100, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
