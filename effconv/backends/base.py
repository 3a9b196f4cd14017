"""What every backend implements (`Backend`), and the data that crosses the interface.

A backend is one deployment format: effconv exports a torch module to it, runs the artifact where this host
can (`predict` returns None where it cannot, e.g. Core ML off macOS), lists the artifact's ops, and quantizes
it. Heavy libraries are imported inside the functions, so importing a backend costs nothing and a missing
one fails with a one-line "install effconv[X]" error when it is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from effconv.errors import EffconvError
from effconv.recipe import DEFAULT_SEARCH_SECONDS, HOST_DEVICE

Progress = Callable[[str], None]  # told each step of long work as it starts, in words ("lowering to XNNPACK")
VALIDATION_SHARE = 4  # one calibration sample in four scores a quantizer's choices instead of calibrating


def no_progress(_message: str) -> None:
    """For callers that show no progress (the library used without the CLI)."""


@dataclasses.dataclass
class CalibrationSet:
    """Samples of batch 1: `latents[i]` decodes to `frames[i]` (None when there is no ground truth). A streaming
    step's samples also carry its other inputs, in argument order (`carried[i]`: the first-call flag and the caches
    the chunk loop fed with that latent chunk)."""

    latents: list[np.ndarray]
    frames: list[np.ndarray] | None
    source: str
    carried: list[tuple[np.ndarray, ...]] | None = None

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def feeds(self) -> list[tuple[np.ndarray, ...]]:
        """Every sample as the model's inputs in argument order."""
        if self.carried is None:
            return [(latent,) for latent in self.latents]
        return [(latent, *carried) for latent, carried in zip(self.latents, self.carried)]

    @classmethod
    def random(cls, expected: tuple[int, ...], samples: int, seed: int) -> CalibrationSet:
        generator = np.random.default_rng(seed)
        latents = [generator.standard_normal(expected).astype(np.float32) for _ in range(samples)]
        return cls(latents, None, "random: seeded standard normal (no ground truth)")

    def subset(self, indices: range | list[int]) -> CalibrationSet:
        frames = None if self.frames is None else [self.frames[i] for i in indices]
        carried = None if self.carried is None else [self.carried[i] for i in indices]
        return CalibrationSet([self.latents[i] for i in indices], frames, self.source, carried)

    def validation_split(self) -> tuple[CalibrationSet, CalibrationSet]:
        """(ranges, validation): the last quarter of the samples (at least one) scores a quantizer's choices and
        takes no part in its ranges."""
        return self.split(max(1, len(self) // VALIDATION_SHARE))

    def split(self, held_out: int) -> tuple[CalibrationSet, CalibrationSet]:
        """(calibration, held-out): the last `held_out` samples are kept out of calibration."""
        if not 0 < held_out < len(self):
            raise EffconvError(f"cannot hold out {held_out} of {len(self)} calibration samples.", "raise --samples (at least 2).")
        cut = len(self) - held_out
        return self.subset(range(cut)), self.subset(range(cut, len(self)))


@dataclasses.dataclass
class QuantizeOptions:
    """Everything `effconv quantize` can ask of a backend; each backend reads what applies to it and says in
    its report what it did (e.g. Core ML has one scheme, W8A16, whatever `activation` says)."""

    weights_only: bool = False
    max_psnr_drop: float | None = None
    min_psnr_vs_float: float | None = None
    activation: str = "auto"
    select_by_speed: bool = True
    sensitivity: bool = False
    threads: int | None = None
    progress: Callable[[str], None] = lambda _message: None
    target_device: str = HOST_DEVICE  # where the int8 model will run: this host, or a device profile's name
    kind_decisions: dict[str, dict] | None = None  # ONNX: kind -> {int8, why} from the target's profile (None: time here)
    search_seconds: float = DEFAULT_SEARCH_SECONDS  # ONNX: time the choices may take before rules decide the rest
    qnn: bool = False  # ONNX: the target runs it through onnxruntime's QNN execution provider (its QDQ form)
    scheme: str = "auto"  # Core ML: w8a16 (int8 weights) or w8a8 (int8 weights and activations); auto: the device's


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    suffix: str
    extra: str | None  # the pip extra that installs its libraries (None: always installed)
    default_atol: float
    legalized: bool  # exported after effconv's legalizing rewrites (lint rules `legalize/rules/NAME.yaml`)
    # (module, example, path, input_name, output_name, progress=Progress, **options) -> export info
    export: Callable[..., dict]
    # (artifact, threads) -> run: arrays in the graph's input order -> arrays in its output order; None off its platform
    load_all: Callable[[Path, int | None], Callable[[list[np.ndarray]], list[np.ndarray]] | None]
    runtime: str  # what `load` runs the artifact in, as a user reads it in a report
    ops: Callable[[Path], dict[str, int]]  # op kind -> count, read from the artifact
    quantize: Callable[..., dict]  # (artifact, manifest, calib, held_out, out_path, QuantizeOptions) -> report
    check_quantizable: Callable[[Path, QuantizeOptions], None]  # cheap checks before calibration data is made
    runtime_versions: Callable[[], dict]

    def load(self, artifact: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
        """The artifact as a function of its one input to its one output (a decoder), or None off its platform."""
        run = self.load_all(artifact, threads)
        return None if run is None else (lambda latent: run([latent])[0])

    def predict(self, artifact: Path, example: Any) -> np.ndarray | None:
        """The artifact's output for one input (a tensor or an array), or None where this host cannot run it."""
        run = self.load(artifact, None)
        if run is None:
            return None
        latent = example.detach().cpu().numpy() if hasattr(example, "detach") else example
        return run(np.ascontiguousarray(latent))


def no_checks(_artifact: Path, _options: QuantizeOptions) -> None:
    """For backends whose quantizer has nothing to check before calibration."""
