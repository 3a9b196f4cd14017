"""Teacher vs student: parameters per decoder stage, FLOPs per output frame, output shapes.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, convolutions and
matmuls). The forward runs on the meta device, so counting a full-size teacher costs no compute.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from effconv.models.base import expand_blocks

INPUT_BLOCKS = ("post_quant_conv", "conv_in")
MID_BLOCKS = ("mid_block", "block_in")
UP_BLOCK = re.compile(r"up_blocks\.(\d+)")


def stage_of(block: str) -> str:
    """Map a block name (teacher's or student's) onto a common stage: input, mid, up.N, output."""
    name = block.removeprefix("decoder.")
    if name in INPUT_BLOCKS:
        return "input"
    if name.split(".")[0] in MID_BLOCKS:
        return "mid"
    match = UP_BLOCK.match(name)
    return f"up.{match.group(1)}" if match else "output"


def _stage_key(stage: str) -> tuple[int, int]:
    if stage.startswith("up."):
        return (2, int(stage[3:]))
    return ({"input": 0, "mid": 1, "output": 3}[stage], 0)


def stage_params(block_params: dict[str, int]) -> dict[str, int]:
    stages: dict[str, int] = {}
    for block, count in block_params.items():
        stages[stage_of(block)] = stages.get(stage_of(block), 0) + count
    return dict(sorted(stages.items(), key=lambda item: _stage_key(item[0])))


def student_block_params(student: nn.Module) -> dict[str, int]:
    return {name: sum(p.numel() for p in block.parameters()) for name, block in expand_blocks(student, "decoder").items()}


@torch.no_grad()
def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(FLOPs, output shape) of one forward, computed on meta tensors (no real arithmetic)."""
    meta_state = {name: torch.empty_like(t, device="meta")
                  for name, t in [*module.named_parameters(), *module.named_buffers()]}
    with FlopCounterMode(display=False) as counter:
        output = functional_call(module, meta_state, (torch.empty(input_shape, device="meta"),))
    return int(counter.get_total_flops()), tuple(output.shape)


def _ratio(student: float, teacher: float) -> float:
    return student / teacher if teacher else float("nan")


def compare(teacher, student: nn.Module) -> dict:
    """`teacher`: a loaded decoder (`LoadedModel`); `student`: its TurboVAEDDecoder."""
    shape = tuple(teacher.input_shape)
    teacher_flops, teacher_out = count_flops(teacher.module, shape)
    student_flops, student_out = count_flops(student, shape)
    teacher_stages = stage_params(teacher.block_params())
    student_stages = stage_params(student_block_params(student))
    stages = sorted(set(teacher_stages) | set(student_stages), key=_stage_key)
    teacher_params, student_params = sum(teacher_stages.values()), sum(student_stages.values())
    frames = teacher_out[2]
    return {
        "input_shape": list(shape),
        "stages": {s: {"teacher": teacher_stages.get(s, 0), "student": student_stages.get(s, 0)} for s in stages},
        "params": {"teacher": teacher_params, "student": student_params, "ratio": _ratio(student_params, teacher_params)},
        "flops_per_frame": {
            "teacher": teacher_flops / frames,
            "student": student_flops / frames,
            "ratio": _ratio(student_flops, teacher_flops),
        },
        "output_shape": {"teacher": list(teacher_out), "student": list(student_out), "equal": teacher_out == student_out},
    }
