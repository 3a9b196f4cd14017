"""Training clips in `torch.utils.data` workers: videos are decoded (or cached clips read) in the background
while the teacher and student run, a few batches ahead.

The loader yields, for each (step, micro-batch) in order, the items of that micro-batch: `index` (the clip
index), `clip`, the cached teacher targets when the pool cache has them, and `failed` (files that failed to
decode while drawing it). Which clip index a (step, micro, item) gets is the distiller's pure function, so a
loader started at any step yields what an uninterrupted run would.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from effconv.distill.targets import CLIP_KEY, TargetCache
from effconv.video.clips import ClipSampler

PREFETCH_BATCHES = 4
MAX_AUTO_WORKERS = 8


def auto_workers(device: torch.device) -> int:
    """One worker beside CPU training (decoding must not take the cores training uses); up to 8 beside a GPU."""
    cpus = os.cpu_count() or 1
    return 1 if device.type == "cpu" else min(MAX_AUTO_WORKERS, max(1, cpus - 1))


class DistillClips(Dataset):
    def __init__(self, sampler: ClipSampler, cache: TargetCache | None):
        self.sampler, self.cache = sampler, cache

    def __getitem__(self, index: int) -> dict:
        cached = self.cache.load(index) if self.cache is not None else None
        if cached is not None:
            return {"index": index, **cached, "failed": {}}
        self.sampler.failed.clear()
        clip = self.sampler.clip(index)
        return {"index": index, CLIP_KEY: clip, "failed": dict(self.sampler.failed)}


class StepBatches(Sampler[list[int]]):
    """The clip indices of every micro-batch from `first_step` up to `last_step`, in training order."""

    def __init__(self, index_of: Callable[[int, int, int], int], first_step: int, last_step: int, grad_accum: int,
                 batch_size: int):
        self.index_of, self.first_step, self.last_step = index_of, first_step, last_step
        self.grad_accum, self.batch_size = grad_accum, batch_size

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step):
            for micro in range(self.grad_accum):
                yield [self.index_of(step, micro, item) for item in range(self.batch_size)]


def as_items(items: list[dict]) -> list[dict]:
    """Collate that keeps the items apart: some may carry cached targets and some not."""
    return items


def clip_loader(dataset: DistillClips, batches: StepBatches, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=as_items, pin_memory=pin_memory,
                      prefetch_factor=PREFETCH_BATCHES if workers else None, persistent_workers=False)
