"""Build the model a spec names: a diffusers video VAE (random init or a local pretrained dir) or a
user factory, and select the part (decoder / encoder / vae) with its example input."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from effconv.errors import EffconvError
from effconv.models.base import Compression, FamilyAdapter
from effconv.models.generic import GenericAdapter
from effconv.models.limits import check_size
from effconv.models.registry import ADAPTERS, adapter_for
from effconv.spec import LoadedSpec

WEIGHT_FILES = ("*.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")
INIT_SEED = 0


@dataclass
class LoadedModel:
    spec: LoadedSpec
    model: nn.Module
    adapter: FamilyAdapter
    compression: Compression
    module: nn.Module

    @property
    def part(self) -> str:
        return self.spec.spec.part

    @property
    def clip_shape(self) -> tuple[int, int, int, int, int]:
        clip = self.spec.spec.input
        return (1, 3, clip.frames, clip.height, clip.width)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        clip = self.spec.spec.input
        return self.compression.latent_shape(clip.frames, clip.height, clip.width)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.latent_shape if self.part == "decoder" else self.clip_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.clip_shape if self.part != "encoder" else self.latent_shape

    @property
    def input_name(self) -> str:
        return "latent" if self.part == "decoder" else "video"

    @property
    def output_name(self) -> str:
        return "latent" if self.part == "encoder" else "video"

    def example_input(self, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        sample = torch.randn(self.input_shape, generator=generator)
        return sample if self.part == "decoder" else sample.clamp(-1.0, 1.0)

    def num_params(self) -> int:
        """Parameters of the selected part only (a decoder export does not carry the encoder)."""
        return sum(self.block_params().values())

    def block_params(self) -> dict[str, int]:
        blocks = self.adapter.part_blocks(self.model, self.part)
        return {name: sum(p.numel() for p in block.parameters()) for name, block in blocks.items()}


def _diffusers_class(name: str) -> type[nn.Module]:
    return adapter_for(name).model_class()


def _check_config_keys(cls: type, config: dict) -> None:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise EffconvError(
            f"{cls.__name__} does not take config key(s) {', '.join(unknown)}.",
            f"remove them; it accepts: {', '.join(sorted(accepted))}.",
        )


def pretrained_root(path: Path) -> Path:
    if not path.exists():
        raise EffconvError(f"pretrained directory '{path}' does not exist.", "check the 'pretrained' path in the spec.")
    if not path.is_dir():
        raise EffconvError(f"pretrained path '{path}' is not a directory.", "point it at a save_pretrained directory.")
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise EffconvError(
            f"pretrained directory '{path}' has no config.json.",
            "point it at a directory written by save_pretrained (config.json + weights).",
        )
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise EffconvError(
            f"pretrained directory '{path}' has no weights (*.safetensors).",
            "copy the model's weight files next to its config.json.",
        )
    return path


def _load_pretrained(cls: type[nn.Module], path: Path, overrides: dict) -> nn.Module:
    root = pretrained_root(path)
    try:
        saved_config = json.loads((root / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EffconvError(f"'{root / 'config.json'}' is not valid JSON.", "restore it from the original model.") from None
    if not isinstance(saved_config, dict):
        raise EffconvError(f"'{root / 'config.json'}' is not a JSON object of config keys.", "restore it from the original model.")
    saved_class = saved_config.get("_class_name")
    if saved_class and saved_class != cls.__name__:
        raise EffconvError(
            f"'{root}' holds a {saved_class}, but the spec says {cls.__name__}.",
            f"set model.diffusers to {saved_class}.",
        )
    try:
        check_size(lambda: cls.from_config({**saved_config, **overrides}), f"the {cls.__name__} in '{root}'")
        return cls.from_pretrained(root, **overrides)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise EffconvError(
            f"could not load {cls.__name__} weights from '{root}': {reason}",
            "check that the weights are complete and match config.json (config overrides must not change shapes).",
        ) from None


def _build_random(cls: type[nn.Module], config: dict) -> nn.Module:
    check_size(lambda: cls(**config), f"this {cls.__name__} config")
    torch.manual_seed(INIT_SEED)
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError, AssertionError, IndexError, KeyError, ZeroDivisionError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise EffconvError(
            f"{cls.__name__} cannot be built from this config: {reason}",
            "fix model.config (see the diffusers docs for the class).",
        ) from None


@contextlib.contextmanager
def _importable_from(directory: Path):
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


def _call_factory(loaded: LoadedSpec, allow_import: bool) -> nn.Module:
    target = loaded.spec.model.factory
    if not allow_import:
        raise EffconvError(
            f"the spec asks to import and run user code ('factory: {target}').",
            "pass --allow-import if you trust that code.",
        )
    module_name, _, function_name = target.partition(":")
    with _importable_from(loaded.base_dir):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EffconvError(f"cannot import '{module_name}' for factory: {exc}.", "check the module path.") from None
        factory = getattr(module, function_name, None)
        if not callable(factory):
            raise EffconvError(f"'{module_name}' has no callable '{function_name}'.", "check the factory name.")
        torch.manual_seed(INIT_SEED)
        model = factory(**loaded.spec.model.config)
    if not isinstance(model, nn.Module):
        raise EffconvError(f"factory '{target}' returned {type(model).__name__}, not a torch nn.Module.", "return the model.")
    return model


def _check_clip(loaded: LoadedSpec, compression: Compression, class_name: str) -> None:
    clip = loaded.spec.input
    if not compression.frames_valid(clip.frames):
        rule = f"1 + {compression.temporal}*k" if compression.causal else f"{compression.temporal}*k"
        raise EffconvError(
            f"input.frames {clip.frames} does not fit {class_name}'s {compression.temporal}x temporal compression "
            f"(frames must be {rule}).",
            f"use frames {' or '.join(map(str, compression.nearest_frames(clip.frames)))}.",
        )
    for side in ("height", "width"):
        value = getattr(clip, side)
        if value % compression.spatial:
            raise EffconvError(
                f"input.{side} {value} is not a multiple of {class_name}'s {compression.spatial}x spatial compression.",
                f"use {side} {' or '.join(map(str, compression.nearest_side(value)))}.",
            )


def load_model(loaded: LoadedSpec, allow_import: bool = False) -> LoadedModel:
    source = loaded.spec.model
    if source.factory is not None:
        model = _call_factory(loaded, allow_import)
        adapter = ADAPTERS.get(type(model).__name__, GenericAdapter())
    else:
        cls = _diffusers_class(source.diffusers)
        adapter = adapter_for(source.diffusers)
        _check_config_keys(cls, source.config)
        if loaded.pretrained_dir is not None:
            model = _load_pretrained(cls, loaded.pretrained_dir, dict(source.config))
        else:
            model = _build_random(cls, dict(source.config))
    model = adapter.prepare(model)
    compression = adapter.compression(model)
    _check_clip(loaded, compression, type(model).__name__)
    module = adapter.part_module(model, loaded.spec.part).eval()
    return LoadedModel(spec=loaded, model=model, adapter=adapter, compression=compression, module=module)
