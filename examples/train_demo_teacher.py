"""Train the shipped demo teacher: a small diffusers AutoencoderKLWan on real Big Buck Bunny frames.

Pretrained video-VAE weights cannot be downloaded here, so effconv ships a small real one. It is the
default teacher of the demo recipe and the benchmarks; use your own `pretrained` dir for real models.

    python examples/train_demo_teacher.py --minutes 30 --out effconv/assets/demo-teacher

Frames 0-95 of the bundled clip are used for training; frames 96-131 are held out, and the
reconstruction PSNR on them is written to `training.json` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from effconv.video.clips import BUNDLED_CLIP, ClipSampler, VideoSet, center_clips, load_videos
from effconv.video.metrics import psnr
from effconv.quiet import quiet_imports

TRAIN_FRAMES = 96
# 4x temporal, 4x spatial (two down levels): on 2 CPU cores a VAE of this size reaches a usable
# reconstruction within half an hour, which an 8x spatial one does not.
CONFIG = dict(
    base_dim=16,
    z_dim=8,
    dim_mult=[1, 2, 4],
    num_res_blocks=1,
    temperal_downsample=[True, True],
    latents_mean=[0.0] * 8,
    latents_std=[1.0] * 8,
)
KL_WEIGHT = 1e-6


def frames_range(videos: VideoSet, start: int, stop: int | None = None) -> VideoSet:
    return VideoSet(videos=[type(v)(path=v.path, frames=v.frames[start:stop]) for v in videos.videos])


def held_out_clips() -> list:
    """Two 17x64x64 centre clips from frames 96+ (decoded at the evaluation size)."""
    return center_clips(frames_range(load_videos([BUNDLED_CLIP], 17, 64, 64), TRAIN_FRAMES), 17, 64, 64, per_video=2)


@torch.no_grad()
def reconstruction_psnr(vae, clips) -> float:
    scores = []
    for _, clip in clips:
        video = clip.unsqueeze(0)
        recon = vae.decode(vae.encode(video).latent_dist.mode()).sample
        scores.append(psnr(recon, video))
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("effconv/assets/demo-teacher"))
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget")
    parser.add_argument("--steps", type=int, default=100_000, help="step limit (the time budget usually ends first)")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None, help="continue from a saved teacher directory")
    parser.add_argument("--reevaluate", type=Path, default=None,
                        help="only recompute held_out_psnr_db of a saved teacher directory and update its training.json")
    args = parser.parse_args()

    with quiet_imports():
        from diffusers import AutoencoderKLWan

    if args.reevaluate:
        record_path = args.reevaluate / "training.json"
        record = json.loads(record_path.read_text())
        record["held_out_psnr_db"] = round(reconstruction_psnr(AutoencoderKLWan.from_pretrained(args.reevaluate).eval(), held_out_clips()), 2)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
        return

    torch.manual_seed(args.seed)
    train = frames_range(load_videos([BUNDLED_CLIP], args.frames, args.size, args.size), 0, TRAIN_FRAMES)
    sampler = ClipSampler(train, args.frames, args.size, args.size, seed=args.seed + (1 if args.init else 0))
    eval_clips = held_out_clips()

    vae = AutoencoderKLWan.from_pretrained(args.init) if args.init else AutoencoderKLWan(**CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    started = time.perf_counter()
    step = 0
    with Progress(TextColumn("teacher"), BarColumn(), TextColumn("{task.completed:.0f}s {task.fields[info]}"),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("train", total=budget, info="")
        while step < args.steps and (elapsed := time.perf_counter() - started) < budget:
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
            for group in optimizer.param_groups:
                group["lr"] = lr
            video = torch.stack([sampler.clip(i) for i in range(step * args.batch, (step + 1) * args.batch)])
            posterior = vae.encode(video).latent_dist
            recon = vae.decode(posterior.sample()).sample
            error = recon - video
            loss = error.abs().mean() + error.square().mean() + KL_WEIGHT * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            progress.update(task, completed=time.perf_counter() - started, info=f"step {step} loss {loss.item():.4f}")
    wall = time.perf_counter() - started

    vae.eval()
    previous = json.loads((args.init / "training.json").read_text()) if args.init else None
    result = {
        "config": CONFIG,
        "continued_from": previous and {k: previous[k] for k in ("train_clip", "steps", "wall_seconds")},
        "clip": f"{BUNDLED_CLIP.name} frames 0-{TRAIN_FRAMES - 1} (train), {TRAIN_FRAMES}+ (held out)",
        "train_clip": f"{args.frames}x{args.size}x{args.size}, batch {args.batch}",
        "steps": step,
        "wall_seconds": round(wall, 1),
        "steps_per_second": round(step / wall, 3),
        "held_out_psnr_db": round(reconstruction_psnr(vae, eval_clips), 2),
        "held_out_clips": f"{len(eval_clips)} x 17x64x64, centre crop",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
