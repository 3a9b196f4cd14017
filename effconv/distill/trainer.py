"""Decoder-only distillation loop: frozen teacher VAE -> latents (+ features) -> student decoder.

Deterministic by construction: the clips of step k are a function of (seed, k, rank), and the learning
rate of step k a function of k alone, so resuming from a checkpoint reproduces the uninterrupted run, also
when `--steps` was raised in between. Runs single-process or under torchrun (DDP: gloo on CPU, nccl on GPU;
clips sharded by rank; only rank 0 writes). Every training tensor reaches the model through `_micro_batch`,
which moves it to the training device.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from effconv.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from effconv.distill.data import DistillClips, StepBatches, auto_workers, clip_loader
from effconv.distill.features import FeatureProjection
from effconv.distill.losses import DistillLoss
from effconv.distill.targets import CLIP_KEY, TargetCache, TeacherTargets, cache_key
from effconv.distill.throughput import PhaseClock, throughput
from effconv.errors import EffconvError
from effconv.models.loader import LoadedModel
from effconv.recipe import DistillRecipe
from effconv.video.clips import ClipSampler
from effconv.video.metrics import psnr_tensor

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when torch sees a GPU, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise EffconvError(f"--device '{name}' is not a device effconv can run torch on.", f"use {DEVICE_CHOICES}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EffconvError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU.",
                               "install a CUDA build of torch on a machine with an NVIDIA driver, or use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EffconvError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.",
                               f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> World:
        """Join the torchrun process group when launched by torchrun (each rank on its LOCAL_RANK GPU when
        training on CUDA); otherwise one process on `device`."""
        chosen = resolve_device(device)
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls(device=chosen)
        if chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), size=dist.get_world_size(), device=chosen)


def learning_rate_factor(recipe: DistillRecipe):
    """LR multiplier of step k: linear warm-up over `warmup_steps`, then constant, or a cosine from the peak to
    `min_lr` over `cosine_steps` (then `min_lr`). Independent of the total step count, so more steps continue
    the same curve."""

    def factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        if recipe.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - recipe.warmup_steps) / recipe.cosine_steps)
        floor = recipe.min_lr / recipe.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def ema_with_warmup(decay: float):
    """EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)) (as diffusers' EMAModel does), so
    short runs are not dominated by the random initialisation."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        # tensor arithmetic on the EMA's device: no host sync per step
        effective = ((1.0 + num_averaged) / (10.0 + num_averaged)).clamp(max=decay)
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
                 world: World, cache_root: Path | None = None, lpips_model: nn.Module | None = None,
                 workers: int | None = None):
        self.teacher, self.recipe, self.sampler, self.world = teacher, recipe, sampler, world
        taps = teacher.adapter.feature_taps if recipe.losses.features > 0 else {}
        self.align = {name: recipe.align[name] for name in taps if name in recipe.align}
        self.targets = TeacherTargets(teacher, {name: taps[name] for name in self.align})
        self.cache = None
        if cache_root is not None and recipe.cache_latents and recipe.clips:
            key = cache_key(teacher, self.targets.taps, sampler.videos, recipe.seed)  # hashed before leaving the CPU
            self.cache = TargetCache(cache_root, key, self.targets.keys, teacher.clip_shape[1:], teacher.latent_shape[1:])
        self.student = student.to(world.device).train()
        self.teacher.model.to(world.device).eval().requires_grad_(False)
        self.workers = auto_workers(world.device) if workers is None else workers
        self.projections = self._build_projections()
        self.trainable = StudentWithProjections(self.student, self.projections, self.align)
        self.model = self.trainable
        if world.size > 1:
            device_ids = None if world.device.type == "cpu" else [world.device]
            self.model = nn.parallel.DistributedDataParallel(self.trainable, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=recipe.lr, betas=recipe.betas,
                                           weight_decay=recipe.weight_decay)
        self.scheduler = LambdaLR(self.optimizer, learning_rate_factor(recipe))
        self.ema = AveragedModel(self.student, avg_fn=ema_with_warmup(recipe.ema_decay), use_buffers=True)
        self.loss = DistillLoss(recipe.losses, lpips_model).to(world.device)
        self.clock = PhaseClock(world.device)
        self.step = 0
        self.history: list[dict] = []
        self.failed_videos: dict[Path, str] = {}

    def _clip_index(self, step: int, micro: int, item: int) -> int:
        r = self.recipe
        index = ((step * r.grad_accum + micro) * self.world.size + self.world.rank) * r.batch_size + item
        return index % r.clips if r.clips else index

    def _build_projections(self) -> nn.ModuleDict:
        if not self.align:
            return nn.ModuleDict()
        clip = self.sampler.clip(self._clip_index(0, 0, 0)).unsqueeze(0)
        # computed, not cached: nothing is written to --out before a --resume has loaded its checkpoint
        targets = self.targets.compute(clip.to(self.world.device))
        torch.manual_seed(self.recipe.seed)
        with torch.no_grad():
            _, features = self.student(targets["latent"], return_features=True)
        return nn.ModuleDict({
            name: FeatureProjection(features[student_name].shape, targets[f"feature.{name}"].shape,
                                    self.recipe.projection_width)
            for name, student_name in self.align.items()
        }).to(self.world.device)

    def batches(self, total_steps: int) -> Iterator[list[dict]]:
        """The micro-batches from the current step to `total_steps`, decoded in worker processes."""
        plan = StepBatches(self._clip_index, self.step, total_steps, self.recipe.grad_accum, self.recipe.batch_size)
        return iter(clip_loader(DistillClips(self.sampler, self.cache), plan, self.workers,
                                pin_memory=self.world.device.type == "cuda"))

    def _with_targets(self, items: list[dict]) -> list[dict]:
        """The items with their teacher targets: the clips the cache did not have go through the teacher as one
        batch (and into the cache)."""
        missing = [index for index, item in enumerate(items) if not self.targets.keys <= item.keys()]
        if not missing:
            return items
        clips = torch.stack([items[index][CLIP_KEY] for index in missing]).to(self.world.device, non_blocking=True)
        computed = self.targets.compute(clips)
        items = list(items)
        for row, index in enumerate(missing):
            targets = {key: value[row] for key, value in computed.items()}
            if self.cache is not None:
                self.cache.save(items[index]["index"], {CLIP_KEY: items[index][CLIP_KEY], **targets})
            items[index] = items[index] | targets
        return items

    def _micro_batch(self, batches: Iterator[list[dict]]) -> dict[str, torch.Tensor]:
        with self.clock.phase("data"):
            items = next(batches)
        for item in items:
            self.failed_videos |= item["failed"]
        with self.clock.phase("teacher"):
            items = self._with_targets(items)
            # cached targets arrive on the CPU, computed ones on the device: each moves before they are stacked
            return {key: torch.stack([item[key].to(self.world.device, non_blocking=True) for item in items])
                    for key in self.targets.keys | {CLIP_KEY}}

    def _autocast(self):
        if self.world.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._autocast():
            video, projected = self.model(batch["latent"])
        teacher_features = {name: batch[f"feature.{name}"] for name in self.align}
        return self.loss(video.float(), batch[CLIP_KEY], {k: v.float() for k, v in projected.items()}, teacher_features)

    def train_step(self, batches: Iterator[list[dict]]) -> dict[str, torch.Tensor]:
        """One optimizer step over `grad_accum` micro-batches. Returns the loss terms and the gradient norm as
        tensors on the training device (read them when needed: each read waits for the device)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(self.recipe.grad_accum):
            batch = self._micro_batch(batches)
            last = micro == self.recipe.grad_accum - 1
            sync = self.model.no_sync() if (self.world.size > 1 and not last) else contextlib.nullcontext()
            with self.clock.phase("student"), sync:
                terms = self._forward(batch)
                (terms["total"] / self.recipe.grad_accum).backward()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach() / self.recipe.grad_accum
        with self.clock.phase("optimizer"):
            limit = self.recipe.grad_clip if self.recipe.grad_clip is not None else math.inf
            totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), limit)
            self.optimizer.step()
            self.scheduler.step()
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
                               {"metrics": metrics, "scheduler": self.scheduler.state_dict()},
                               keep=self.recipe.keep_checkpoints)

    def resume(self, directory: Path) -> bool:
        path = latest_checkpoint(directory)
        if path is None:
            return False
        state = load_checkpoint(path, self.modules_to_save(), self.optimizer)
        self.step = int(state["step"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state.get("metrics", {}).get("history", []))
        return True

    @torch.no_grad()
    def eval_psnr(self, clips: list[tuple[Path, torch.Tensor]]) -> torch.Tensor:
        """Mean PSNR (dB) of the EMA student against the real frames, a tensor on the training device."""
        student = self.ema_student.eval()
        scores = []
        for _, clip in clips:
            clip = clip.unsqueeze(0).to(self.world.device)
            latent = self.teacher.model.encode(clip).latent_dist.mode()
            scores.append(psnr_tensor(student(latent), clip))
        return torch.stack(scores).mean()

    def evaluate(self, clips: list[tuple[Path, torch.Tensor]]) -> float:
        return float(self.eval_psnr(clips))

    def max_rank_divergence(self) -> float:
        """Largest |param - rank 0's param| over all ranks (0.0 when the ranks are in sync)."""
        if self.world.size == 1:
            return 0.0
        flat = torch.cat([p.detach().flatten() for p in self.trainable.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        divergence = torch.tensor([(flat - reference).abs().max().item()], device=flat.device)
        dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
        return float(divergence.item())


def _record(step: int, terms: dict[str, torch.Tensor]) -> dict:
    values = torch.stack([value.float() for value in terms.values()]).tolist()  # one device sync
    return {"step": step, **{name: round(value, 5) for name, value in zip(terms, values)}}


def run_steps(distiller: Distiller, total_steps: int, checkpoint_dir: Path, eval_clips, on_step=None) -> dict:
    """Train until `total_steps`, checkpointing and evaluating on schedule. Returns run metrics with the
    throughput breakdown."""
    recipe = distiller.recipe
    started = time.perf_counter()
    first_step = distiller.step
    batches = distiller.batches(total_steps)
    while distiller.step < total_steps:
        terms = distiller.train_step(batches)
        step = distiller.step
        record = _record(step, terms)
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
    del batches  # stops the loader's workers
    wall = time.perf_counter() - started
    steps_run = distiller.step - first_step
    return {
        "steps": distiller.step,
        "steps_this_run": steps_run,
        "wall_seconds": round(wall, 2),
        **throughput(distiller.clock, wall, steps_run, distiller.workers),
    }
