"""Model spec schema (pydantic), YAML loading and the one-line errors for bad specs.

A spec names a model (a diffusers video-VAE class, or a user factory), which part of it to use, and
the pixel-space clip it works on. Paths inside a spec are relative to the spec file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from effconv.errors import EffconvError

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"  # the part of a weights file name between dots
MAX_SIDE = 8192
MAX_FRAMES = 4096
MAX_YAML_BYTES = 1 << 20  # specs, recipes and device profiles are a few KB
MAX_YAML_NODES = 100_000  # counted with aliases expanded: a "billion laughs" file stops here


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSource(StrictModel):
    diffusers: str | None = Field(None, description="diffusers class name, e.g. AutoencoderKLWan")
    factory: str | None = Field(None, description="'package.module:function' returning an nn.Module")
    pretrained: Path | None = Field(
        None, description="local save_pretrained directory (or a pipeline directory with vae/), or one .safetensors checkpoint")
    variant: str | None = Field(
        None, pattern=VARIANT_NAME, description="weights variant of a save_pretrained directory, e.g. fp16 "
        "(diffusion_pytorch_model.fp16.safetensors); default: the plain weights, else the only variant present")
    config: dict[str, Any] = Field(default_factory=dict, description="config for random init, or overrides")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.diffusers is None) == (self.factory is None):
            raise ValueError("give exactly one of 'diffusers' (a class name) or 'factory' ('module:function')")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory '{self.factory}' must look like 'package.module:function'")
        return self


class ClipShape(StrictModel):
    frames: int = Field(ge=1, le=MAX_FRAMES)
    height: int = Field(ge=1, le=MAX_SIDE)
    width: int = Field(ge=1, le=MAX_SIDE)


class ModelSpec(StrictModel):
    name: str = Field(pattern=SAFE_NAME, description="used for output file names")
    model: ModelSource
    part: Literal["decoder", "encoder", "vae"] = "decoder"
    input: ClipShape

    @field_validator("name")
    @classmethod
    def _no_dot_names(cls, value: str) -> str:
        if value in {".", ".."} or value.startswith("."):
            raise ValueError("name must not start with '.'")
        return value


def _error_location(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "spec"


def format_validation_error(exc: ValidationError, source: str) -> EffconvError:
    first = exc.errors()[0]
    where = _error_location(first)
    if first["type"] == "extra_forbidden":
        return EffconvError(f"{source}: unknown key '{where}'.", "remove it or check its spelling.")
    if first["type"] == "missing":
        return EffconvError(f"{source}: missing required key '{where}'.", "add it (see README 'Model spec').")
    message = first["msg"].removeprefix("Value error, ")
    return EffconvError(f"{source}: '{where}': {message}.", "correct that value (see README 'Model spec').")


def _expanded_nodes(data: Any) -> int:
    """Nodes a consumer walking the tree would visit, each alias counted every time it is used
    (memoized per object, so this costs one visit per distinct node). Raises ValueError on a
    structure that contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ValueError("an alias refers to a node that contains it")
        open_nodes.add(key)
        sizes[key] = 1 + sum(size(child) for child in (node.values() if isinstance(node, dict) else node))
        open_nodes.discard(key)
        return sizes[key]

    return size(data)


def _read_text(path: Path, what: str) -> str:
    try:
        if not path.is_file():
            raise EffconvError(f"{what} '{path}' does not exist or is not a file.", "check the path.")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise EffconvError(f"{what} '{path}' is larger than {MAX_YAML_BYTES // 1024} KB.", f"pass a YAML {what}, not a data file.")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EffconvError(f"{what} '{path}' is not UTF-8 text.", f"pass a YAML {what}.") from None
    except OSError as exc:
        raise EffconvError(f"cannot read {what} '{path}': {exc.strerror or exc}.", "check the path and its permissions.") from None


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every failure is a one-line EffconvError."""
    path = Path(path)
    text = _read_text(path, what)
    try:
        data = yaml.safe_load(text)
        nodes = _expanded_nodes(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise EffconvError(f"{what} '{path}' is malformed YAML{where}: {problem}.", "fix the YAML syntax.") from None
    except (RecursionError, ValueError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise EffconvError(f"{what} '{path}' cannot be used: {reason}.", "write plain nested YAML without recursive aliases.") from None
    if nodes > MAX_YAML_NODES:
        raise EffconvError(f"{what} '{path}' expands to more than {MAX_YAML_NODES:,} values (aliases counted where used).",
                           "write the values out instead of nesting aliases.")
    if not isinstance(data, dict):
        raise EffconvError(f"{what} '{path}' must be a YAML mapping (key: value).", "see README for an example.")
    return data


class LoadedSpec(BaseModel):
    """A validated spec plus the directory its relative paths refer to."""

    model_config = ConfigDict(frozen=True)

    spec: ModelSpec
    base_dir: Path

    @property
    def pretrained_dir(self) -> Path | None:
        path = self.spec.model.pretrained
        if path is None:
            return None
        return path if path.is_absolute() else (self.base_dir / path)

    def resolved(self) -> dict[str, Any]:
        """The spec as JSON-able data with absolute paths, for manifests."""
        data = self.spec.model_dump(mode="json")
        if self.pretrained_dir is not None:
            data["model"]["pretrained"] = str(self.pretrained_dir.resolve())
        return data

    def with_input(self, frames: int, height: int, width: int) -> LoadedSpec:
        try:
            shape = ClipShape(frames=frames, height=height, width=width)
        except ValidationError as exc:
            raise format_validation_error(exc, f"clip {frames}x{height}x{width}") from None
        return LoadedSpec(spec=self.spec.model_copy(update={"input": shape}), base_dir=self.base_dir)


def spec_from_dict(data: dict[str, Any], base_dir: Path, source: str = "spec") -> LoadedSpec:
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None
    return LoadedSpec(spec=spec, base_dir=Path(base_dir))


def load_spec(path: str | Path) -> LoadedSpec:
    path = Path(path)
    data = read_yaml_mapping(path, "spec")
    return spec_from_dict(data, path.resolve().parent, source=str(path))
