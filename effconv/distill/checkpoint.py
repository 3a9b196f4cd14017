"""Training checkpoints in safetensors + JSON, written atomically.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` holding `weights.safetensors` (student,
projections, EMA), `optimizer.safetensors` (AdamW moments) and `state.json` (step, param groups,
RNG state, metrics). It is written under a temporary name and renamed when complete; `latest.json`
is replaced atomically afterwards, so a process killed at any moment leaves the previous complete
checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from effconv.errors import EffconvError, exception_text

LATEST = "latest.json"
CHECKPOINT_NAME = re.compile(r"step-\d{7,}")


def _flatten(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value.detach().contiguous().clone() for key, value in state.items()}


def _unflatten(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {key[start:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {
        f"state.{index}.{key}": value.detach().contiguous().clone()
        for index, entry in state["state"].items()
        for key, value in entry.items()
    }
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def checkpoints_by_step(directory: Path) -> list[Path]:
    """The complete step-* checkpoints, oldest step first (by number: step-10000000 comes after step-9999999)."""
    steps = [p for p in directory.glob("step-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(steps, key=checkpoint_step)


def save_checkpoint(directory: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer, extra: dict, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:07d}"
    temporary = directory / f".tmp-step-{step:07d}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    weights: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        weights |= _flatten(name, module.state_dict())
    save_file(weights, temporary / "weights.safetensors")
    moments, groups = optimizer_tensors(optimizer)
    save_file(moments or {"empty": torch.zeros(0)}, temporary / "optimizer.safetensors")
    rng = {"rng.torch": torch.get_rng_state()}
    save_file(rng, temporary / "rng.safetensors")
    (temporary / "state.json").write_text(json.dumps({"step": step, "param_groups": groups, **extra}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    pointer = directory / (LATEST + ".tmp")
    pointer.write_text(json.dumps({"step": step, "path": final.name}))
    os.replace(pointer, directory / LATEST)
    for old in checkpoints_by_step(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint latest.json names, or (no pointer, or it names a deleted checkpoint) the newest
    step-* directory: those appear only complete, by rename."""
    pointer = directory / LATEST
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["path"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            name = None
        if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
            raise EffconvError(f"'{pointer}' is corrupt.", "delete it to resume from the newest step-* directory, or start fresh.")
        if (directory / name).is_dir():
            return directory / name
    return next(reversed(checkpoints_by_step(directory)), None)


def _check_state(state) -> None:
    """state.json is data from disk: check the fields resuming relies on before using them."""
    if not isinstance(state, dict):
        raise ValueError("state.json is not a JSON object")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"state.json has no valid step (got {step!r})")
    if not isinstance(state.get("param_groups"), list):
        raise ValueError("state.json has no list of optimizer param_groups")
    metrics = state.get("metrics", {})
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history", []), list):
        raise ValueError("state.json has malformed metrics")


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    try:
        weights = load_file(path / "weights.safetensors")
        moments = load_file(path / "optimizer.safetensors")
        rng = load_file(path / "rng.safetensors")
        state = json.loads((path / "state.json").read_text())
        _check_state(state)
        for name, module in modules.items():
            module.load_state_dict(_unflatten(name, weights))
        moments.pop("empty", None)
        load_optimizer(optimizer, moments, state["param_groups"])
        torch.set_rng_state(rng["rng.torch"])
    except (OSError, SafetensorError, json.JSONDecodeError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        reason = exception_text(exc, 200)
        raise EffconvError(
            f"checkpoint '{path}' cannot be loaded: {reason}",
            "start without --resume, or delete that checkpoint to fall back to an older one.",
        ) from None
    return state
