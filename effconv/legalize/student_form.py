"""Which form of a model a backend exports: the model itself, or for a Turbo-VAED student on an XNNPACK backend
the same student computed on frames folded into the batch (`legalize/frames.py`), checked against it.

Measured on the HunyuanVideo `turbo-vaed-mobile` student at 9x128x128 (`benchmarks/student_forms.py`: 2 threads,
interleaved, an Intel Xeon with AVX-512 VNNI and AMX): the frames form ran 0.89x the time of the 5-D form in
ExecuTorch and 0.85x in LiteRT (docs/backends.md).
"""

from __future__ import annotations

import torch
from torch import nn

from effconv.errors import VerificationFailed
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.legalize.frames import FramesInBatchDecoder

FRAMES_IN_BATCH_BACKENDS = ("executorch", "tflite")  # both run the student through XNNPACK
MAX_FORM_ERROR = 1e-4  # the forms differ only in fp32 summation order (~1e-6 measured)


def exported_module(model: nn.Module, backend: str, example: torch.Tensor,
                    reference: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """The module `backend` exports for `model` on inputs shaped like `example`, and the manifest's record of the
    form (empty when it is the model itself). `reference`: the model's output on `example`, when the caller has it.
    VerificationFailed if the frames form does not match the model."""
    if backend not in FRAMES_IN_BATCH_BACKENDS or not isinstance(model, TurboVAEDDecoder) or example.shape[0] != 1:
        return model, {}
    frames = FramesInBatchDecoder(model).eval()
    with torch.no_grad():
        reference = model(example) if reference is None else reference
        error = float((frames(example) - reference).abs().max())
    if not error <= MAX_FORM_ERROR:
        raise VerificationFailed(f"the student's frames-in-batch form differs from the student (max abs error {error:.3g}).",
                                 "report this as an effconv bug.")
    return frames, {"form": "frames-in-batch", "form_max_abs_err": error,
                    "form_why": "a student on XNNPACK runs every layer on (T, C, H, W): no 5-D layout copies between convs"}
