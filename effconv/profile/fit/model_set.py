"""The decoders `effconv calibrate` measures, and their artifacts, each made as a user would make it (`convert`, then
static int8 calibrated on random latents, as `quantize --calib random` makes it).

The set: teacher decoders of the six families (random init, tiny and small widths, three clip sizes) and real
Turbo-VAED students (`TurboVAEDDecoder`, made by `effconv rewrite` from those teachers) of two widths. Half are fitted,
half held out: every family is in both sets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from effconv.artifacts import manifest_path, read_manifest
from effconv.backends import registry
from effconv.backends.base import CalibrationSet, QuantizeOptions
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec

ZERO4, ZERO8 = [0.0] * 4, [0.0] * 8
# Tiny random-init decoder configs of each family (the same as examples/specs/*-tiny.yaml), with the clip (frames,
# height, width in pixels) they are measured at; `scale` widens the channel lists for the "small" variants.
TEACHERS = {
    "hunyuan": ("AutoencoderKLHunyuanVideo", {"latent_channels": 4, "block_out_channels": [8, 8, 16, 16],
                "layers_per_block": 1, "norm_num_groups": 4, "mid_block_add_attention": True}, (9, 32, 48)),
    "cogvideox": ("AutoencoderKLCogVideoX", {"block_out_channels": [8, 8, 16, 16], "latent_channels": 4,
                  "layers_per_block": 1, "norm_num_groups": 4}, (9, 32, 48)),
    "ltx": ("AutoencoderKLLTXVideo", {"latent_channels": 8, "block_out_channels": [8, 8, 8, 8],
            "decoder_block_out_channels": [8, 8, 8, 8], "layers_per_block": [1, 1, 1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1, 1, 1], "spatio_temporal_scaling": [True, True, False, False],
            "decoder_spatio_temporal_scaling": [True, True, False, False],
            "decoder_inject_noise": [False] * 5, "upsample_residual": [False] * 4, "upsample_factor": [1] * 4,
            "patch_size": 1, "patch_size_t": 1}, (9, 32, 48)),
    "mochi": ("AutoencoderKLMochi", {"latent_channels": 4, "encoder_block_out_channels": [32, 32, 32, 32],
              "decoder_block_out_channels": [32, 32, 32, 32], "layers_per_block": [1, 1, 1, 1, 1],
              "add_attention_block": [False] * 5}, (13, 32, 48)),
    "wan21": ("AutoencoderKLWan", {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True, True], "latents_mean": ZERO4, "latents_std": [1.0] * 4}, (9, 32, 48)),
    "wan22": ("AutoencoderKLWan", {"base_dim": 8, "decoder_base_dim": 8, "z_dim": 8, "dim_mult": [1, 2, 2, 2],
              "num_res_blocks": 1, "temperal_downsample": [False, True, True], "is_residual": True, "patch_size": 2,
              "in_channels": 12, "out_channels": 12, "scale_factor_spatial": 16, "latents_mean": ZERO8,
              "latents_std": [1.0] * 8}, (9, 32, 64)),
}
WIDTH_KEYS = ("block_out_channels", "decoder_block_out_channels", "encoder_block_out_channels", "base_dim", "decoder_base_dim")
STUDENT_FAMILIES = ("hunyuan", "cogvideox", "ltx", "mochi", "wan21")
STUDENT_WIDTHS = (32, 64)
STUDENT_SIZE = (64, 96)  # students decode the family's clip length at this height and width


@dataclass(frozen=True)
class CalibrationModel:
    """One decoder of the set: the family's tiny teacher (`TEACHERS`) with its widths times `scale`, decoding `clip`
    (frames, height, width in pixels); or, with `student_width`, a Turbo-VAED student of the family's tiny teacher
    (the paper's layout: separable mid and first up block) at that width, decoding `clip`. Plain data, so that
    worker processes can build it (measure_set.py converts in parallel)."""

    name: str
    held_out: bool
    family: str
    clip: tuple[int, int, int]
    scale: int = 1
    student_width: int | None = None

    def write_spec(self, directory: Path) -> Path:
        """Write the model's spec YAML into `directory` (a student: made by `effconv rewrite`); its path."""
        if self.student_width is None:
            return _write_teacher(directory, self.family, self.scale, self.clip)
        teacher = _write_teacher(directory, self.family, 1, self.clip)
        width = self.student_width
        recipe = directory / f"student-w{width}.yaml"
        recipe.write_text(yaml.safe_dump({"name": f"student-w{width}", "description": "calibration student", "student": {
            "widths": [width, width, width // 2, 16, 8], "layers": [2, 1, 1, 1, 1],
            "separable": [True, True, False, False, False], "upsample": [False, True, True, True], "kernel_size": 5}}),
            encoding="utf-8")
        manifest = rewrite(load_spec(teacher), recipe, directory / "student")
        return directory / "student" / f"{manifest.name}.yaml"


def teacher(name: str, held_out: bool, family: str, scale: int, clip: tuple[int, int, int]) -> CalibrationModel:
    return CalibrationModel(name, held_out, family, clip, scale=scale)


def student(name: str, held_out: bool, family: str, width: int, size: tuple[int, int] = STUDENT_SIZE) -> CalibrationModel:
    """A student decoding the family's clip length at `size` (height, width)."""
    return CalibrationModel(name, held_out, family, (TEACHERS[family][2][0], *size), student_width=width)


def _teacher_data(family: str, scale: int, clip: tuple[int, int, int]) -> dict:
    class_name, config, _ = TEACHERS[family]
    config = copy.deepcopy(config)
    for key in WIDTH_KEYS:
        if isinstance(config.get(key), list):
            config[key] = [c * scale for c in config[key]]
        elif key in config:
            config[key] *= scale
    frames, height, width = clip
    return {"name": f"{family}-x{scale}", "model": {"diffusers": class_name, "config": config}, "part": "decoder",
            "input": {"frames": frames, "height": height, "width": width}}


def _write_teacher(directory: Path, family: str, scale: int, clip: tuple[int, int, int]) -> Path:
    path = directory / f"{family}-x{scale}.yaml"
    path.write_text(yaml.safe_dump(_teacher_data(family, scale, clip)), encoding="utf-8")
    return path


def calibration_set() -> list[CalibrationModel]:
    """28 decoders: 18 teachers (six families at three sizes: tiny widths at 32x48 and at 48x80, doubled widths at
    64x96) and 10 students (five families, two widths); each family has models in the fit set and held out, alternating
    which size, so the held-out models span the fitted range. The narrow teachers at two clip sizes separate costs
    that grow with activation size (per output position, memory) from those that grow with channels."""
    models = []
    for index, (family, (_, _, clip)) in enumerate(TEACHERS.items()):
        models.append(teacher(f"{family}-tiny", index % 2 == 1, family, 1, clip))
        models.append(teacher(f"{family}-small", index % 2 == 0, family, 2, (clip[0], 64, 96)))
        models.append(teacher(f"{family}-tiny-48x80", index % 2 == 0, family, 1, (clip[0], 48, 80)))
    for index, family in enumerate(STUDENT_FAMILIES):
        for width in STUDENT_WIDTHS:
            held_out = (index + (width == STUDENT_WIDTHS[1])) % 2 == 1
            models.append(student(f"{family}-student-w{width}", held_out, family, width))
    return models


def _int8(artifact: Path, backend: str, out_path: Path) -> Path:
    """The artifact in static int8 (every node kind int8, no speed search), calibrated on seeded random latents, as
    `effconv quantize --calib random` makes it, without its gate and manifest."""
    manifest = read_manifest(manifest_path(artifact))
    calib, held_out = CalibrationSet.random(tuple(manifest.inputs[0].shape), 3, seed=0).split(1)
    registry.get(backend).quantize(artifact, manifest, calib, held_out, out_path, QuantizeOptions(select_by_speed=False))
    return out_path


def make_artifacts(entry: CalibrationModel, directory: Path, backends: tuple[str, ...], int8: bool,
                   progress) -> list[tuple[str, str, Path, tuple]]:
    """(backend, dtype, artifact, input shapes) of one model, converted (and quantized) as a user would."""
    loaded = load_spec(entry.write_spec(directory))
    made = []
    for backend in backends:
        manifest = convert(loaded, backend, directory / backend)
        artifact, shapes = directory / backend / manifest.artifact, (tuple(manifest.inputs[0].shape),)
        made.append((backend, "fp32", artifact, shapes))
        if int8:
            try:
                made.append((backend, "int8", _int8(artifact, backend, directory / f"int8-{manifest.artifact}"), shapes))
            except EffconvError as exc:  # a quantizer that cannot quantize one model leaves that model's int8 out
                progress(f"{entry.name}: no {backend} int8 artifact ({exc.message})")
    return made
