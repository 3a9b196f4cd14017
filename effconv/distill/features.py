"""Teacher feature capture and the small projections that map student features onto them.

Teacher decoders may run a block several times per clip (Wan decodes one latent frame at a time,
CogVideoX two), so a tap collects every call's output and joins them along time.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from effconv.errors import EffconvError
from effconv.models.turbo_vaed.layers.pixel_shuffle import DecoupledPixelShuffle3d


@contextlib.contextmanager
def captured_features(model: nn.Module, taps: dict[str, str], hidden_state: Callable[[object], torch.Tensor]):
    """Inside the block, `outputs[name]` holds the tapped submodule's hidden state joined along time.
    `hidden_state` takes it out of what the block returns (its family adapter's `tapped_hidden_state`)."""
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in taps}

    def keep(name: str, path: str, output) -> None:
        tensor = hidden_state(output)
        if not isinstance(tensor, torch.Tensor):
            raise EffconvError(f"teacher block '{path}' returned a {type(tensor).__name__}, not a feature tensor.",
                               "set distill.losses.features to 0 in the recipe.")
        chunks[name].append(tensor)

    handles = []
    for name, path in taps.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise EffconvError(f"teacher has no submodule '{path}' to align features to.", "set distill.losses.features to 0 in the recipe.") from None
        handles.append(module.register_forward_hook(lambda _m, _i, out, name=name, path=path: keep(name, path, out)))
    outputs: dict[str, torch.Tensor] = {}
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
    outputs.update({name: torch.cat(parts, dim=2) for name, parts in chunks.items() if parts})


def _factor(student: int, teacher: int, what: str) -> tuple[int, bool]:
    """Upsampling factor from student to teacher size, and whether the first frame stays single."""
    if teacher == student:
        return 1, False
    for factor in range(2, 9):
        if teacher == factor * student:
            return factor, False
        if teacher == factor * (student - 1) + 1 and student > 1:
            return factor, True
    raise EffconvError(
        f"cannot map student {what} {student} onto teacher {what} {teacher} for feature alignment.",
        "align a different block or set the feature weight to 0 in the recipe.",
    )


class FeatureProjection(nn.Module):
    """Two 1x1x1 convs (student width -> teacher width * shuffle factor), then a decoupled pixel
    shuffle when the teacher's feature is larger in time or space. Used only in training."""

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size, hidden: int = 64):
        super().__init__()
        _, c_s, t_s, h_s, w_s = student_shape
        _, c_t, t_t, h_t, w_t = teacher_shape
        s_t, causal = _factor(t_s, t_t, "frames")
        s_h, _ = _factor(h_s, h_t, "height")
        s_w, _ = _factor(w_s, w_t, "width")
        factor = s_t * s_h * s_w
        self.net = nn.Sequential(nn.Conv3d(c_s, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, c_t * factor, 1))
        self.shuffle = DecoupledPixelShuffle3d(s_t, s_h, s_w, causal=causal) if factor > 1 else nn.Identity()

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.net(feature))
