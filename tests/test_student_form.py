"""The frames-in-batch form of a Turbo-VAED student (what XNNPACK backends export): the same outputs as the
student for every padding and frame rule, the same weights, and 4-D tensors from the first conv to the last."""

from __future__ import annotations

import pytest
import torch

from effconv.errors import VerificationFailed
from effconv.legalize.student_form import exported_module
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.legalize.frames import FramesInBatchDecoder

CONFIGS = {
    "causal-separable-k5": dict(widths=(16, 16, 8, 8, 8), separable=(True, True, False, False, False),
                                upsample_factors=((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)), kernel_size=5),
    "symmetric-full": dict(widths=(16, 16, 8, 8, 8), separable=(True, True, True, False, False), kernel_size=3,
                           upsample_factors=((1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 1, 1)), temporal_padding="symmetric",
                           frame_rule="full"),
    "causal-if-odd": dict(widths=(16, 16, 8, 8, 8), separable=(True, True, True, False, False), kernel_size=3,
                          upsample_factors=((1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 1, 1)), frame_rule="causal-if-odd"),
    # output patching (4x4 depth-to-space) and the released shortcut (LayerNorm, separable 1x1x1) in a separable block
    "patch4-released-shortcut": dict(widths=(16, 16, 8, 8, 64), separable=(True, True, False, False, True),
                                     kernel_size=3, upsample_factors=((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
                                     output_patch=4, shortcut_norm=1e-6),
}


def _student(name: str) -> TurboVAEDDecoder:
    torch.manual_seed(0)
    return TurboVAEDDecoder(latent_channels=4, layers=(1, 1, 1, 1, 1), **CONFIGS[name]).eval()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("frames", [3, 4])
def test_frames_form_decodes_as_the_student(name, frames):
    student = _student(name)
    form = FramesInBatchDecoder(student).eval()
    latent = torch.randn(1, 4, frames, 4, 6)
    with torch.no_grad():
        expected, got = student(latent), form(latent)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-5
    assert sum(p.numel() for p in form.parameters()) == sum(p.numel() for p in student.parameters())


def test_frames_form_keeps_tensors_4d_between_input_and_output():
    """Only the input's fold and the output's unfold touch 5-D tensors: no 5-D layout op between convs."""
    form = FramesInBatchDecoder(_student("causal-separable-k5")).eval()
    graph = torch.export.export(form, (torch.randn(1, 4, 3, 4, 6),)).graph
    ranks = [len(node.meta["val"].shape) for node in graph.nodes
             if node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor)]
    convs = [node for node in graph.nodes if node.op == "call_function" and "conv" in str(node.target)]
    assert convs and all(len(node.meta["val"].shape) == 4 for node in convs)
    assert sum(rank == 5 for rank in ranks) <= 2 and max(ranks) <= 5


def test_only_xnnpack_backends_export_a_batch_one_student_in_frames_form():
    student = _student("causal-separable-k5")
    latent = torch.randn(1, 4, 3, 4, 6)
    for backend in ("executorch", "tflite"):
        module, record = exported_module(student, backend, latent)
        assert isinstance(module, FramesInBatchDecoder) and record["form"] == "frames-in-batch"
        assert record["form_max_abs_err"] <= 1e-5
    for backend, example in (("onnx", latent), ("coreml", latent), ("executorch", latent.repeat(2, 1, 1, 1, 1))):
        assert exported_module(student, backend, example) == (student, {})


def test_a_frames_form_that_disagrees_is_refused(monkeypatch):
    student = _student("causal-separable-k5")
    monkeypatch.setattr(FramesInBatchDecoder, "forward", lambda self, latent: student(latent) + 1e-3)
    with pytest.raises(VerificationFailed, match="frames-in-batch form differs"):
        exported_module(student, "executorch", torch.randn(1, 4, 3, 4, 6))
