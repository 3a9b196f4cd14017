"""Decoder-only distillation loop: frozen teacher VAE -> latents (+ features) -> student decoder.

Deterministic by construction: the clips of step k are a function of (seed, k, rank), so resuming from
a checkpoint reproduces the uninterrupted run. Runs single-process or under torchrun (DDP: gloo on
CPU, nccl on GPU; clips sharded by rank; only rank 0 writes).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel

from effconv.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from effconv.recipe import DistillRecipe
from effconv.video.clips import ClipSampler
from effconv.distill.features import FeatureProjection, captured_features
from effconv.distill.losses import DistillLoss
from effconv.video.metrics import psnr
from effconv.models.loader import LoadedModel


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """Join the torchrun process group when launched by torchrun; otherwise one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


class TeacherTargets:
    """Teacher latents (and tapped features) for a clip index, optionally cached on disk."""

    def __init__(self, teacher: LoadedModel, taps: dict[str, str], cache_dir: Path | None):
        self.teacher = teacher
        self.taps = taps
        self.cache_dir = cache_dir

    @torch.no_grad()
    def compute(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        vae = self.teacher.model
        latent = vae.encode(clip).latent_dist.mode()
        targets = {"latent": latent}
        if self.taps:
            with captured_features(vae, self.taps) as features:
                self.teacher.module(latent)
            targets |= {f"feature.{name}": value for name, value in features.items()}
        return targets

    def _matches(self, cached: dict[str, torch.Tensor]) -> bool:
        """A cache entry from another teacher or clip size (or a damaged one) is recomputed, not used."""
        expected = {"latent"} | {f"feature.{name}" for name in self.taps}
        return cached.keys() == expected and tuple(cached["latent"].shape) == tuple(self.teacher.latent_shape)

    def get(self, index: int, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return self.compute(clip)
        path = self.cache_dir / f"clip-{index:08d}.safetensors"
        if path.is_file():
            with contextlib.suppress(OSError, SafetensorError):
                cached = load_file(path)
                if self._matches(cached):
                    return cached
        targets = self.compute(clip)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in targets.items()}, temporary)
        os.replace(temporary, path)
        return targets


def ema_with_warmup(decay: float):
    """EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)) (as diffusers' EMAModel does), so
    short runs are not dominated by the random initialisation."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        return effective * averaged + (1.0 - effective) * current

    return average


class StudentWithProjections(nn.Module):
    """What is trained: the student plus the feature projections (dropped after training). One
    module, so DDP sees every trainable parameter in its forward."""

    def __init__(self, student: nn.Module, projections: nn.ModuleDict, align: dict[str, str]):
        super().__init__()
        self.student = student
        self.projections = projections
        self.align = align

    def forward(self, latent: torch.Tensor):
        video, features = self.student(latent, return_features=True)
        return video, {name: self.projections[name](features[tap]) for name, tap in self.align.items()}


class Distiller:
    def __init__(self, teacher: LoadedModel, student: nn.Module, recipe: DistillRecipe, sampler: ClipSampler,
                 world: World, cache_dir: Path | None = None, lpips_model: nn.Module | None = None):
        self.teacher, self.recipe, self.sampler, self.world = teacher, recipe, sampler, world
        self.student = student.to(world.device).train()
        self.teacher.model.to(world.device).eval().requires_grad_(False)
        taps = teacher.adapter.feature_taps if recipe.losses.features > 0 else {}
        self.align = {name: recipe.align[name] for name in taps if name in recipe.align}
        self.targets = TeacherTargets(teacher, {name: taps[name] for name in self.align},
                                      cache_dir if recipe.cache_latents and recipe.clips else None)
        self.projections = self._build_projections()
        self.trainable = StudentWithProjections(self.student, self.projections, self.align)
        self.model = self.trainable
        if world.size > 1:
            device_ids = None if world.device.type == "cpu" else [world.device]
            self.model = nn.parallel.DistributedDataParallel(self.trainable, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=recipe.lr, betas=recipe.betas,
                                           weight_decay=recipe.weight_decay)
        self.ema = AveragedModel(self.student, avg_fn=ema_with_warmup(recipe.ema_decay), use_buffers=True)
        self.loss = DistillLoss(recipe.losses, lpips_model).to(world.device)
        self.step = 0
        self.history: list[dict] = []

    def _clip_index(self, step: int, micro: int, item: int) -> int:
        r = self.recipe
        index = ((step * r.grad_accum + micro) * self.world.size + self.world.rank) * r.batch_size + item
        return index % r.clips if r.clips else index

    def _build_projections(self) -> nn.ModuleDict:
        if not self.align:
            return nn.ModuleDict()
        index = self._clip_index(0, 0, 0)
        # compute, not get: nothing is written to --out before a --resume has loaded its checkpoint
        targets = self.targets.compute(self.sampler.clip(index).unsqueeze(0).to(self.world.device))
        torch.manual_seed(self.recipe.seed)
        with torch.no_grad():
            _, features = self.student(targets["latent"], return_features=True)
        return nn.ModuleDict({
            name: FeatureProjection(features[student_name].shape, targets[f"feature.{name}"].shape,
                                    self.recipe.projection_width)
            for name, student_name in self.align.items()
        }).to(self.world.device)

    def _batch(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        indices = [self._clip_index(step, micro, i) for i in range(self.recipe.batch_size)]
        clips = [self.sampler.clip(i).unsqueeze(0).to(self.world.device) for i in indices]
        per_clip = [self.targets.get(i, c) for i, c in zip(indices, clips)]
        targets = {key: torch.cat([t[key] for t in per_clip]) for key in per_clip[0]}
        return torch.cat(clips), targets

    def _autocast(self):
        if self.world.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, clips: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._autocast():
            video, projected = self.model(targets["latent"])
        teacher_features = {name: targets[f"feature.{name}"] for name in self.align}
        return self.loss(video.float(), clips, {k: v.float() for k, v in projected.items()}, teacher_features)

    def train_step(self) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(self.recipe.grad_accum):
            clips, targets = self._batch(self.step, micro)
            last = micro == self.recipe.grad_accum - 1
            sync = self.model.no_sync() if (self.world.size > 1 and not last) else contextlib.nullcontext()
            with sync:
                terms = self._forward(clips, targets)
                (terms["total"] / self.recipe.grad_accum).backward()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item() / self.recipe.grad_accum
        self.optimizer.step()
        self.ema.update_parameters(self.student)
        self.step += 1
        return totals

    @property
    def ema_student(self) -> nn.Module:
        return self.ema.module

    def modules_to_save(self) -> dict[str, nn.Module]:
        return {"student": self.student, "projections": self.projections, "ema": self.ema}

    def save(self, directory: Path, metrics: dict) -> Path:
        return save_checkpoint(directory, self.step, self.modules_to_save(), self.optimizer,
                               {"metrics": metrics}, keep=self.recipe.keep_checkpoints)

    def resume(self, directory: Path) -> bool:
        path = latest_checkpoint(directory)
        if path is None:
            return False
        state = load_checkpoint(path, self.modules_to_save(), self.optimizer)
        self.step = int(state["step"])
        self.history = list(state.get("metrics", {}).get("history", []))
        return True

    @torch.no_grad()
    def evaluate(self, clips: list[tuple[Path, torch.Tensor]]) -> float:
        scores = []
        student = self.ema_student.eval()
        for _, clip in clips:
            clip = clip.unsqueeze(0).to(self.world.device)
            latent = self.teacher.model.encode(clip).latent_dist.mode()
            scores.append(psnr(student(latent), clip))
        return sum(scores) / len(scores)

    def max_rank_divergence(self) -> float:
        """Largest |param - rank 0's param| over all ranks (0.0 when the ranks are in sync)."""
        if self.world.size == 1:
            return 0.0
        flat = torch.cat([p.detach().flatten() for p in self.trainable.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        divergence = torch.tensor([(flat - reference).abs().max().item()])
        dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
        return float(divergence.item())


def run_steps(distiller: Distiller, total_steps: int, checkpoint_dir: Path, eval_clips, on_step=None) -> dict:
    """Train until `total_steps`, checkpointing and evaluating on schedule. Returns run metrics."""
    recipe = distiller.recipe
    started = time.perf_counter()
    first_step = distiller.step
    while distiller.step < total_steps:
        terms = distiller.train_step()
        step = distiller.step
        record = {"step": step, **{k: round(v, 5) for k, v in terms.items()}}
        if eval_clips and (step % recipe.eval_every == 0 or step == total_steps) and distiller.world.is_main:
            record["eval_psnr_db"] = round(distiller.evaluate(eval_clips), 3)
        distiller.history.append(record)
        if step % recipe.checkpoint_every == 0 or step == total_steps:
            if distiller.world.is_main:
                distiller.save(checkpoint_dir, {"history": distiller.history[-200:]})
            if distiller.world.size > 1:
                dist.barrier()
        if on_step is not None:
            on_step(record, time.perf_counter() - started)
    wall = time.perf_counter() - started
    steps_run = distiller.step - first_step
    return {
        "steps": distiller.step,
        "steps_this_run": steps_run,
        "wall_seconds": round(wall, 2),
        "steps_per_second": round(steps_run / wall, 4) if wall > 0 else None,
    }
