"""Recipe schema: how to build (and later distill and ship) a student. YAML, validated by pydantic.

A recipe is a file path or the name of a packaged recipe (`effconv/recipes/NAME.yaml`). Each stage
reads its own optional section; `effconv rewrite` needs `student:`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from effconv.distill.config import DistillRecipe
from effconv.errors import EffconvError
from effconv.spec import StrictModel, format_validation_error, read_yaml_mapping

RECIPE_DIR = "recipes"
MAX_WIDTH = 65536
MAX_LAYERS = 64


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
        return self

    def scaled_widths(self) -> list[int]:
        if self.width_scale == 1.0:
            return list(self.widths)
        step = self.width_multiple
        return [max(step, round(w * self.width_scale / step) * step) for w in self.widths]


class Recipe(StrictModel):
    name: str | None = None
    description: str | None = None
    student: StudentRecipe | None = None
    distill: DistillRecipe = DistillRecipe()

    def require_student(self, source: str) -> StudentRecipe:
        if self.student is None:
            raise EffconvError(f"recipe '{source}' has no 'student' section.", "add one (see effconv/recipes/turbo-vaed.yaml).")
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
