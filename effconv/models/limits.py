"""Size limits checked before a model is built for real, so a config or recipe that asks for a
million layers or a terabyte of weights is refused in a second instead of exhausting memory.

The model is first built on the meta device (no memory, no init math) while global registration
hooks count its modules and parameter/buffer elements, and the build stops as soon as a limit is passed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from effconv.errors import EffconvError

MAX_PARAMS = 2_000_000_000  # 4x the largest supported VAE (Mochi, 460 M); 8 GB in fp32
MAX_MODULES = 10_000  # 16x the most modules of a supported VAE (Mochi, 613)


class _OverLimit(Exception):
    pass


@contextlib.contextmanager
def _counting():
    counts = {"modules": 0, "elements": 0}

    def on_module(module, name, submodule):
        counts["modules"] += 1
        if counts["modules"] > MAX_MODULES:
            raise _OverLimit(f"more than {MAX_MODULES:,} modules")

    def on_tensor(module, name, tensor):
        if tensor is not None:
            counts["elements"] += tensor.numel()
            if counts["elements"] > MAX_PARAMS:
                raise _OverLimit(f"more than {MAX_PARAMS:,} parameters")

    handles = [
        torch_module.register_module_module_registration_hook(on_module),
        torch_module.register_module_parameter_registration_hook(on_tensor),
        torch_module.register_module_buffer_registration_hook(on_tensor),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_size(build: Callable[[], nn.Module], what: str) -> None:
    """Refuse a model whose build would pass MAX_MODULES or MAX_PARAMS. Any other failure of the
    meta build is left to the real build, which reports it with its own message."""
    try:
        with torch.device("meta"), _counting():
            build()
    except _OverLimit as exc:
        raise EffconvError(
            f"{what} would have {exc}, far more than any supported video VAE.",
            "check the sizes in the config or recipe (channels, layers per block, number of blocks).",
        ) from None
    except Exception:  # the real build raises the same error, with the message that suits it
        return
