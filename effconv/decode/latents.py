"""A latent to decode read from a .npy, memory-mapped, and checked block by block without loading it whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from effconv.backends.streaming import check_finite
from effconv.errors import EffconvError, exception_text

CHECK_BLOCK_BYTES = 64 << 20  # latent frames checked at a time: bounded memory however long the latent


def read_latents(path: Path) -> np.ndarray:
    try:
        latent = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise EffconvError(f"latents '{path}' not found.", "pass a .npy of float32 latents (1, C, T, h, w).") from None
    except (ValueError, OSError) as exc:
        raise EffconvError(f"cannot read '{path}' as a .npy array ({exception_text(exc, 120)}).",
                           "pass a .npy written by numpy.save.") from None
    if latent.dtype != np.float32:
        raise EffconvError(f"latents '{path}' are {latent.dtype}, not float32.", "save them with .astype(numpy.float32).")
    return latent


def check_all_finite(latent: np.ndarray, path: Path) -> None:
    """Before any decoding, so a NaN late in a long latent costs no wasted work."""
    frame_bytes = max(1, latent[:, :, :1].nbytes)
    block = max(1, CHECK_BLOCK_BYTES // frame_bytes)
    for start in range(0, latent.shape[2], block):
        check_finite(latent[:, :, start:start + block], start, f"latents '{path}'")
