"""Int8 of a streaming step (`effconv convert --stream K`): the step is calibrated on the inputs its chunk loop really
feeds it (latent chunks of teacher latents and the caches the float step made from the chunks before them), and the
int8 step's own chunk loop, its caches fed back call after call, is measured against the float step's chunk loop,
which `effconv convert` verified to be the whole-clip decode.

Calibration takes every call of the float loop over clips of CALIBRATION_LATENT_FRAMES latent frames, not only the
first calls of the exported clip. Measured on the tiny Wan 2.2 student (ONNX, --stream 1, 4 bundled-clip samples):
calibrated on calls 0-2 (9-frame clips), its int8 loop fell from 38.8 dB vs float at call 0 to 27 dB by call 9 of 33
and stayed there, while the same int8 step fed the float loop's caches held 43-47 dB at every call and the whole-clip
int8 model decoded the same 33 latent frames at 38.6-39.6 dB throughout. The activations of calls whose caches hold
real frames reach past the ranges of the first calls (up to 1.28x), the clipped values enter the caches, and the
network carries a cache error on for ~16 calls (a perturbation of its caches at one call fades out over that many),
so the error of every clipped call adds up. Calibrated on every call of 17-latent-frame clips it stays at 38-40 dB.

The caches cross calls in float32: they are graph inputs and outputs, and each backend's int8 scheme quantizes a
cache where a convolution reads it, as the whole-clip int8 model quantizes the same activation. `drift` measures
PSNR per call over a long clip and the fall from its first DRIFT_WINDOW latent frames to its last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import Manifest
from effconv.backends.base import CalibrationSet
from effconv.backends.quality import quality_report
from effconv.backends.streaming import RunAll, stream_chunks, step_calls
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.chunked_encode import encode_plan, encoded_chunks
from effconv.models.loader import LoadedModel
from effconv.video.clips import probe_videos
from effconv.video.metrics import psnr

LONG_CLIP_LATENT_FRAMES = 48
DRIFT_WINDOW = 12  # latent frames: the long clip's first and last windows are compared
# Latent frames of a step's calibration and held-out clips: longer than the ~16 calls over which the tiny Wan 2.2
# student carries a cache error on, so most calls see the caches full of real frames (see the module docstring)
CALIBRATION_LATENT_FRAMES = 17


def whole_clip_shape(manifest: Manifest) -> tuple[int, ...]:
    """The latent of the clip the student was exported for: what calibration clips encode to."""
    chunk = manifest.inputs[0].shape
    compression = Compression(**manifest.model_extra["compression"])
    return (1, chunk[1], compression.latent_frames(manifest.spec["input"]["frames"]), *chunk[3:])


def calibration_shape(manifest: Manifest, video_sets: Sequence[list[Path]] = ()) -> tuple[int, ...]:
    """The latent of a step's calibration clip: CALIBRATION_LATENT_FRAMES long, or as long as the longest video of
    each of `video_sets` allows, and never shorter than the clip the student was exported for."""
    shape = whole_clip_shape(manifest)
    compression = Compression(**manifest.model_extra["compression"])
    clip = manifest.spec["input"]
    latent_frames = CALIBRATION_LATENT_FRAMES
    for videos in video_sets:
        probed = probe_videos(videos, clip["frames"], clip["height"], clip["width"])
        latent_frames = min(latent_frames, compression.latent_frames(max(video.frames for video in probed.videos)))
    return (*shape[:2], max(shape[2], latent_frames), *shape[3:])


def step_samples(run_float: RunAll, stream: dict, clips: CalibrationSet) -> CalibrationSet:
    """Every call of the float chunk loop over each clip, with the inputs that loop fed it: first calls (zero caches)
    and, in clips of calibration_shape, many more whose caches hold the real frames before them, where activations
    reach further than in the first calls."""
    latents, carried = [], []
    for latent in clips.latents:
        for inputs, _video in step_calls(run_float, stream, latent):
            latents.append(inputs[0])
            carried.append(tuple(inputs[1:]))
    return CalibrationSet(latents, None, f"{clips.source}; every call of the float step's chunk loop over each clip",
                          carried)


def decoded(run_all: RunAll, stream: dict, latent: np.ndarray) -> np.ndarray:
    return np.concatenate(list(stream_chunks(run_all, stream, latent)), axis=2)


def chunk_loop_quality(run_float: RunAll, run_quant: RunAll, stream: dict, clips: CalibrationSet) -> dict:
    """Quality of the int8 chunk loop on whole clips: against the float chunk loop and, with ground truth, the frames."""
    return quality_report([decoded(run_float, stream, latent) for latent in clips.latents],
                          [decoded(run_quant, stream, latent) for latent in clips.latents], clips.frames)


def _psnr(quant: list[np.ndarray], reference: list[np.ndarray]) -> float:
    joined = [torch.from_numpy(np.concatenate(videos, axis=2)) for videos in (quant, reference)]
    return round(float(psnr(joined[0], joined[1].clamp(-1, 1))), 3)


def drift(run_float: RunAll, run_quant: RunAll, stream: dict, latent: np.ndarray, source: str) -> dict:
    """PSNR of the int8 chunk loop against the float one, call by call over a long clip, and over its first and last
    DRIFT_WINDOW latent frames: rounding that accumulated through the caches would show as a fall from first to last."""
    floats = list(stream_chunks(run_float, stream, latent))
    quants = list(stream_chunks(run_quant, stream, latent))
    per_call = stream["latent_frames_per_call"]
    window = max(1, -(-min(DRIFT_WINDOW, latent.shape[2] // 2) // per_call))  # calls in each window
    first, last = _psnr(quants[:window], floats[:window]), _psnr(quants[-window:], floats[-window:])
    return {"latent_frames": int(latent.shape[2]), "source": source, "calls": len(floats),
            "window_latent_frames": window * per_call, "psnr_first_window_db": first, "psnr_last_window_db": last,
            "fall_db": round(first - last, 3),
            "psnr_per_call_db": [_psnr([q], [f]) for q, f in zip(quants, floats)]}


def long_latent(teacher: LoadedModel, videos: list[Path], latent_frames: int) -> tuple[np.ndarray, str]:
    """Up to `latent_frames` latent frames of the longest of `videos` at the clip's size, encoded by the teacher chunk
    by chunk as `effconv decode --video` does; (latent, where it came from)."""
    compression = teacher.compression
    _, _, clip_frames, height, width = teacher.clip_shape
    probed = probe_videos(videos, clip_frames, height, width)
    longest = max(probed.videos, key=lambda video: video.frames)
    plan = encode_plan(compression, longest.frames, compression.pixel_frames(latent_frames), clip_frames)
    latent = np.concatenate(list(encoded_chunks(teacher, longest, plan, height, width)), axis=2)
    return latent, f"{longest.path.name}: first {plan.frames} frames, {latent.shape[2]} latent frames"


def joined_latent(clips: CalibrationSet, latent_frames: int) -> tuple[np.ndarray, str]:
    """Without video to encode: the clips' latents joined along time, up to `latent_frames`."""
    joined = np.concatenate(clips.latents, axis=2)[:, :, :latent_frames]
    if joined.shape[2] < 2:
        raise EffconvError("the calibration latents hold too few frames to measure drift over the chunk loop.",
                           "pass more calibration samples (--samples) or calibrate from video.")
    return joined, f"{len(clips)} calibration clips' latents joined along time ({joined.shape[2]} latent frames; not one continuous video)"
