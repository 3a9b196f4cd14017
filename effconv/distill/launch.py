"""`effconv distill --nproc N`: run the same command again under torchrun, N processes (DDP)."""

from __future__ import annotations

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
