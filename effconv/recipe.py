"""Recipe schema: how to build, distill and ship a student. YAML, validated by pydantic.

A recipe is a file path or the name of a packaged recipe (`effconv/recipes/NAME.yaml`). Each stage
reads its own optional section; `effconv rewrite` needs `student:`, `effconv run` also reads
`teacher:`, `data:`, `export:`, `quantize:`, `profile:` and `deploy:` (paths relative to the recipe file).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from effconv.errors import EffconvError
from effconv.spec import StrictModel, format_validation_error, read_yaml_mapping

DEFAULT_SEARCH_SECONDS = 60.0  # ONNX int8: measuring choices past this is left to stated rules
MAX_SEARCH_SECONDS = 86_400

RECIPE_DIR = "recipes"
MAX_WIDTH = 65536
MAX_LAYERS = 64
MAX_OUTPUT_PATCH = 64
BACKEND_NAMES = ("onnx", "coreml", "tflite", "executorch")  # the backend registry's names (tests/test_backends.py checks)
DEFAULT_EXPORT_BACKENDS = ("onnx", "coreml", "tflite")  # what `effconv run` exports unless the recipe lists others
MAX_STREAM = 64
HOST_DEVICE = "host-cpu"  # this machine's device profile; `effconv run` always profiles it, so profile.backends may map it unlisted
Backend = Literal[BACKEND_NAMES]


class LossWeights(StrictModel):
    l1: float = Field(1.0, ge=0)
    ssim: float = Field(0.2, ge=0, description="weight of (1 - SSIM)")
    lpips: float = Field(0.0, ge=0, description="used only with --lpips and locally cached VGG weights")
    features: float = Field(0.1, ge=0, description="MSE between projected student and teacher features")


class DistillRecipe(StrictModel):
    steps: int = Field(300, ge=1, le=10_000_000)
    batch_size: int = Field(1, ge=1, le=1024)
    grad_accum: int = Field(8, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0, le=1.0, description="peak learning rate")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="linear warm-up from lr/warmup_steps to lr")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="after warm-up: constant, or a cosine "
                                                       "to min_lr over cosine_steps")
    cosine_steps: int | None = Field(None, ge=1, le=10_000_000, description="cosine length after warm-up; fixed, not "
                                     "tied to steps, so raising --steps continues the same curve (min_lr after it)")
    min_lr: float = Field(0.0, ge=0, le=1.0, description="the cosine's floor")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient's global L2 norm to this; null = no clipping")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    weight_decay: float = Field(1e-4, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    losses: LossWeights = LossWeights()
    # teacher tap (FamilyAdapter.feature_taps) -> student feature name (TurboVAEDDecoder.feature_taps)
    align: dict[str, str] = {"mid": "mid_block", "up0": "up_blocks.0"}
    projection_width: int = Field(64, ge=1, le=4096)
    clips: int | None = Field(None, ge=1, le=1_000_000, description="finite clip pool (epochs); None = fresh clips")
    cache_latents: bool = True
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1, le=100)
    eval_every: int = Field(100, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _schedule(self) -> DistillRecipe:
        if self.lr_schedule == "cosine" and self.cosine_steps is None:
            raise ValueError("lr_schedule cosine needs cosine_steps (its length after warm-up)")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        return self


class StudentRecipe(StrictModel):
    """The student decoder's layout: one entry per block, the first for conv_in + the mid block,
    then one per up block."""

    widths: list[int] = Field(min_length=2, description="channels of the mid block, then of each up block")
    width_scale: float = Field(1.0, gt=0, le=16, description="multiplies every width (rounded to width_multiple)")
    width_multiple: int = Field(8, ge=1, le=256, description="scaled widths are rounded to a multiple of this")
    layers: list[int] = Field(description="ResBlocks per block (mid, then each up block)")
    separable: list[bool] = Field(description="which blocks use depthwise-separable convs")
    upsample: list[bool] = Field(description="which up blocks may upsample (one entry per up block)")
    kernel_size: int = Field(5, ge=1, le=9, description="kernel of the separable convs (dense convs are 3x3x3)")
    temporal_padding: Literal["causal", "symmetric"] = "causal"
    output_patch: int | None = Field(None, ge=1, le=MAX_OUTPUT_PATCH, description="2x depth-to-space stages after the up "
                                     "blocks, as a total factor (a power of two); null = the teacher's own output patch "
                                     "(LTX-Video 4, Wan 2.2 5B 2, others 1)")
    init: Literal["random", "from-teacher"] = "random"

    @model_validator(mode="after")
    def _consistent(self) -> StudentRecipe:
        blocks = len(self.widths)
        if any(not 1 <= w <= MAX_WIDTH for w in self.widths):
            raise ValueError(f"widths must be between 1 and {MAX_WIDTH}")
        if len(self.layers) != blocks or len(self.separable) != blocks:
            raise ValueError(f"layers and separable need one entry per width ({blocks})")
        if any(not 0 <= n <= MAX_LAYERS for n in self.layers):
            raise ValueError(f"layers must be between 0 and {MAX_LAYERS}")
        if len(self.upsample) != blocks - 1:
            raise ValueError(f"upsample needs one entry per up block ({blocks - 1}: all widths but the first)")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        if self.output_patch is not None and self.output_patch & (self.output_patch - 1):
            raise ValueError(f"output_patch must be a power of two (1, 2, 4, 8...), got {self.output_patch}")
        return self

    def scaled_widths(self) -> list[int]:
        if self.width_scale == 1.0:
            return list(self.widths)
        step = self.width_multiple
        return [max(step, round(w * self.width_scale / step) * step) for w in self.widths]


def _no_repeats(values: list | None) -> list | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError("an entry is listed twice")
    return values


Backends = Annotated[list[Backend], AfterValidator(_no_repeats)]


class DataRecipe(StrictModel):
    """Videos (files or folders) relative to the recipe, or inside the installed package as
    `effconv:assets/video` (the bundled clip)."""

    train: list[str] = Field(default_factory=list, max_length=1000, description="training videos")
    eval: list[str] = Field(default_factory=list, max_length=1000, description="held-out videos [default: train]")


class ExportRecipe(StrictModel):
    backends: Backends = Field(default_factory=lambda: list(DEFAULT_EXPORT_BACKENDS), min_length=1)


class QuantizeRecipe(StrictModel):
    backends: Backends | None = Field(None, description="[default: every exported backend effconv can quantize]; "
                                      "[] = no quantization")
    samples: int = Field(16, ge=2, le=4096, description="calibration samples (teacher-encoded real clips)")
    max_psnr_drop: float | None = Field(0.3, ge=0, le=100, description="gate: dB of PSNR against held-out ground truth "
                                        "lost by int8; null = no gate")
    min_psnr_vs_float: float | None = Field(30.0, ge=0, le=200, description="gate: lowest PSNR of the int8 output against "
                                            "the float artifact's; null = no gate")
    weights_only: bool = False
    activation: Literal["auto", "uint8", "int8"] = Field("auto", description="ONNX activations; auto = the faster here")
    all_nodes: bool = Field(False, description="ONNX: int8 for every Conv/MatMul, not only the kinds faster here")
    search_seconds: float = Field(DEFAULT_SEARCH_SECONDS, ge=0, le=MAX_SEARCH_SECONDS, description="ONNX: time the int8 choices may "
                                  "spend measuring before stated rules decide the rest")
    scheme: Literal["auto", "w8a16", "w8a8"] = Field("auto", description="Core ML: w8a16 (int8 weights) or w8a8 (int8 "
                                                     "weights and activations); auto = w8a8 when a profiled device's "
                                                     "Neural Engine computes int8 x int8, else w8a16")


class ProfileRecipe(StrictModel):
    devices: Annotated[list[str], AfterValidator(_no_repeats)] = Field(
        default_factory=lambda: ["iphone16pro"], min_length=1, max_length=32)
    resolution: str | None = Field(None, description="device estimates at 480p/720p/1080p/HxW [default: the teacher's clip]")
    host_repeats: int = Field(10, ge=1, le=1000, description="timed runs of each artifact on this machine (median)")
    backends: dict[str, Backends] | None = Field(
        None, description="device -> backends whose artifacts its rows cost [default: the exported backends its "
        "profile lists; on host-cpu those that also run on this machine]")


class DeployRecipe(StrictModel):
    stream: int | None = Field(None, ge=1, le=MAX_STREAM, description="also export streaming artifacts that decode this "
                               "many latent frames per call, for every exported backend; null = whole-clip artifacts only")


class Recipe(StrictModel):
    name: str | None = None
    description: str | None = None
    teacher: str | dict | None = Field(None, description="teacher spec: a path relative to the recipe, or inline")
    requires_pretrained: bool = Field(False, description="the teacher needs trained weights (`effconv run --pretrained DIR`)")
    student: StudentRecipe | None = None
    trained_student: str | dict | None = Field(
        None, description="a student trained already (a spec path relative to the recipe, or inline): e.g. "
        "`model: {diffusers: AutoencoderKLTurboVAED, pretrained: DIR}` for one saved by the Turbo-VAED authors' code; "
        "`effconv run` ships it instead of building and distilling one (no student: or distill: needed)")
    distill: DistillRecipe = DistillRecipe()
    data: DataRecipe = DataRecipe()
    export: ExportRecipe = ExportRecipe()
    quantize: QuantizeRecipe = QuantizeRecipe()
    profile: ProfileRecipe = ProfileRecipe()
    deploy: DeployRecipe = DeployRecipe()

    @field_validator("teacher", "trained_student", mode="before")
    @classmethod
    def _path_or_mapping(cls, value):
        if value is not None and not isinstance(value, (str, dict)):
            raise ValueError("give a spec path or an inline spec (a mapping with name, model, input)")
        return value

    @model_validator(mode="after")
    def _one_student(self) -> Recipe:
        if self.student is not None and self.trained_student is not None:
            raise ValueError("give either student (a layout effconv builds and distills) or trained_student (a student "
                             "trained already), not both")
        return self

    @model_validator(mode="after")
    def _quantize_what_is_exported(self) -> Recipe:
        missing = [b for b in self.quantize.backends or [] if b not in self.export.backends]
        if missing:
            raise ValueError(f"quantize.backends {missing} must also be in export.backends (quantization starts "
                             "from the float artifact)")
        return self

    @model_validator(mode="after")
    def _profile_what_is_exported(self) -> Recipe:
        for device, backends in (self.profile.backends or {}).items():
            if device not in (*self.profile.devices, HOST_DEVICE):
                raise ValueError(f"profile.backends names device '{device}', which profile.devices does not list "
                                 f"(add it there, or drop it from profile.backends)")
            missing = [b for b in backends if b not in self.export.backends]
            if missing:
                raise ValueError(f"profile.backends.{device} {missing} must also be in export.backends (a device row "
                                 "costs the exported artifact)")
        return self

    @model_validator(mode="after")
    def _streamable(self) -> Recipe:
        if self.deploy.stream is None:
            return self
        if self.student is not None and self.student.temporal_padding != "causal":
            raise ValueError("deploy.stream needs student.temporal_padding: causal (symmetric padding looks at later "
                             "frames, so a chunk cannot be decoded before the next one arrives)")
        return self

    def streamed_backends(self) -> list[str]:
        return list(self.export.backends) if self.deploy.stream else []

    def require_student(self, source: str) -> StudentRecipe:
        if self.student is None:
            hint = " (its trained_student is for `effconv run`)" if self.trained_student is not None else ""
            raise EffconvError(f"recipe '{source}' has no 'student' section{hint}.",
                               "add one (see effconv/recipes/turbo-vaed.yaml).")
        return self.student


def _packaged_dir():
    return resources.files("effconv") / RECIPE_DIR


def packaged_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _packaged_dir().iterdir() if p.name.endswith(".yaml"))


def _recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.exists() or path.suffix in {".yaml", ".yml"} or len(path.parts) > 1:
        return path
    if str(name_or_path) in packaged_recipes():
        return Path(str(_packaged_dir() / f"{name_or_path}.yaml"))
    raise EffconvError(
        f"recipe '{name_or_path}' is neither a file nor a packaged recipe.",
        f"pass a YAML path or one of: {', '.join(packaged_recipes())}.",
    )


def load_recipe(name_or_path: str | Path) -> tuple[Recipe, str]:
    """Return the validated recipe and the source it came from (for messages and manifests)."""
    path = _recipe_path(name_or_path)
    data = read_yaml_mapping(path, "recipe")
    try:
        return Recipe.model_validate(data), str(path)
    except ValidationError as exc:
        raise format_validation_error(exc, f"recipe {path}") from None
