"""`effconv distill --nproc N`: run the same command again under torchrun, N processes (DDP); which of
those processes reports progress."""

from __future__ import annotations

import os
import subprocess
import sys


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`effconv ARGV` (its --nproc dropped) as `torchrun --standalone --nproc_per_node N -m effconv ARGV`."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "effconv", *args]


def relaunch_with_torchrun(nproc: int, argv: list[str] | None = None) -> int:
    """Run the command line (argv, default: this process's) under torchrun; return torchrun's exit code."""
    return subprocess.call(torchrun_command(nproc, sys.argv[1:] if argv is None else argv))


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process torchrun did not start (WORLD_SIZE unset or 1, as World.from_env
    decides): read from the WORLD_SIZE and RANK variables torchrun sets
    (https://pytorch.org/docs/stable/elastic/run.html#environment-variables), so asking joins no process group."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1 or int(os.environ.get("RANK", "0")) == 0
