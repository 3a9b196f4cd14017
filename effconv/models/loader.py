"""Build the model a spec names: a diffusers video VAE (random init, a local save_pretrained directory
or a single .safetensors checkpoint) or a user factory, and select the part (decoder / encoder / vae)
with its example input."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from effconv.errors import EffconvError, exception_text
from effconv.models.base import Compression, FamilyAdapter
from effconv.models.generic import GenericAdapter
from effconv.models.keys import listed_key_differences
from effconv.models.limits import check_size
from effconv.models.registry import ADAPTERS, adapter_for
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.models.turbo_vaed.released import RELEASED_CLASS, decoder_config, decoder_state_dict
from effconv.quiet import quiet_imports
from effconv.spec import LoadedSpec

with quiet_imports():
    from diffusers.utils.constants import (
        SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME,
    )

# save_pretrained's file names; a variant goes before the extension: diffusion_pytorch_model.fp16.safetensors,
# diffusion_pytorch_model.safetensors.index.fp16.json with shards diffusion_pytorch_model.fp16-00001-of-00002.safetensors
PLAIN_WEIGHT_NAMES = (SAFETENSORS_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
VARIANT_WEIGHT_NAME = re.compile(r"diffusion_pytorch_model\.(?P<variant>[^.]+)\.(?:safetensors|bin)")
VARIANT_INDEX_NAME = re.compile(r"diffusion_pytorch_model\.(?:safetensors|bin)\.index\.(?P<variant>[^.]+)\.json")
SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")
SINGLE_FILE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
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
        """The whole autoencoder's output is named apart from its input (`video`): a graph cannot define one name
        twice (onnxruntime: "Duplicate definition of name"; coremltools: "used both as function's input and output")."""
        return {"decoder": "video", "encoder": "latent", "vae": "reconstruction"}[self.part]

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


def _check_single_file_name(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise EffconvError(
            f"pretrained file '{path}' is a pickle ({suffix}); effconv loads only .safetensors, since loading a pickle runs code.",
            "convert it to .safetensors (safetensors.torch.save_file of its state dict) where you trust the file.",
        )
    if suffix != SINGLE_FILE_SUFFIX:
        raise EffconvError(
            f"pretrained file '{path}' is not a .safetensors file.",
            "point model.pretrained at a .safetensors checkpoint or a save_pretrained directory.",
        )


def _weight_files(root: Path) -> dict[str | None, list[Path]]:
    """A save_pretrained directory's weight files by variant (None: the plain ones). Shards are left
    out: their index file stands for them."""
    found: dict[str | None, list[Path]] = {}
    for file in sorted(root.iterdir()):
        if file.name in PLAIN_WEIGHT_NAMES:
            found.setdefault(None, []).append(file)
        elif match := VARIANT_WEIGHT_NAME.fullmatch(file.name) or VARIANT_INDEX_NAME.fullmatch(file.name):
            if not SHARD_SUFFIX.search(match["variant"]):
                found.setdefault(match["variant"], []).append(file)
    return found


def pretrained_root(path: Path) -> Path:
    """The save_pretrained directory `path` names (a pipeline directory's vae/ subfolder), or the
    single .safetensors file it names."""
    if not path.exists():
        raise EffconvError(f"pretrained path '{path}' does not exist.", "check the 'pretrained' path in the spec.")
    if path.is_file():
        _check_single_file_name(path)
        return path
    if not path.is_dir():
        raise EffconvError(f"pretrained path '{path}' is neither a directory nor a file.",
                           "point it at a save_pretrained directory or a .safetensors file.")
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise EffconvError(
            f"pretrained directory '{path}' has no config.json.",
            "point it at a directory written by save_pretrained (config.json + weights).",
        )
    if not _weight_files(path):
        raise EffconvError(
            f"pretrained directory '{path}' has no weights (diffusion_pytorch_model[.VARIANT].safetensors, "
            "or a .safetensors.index[.VARIANT].json with its shards).",
            "copy the model's weight files next to its config.json.",
        )
    return path


def _read_saved_config(root: Path) -> dict:
    try:
        saved_config = json.loads((root / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EffconvError(f"'{root / 'config.json'}' is not valid JSON.", "restore it from the original model.") from None
    if not isinstance(saved_config, dict):
        raise EffconvError(f"'{root / 'config.json'}' is not a JSON object of config keys.", "restore it from the original model.")
    return saved_config


def pretrained_config(path: Path) -> dict:
    """The config.json of the save_pretrained directory `path` names; empty for a single weights file,
    whose architecture is the spec's model.config."""
    root = pretrained_root(path)
    return {} if root.is_file() else _read_saved_config(root)


def _variant_choices(present: dict[str | None, list[Path]]) -> str:
    named = sorted(variant for variant in present if variant is not None)
    return ", ".join(named + (["none (plain weights)"] if None in present else []))


def _chosen_variant(root: Path, requested: str | None) -> str | None:
    """The variant to load: the spec's, else the plain weights, else the only variant there is (so a
    directory saved with variant="fp16" loads without one more spec key)."""
    present = _weight_files(root)
    if requested is not None:
        if requested not in present:
            raise EffconvError(f"pretrained directory '{root}' has no '{requested}' weights variant.",
                               f"set model.variant to one of: {_variant_choices(present)}.")
        return requested
    if None in present:
        return None
    if len(present) == 1:
        return next(iter(present))
    raise EffconvError(f"pretrained directory '{root}' holds several weights variants ({_variant_choices(present)}) "
                       "and no plain weights.", "set model.variant to the one to load.")


def _check_shards(index: Path) -> None:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise EffconvError(f"shard index '{index}' is not a JSON object with a weight_map.",
                           "restore it from the original model.") from None
    missing = [name for name in shards if not (index.parent / str(name)).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EffconvError(f"shard '{missing[0]}'{more} listed in '{index}' is missing.",
                           "copy every shard the index lists next to it.")


def _load_directory(cls: type[nn.Module], root: Path, overrides: dict, variant: str | None) -> nn.Module:
    saved_config = _read_saved_config(root)
    saved_class = saved_config.get("_class_name")
    if saved_class and saved_class != cls.__name__:
        raise EffconvError(
            f"'{root}' holds a {saved_class}, but the spec says {cls.__name__}.",
            f"set model.diffusers to {saved_class}.",
        )
    try:
        check_size(lambda: cls.from_config({**saved_config, **overrides}), f"the {cls.__name__} in '{root}'")
        # fp16/bf16 files load into the fp32 model from_pretrained builds (no torch_dtype): effconv runs fp32
        model, loading_info = cls.from_pretrained(root, variant=variant, output_loading_info=True, **overrides)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise EffconvError(
            f"could not load {cls.__name__} weights from '{root}': {exception_text(exc)}",
            "check that the weights are complete and match config.json (config overrides must not change shapes).",
        ) from None
    _check_loading_info(cls, root, loading_info, overrides)
    return model


def _check_loading_info(cls: type[nn.Module], root: Path, loading_info: dict, overrides: dict) -> None:
    """from_pretrained leaves a parameter the weights lack at its random init and drops a tensor the model
    lacks, and says so only in a log line (which effconv's CLI quiets): refuse both, like the single-file path."""
    differences = listed_key_differences(loading_info["missing_keys"], loading_info["unexpected_keys"])
    if differences:
        fix = ("remove the model.config overrides that add or remove modules, or " if overrides else "") + \
            "copy the complete weights saved with this config.json."
        raise EffconvError(f"the {cls.__name__} weights in '{root}' do not match its config: {differences}.", fix)


def _release_format_converter(cls: type[nn.Module]) -> Callable[..., dict] | None:
    """diffusers' converter from the original release's checkpoint keys, for the classes its
    from_single_file supports."""
    with quiet_imports():
        from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES
    entry = SINGLE_FILE_LOADABLE_CLASSES.get(cls.__name__)
    return entry["checkpoint_mapping_fn"] if entry else None


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(file)
    except (SafetensorError, OSError) as exc:
        raise EffconvError(f"pretrained file '{file}' is not a readable safetensors file: {exception_text(exc)}.",
                           "copy it again from the original release (a truncated download fails like this).") from None


def _key_differences(state: dict, expected: dict) -> str:
    return listed_key_differences(expected.keys() - state.keys(), state.keys() - expected.keys())


def _release_to_diffusers(converter: Callable[..., dict], tensors: dict, model: nn.Module) -> dict:
    try:  # the converters pop keys from the dict they are given
        return converter(checkpoint=dict(tensors), config=dict(model.config))
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):  # not the release layout either
        return {}


def _diffusers_state_dict(model: nn.Module, tensors: dict, converter: Callable[..., dict] | None, file: Path) -> dict:
    """The file's tensors under the model's state_dict keys. Like from_single_file, keys that already
    are the model's are taken as they are, anything else goes through diffusers' converter; unlike it,
    a key the result lacks is an error instead of a weight silently left at its random init."""
    expected = model.state_dict()
    if tensors.keys() == expected.keys():
        return tensors
    candidates = [tensors]
    if converter is not None:
        candidates.append(_release_to_diffusers(converter, tensors, model))
        if candidates[-1].keys() == expected.keys():
            return candidates[-1]
    closest = min(candidates, key=lambda state: len(state.keys() ^ expected.keys()))
    layouts = "diffusers' or the original release's" if converter is not None else "diffusers'"
    raise EffconvError(
        f"pretrained file '{file}' does not hold {type(model).__name__} weights in {layouts} key layout: "
        f"{_key_differences(closest, expected)}.",
        "check that model.diffusers and model.config describe this checkpoint.",
    )


def _check_shapes(model: nn.Module, state: dict, file: Path) -> None:
    expected = model.state_dict()
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise EffconvError(
                f"pretrained file '{file}': {key} has shape {list(tensor.shape)}, the {type(model).__name__} built "
                f"from model.config has {list(expected[key].shape)}.",
                "set model.config to the checkpoint's architecture (the keys of its diffusers config.json).",
            )


def _check_no_variant(file: Path, variant: str | None) -> None:
    if variant is not None:
        raise EffconvError(f"model.variant '{variant}' names a save_pretrained directory's weights, but '{file}' is one file.",
                           "remove model.variant.")


def _check_single_file_spec(cls: type[nn.Module], file: Path, config: dict, variant: str | None) -> None:
    _check_no_variant(file, variant)
    if not config and _release_format_converter(cls) is None:
        raise EffconvError(
            f"pretrained file '{file}' holds only weights, and diffusers has no single-file support for {cls.__name__} "
            "to take its architecture from.",
            "add model.config with the architecture (the keys of the model's diffusers config.json).",
        )


def _located_weights(cls: type[nn.Module], path: Path, config: dict, variant: str | None) -> tuple[Path, str | None]:
    """The weights file or save_pretrained directory to load and the variant to load from it, after
    every check that needs no weights read."""
    root = pretrained_root(path)
    if root.is_file():
        _check_single_file_spec(cls, root, config, variant)
        return root, None
    variant = _chosen_variant(root, variant)
    for index in _weight_files(root)[variant]:
        if index.suffix == ".json":
            _check_shards(index)
    return root, variant


def _load_single_file(cls: type[nn.Module], file: Path, config: dict) -> nn.Module:
    model = _build_random(cls, config)
    state = _diffusers_state_dict(model, _read_safetensors(file), _release_format_converter(cls), file)
    _check_shapes(model, state, file)
    model.load_state_dict(state, strict=True)  # copies fp16/bf16 tensors into the fp32 parameters
    return model


def _load_pretrained(cls: type[nn.Module], path: Path, config: dict, variant: str | None) -> nn.Module:
    weights, variant = _located_weights(cls, path, config, variant)
    if weights.is_file():
        return _load_single_file(cls, weights, config)
    return _load_directory(cls, weights, config, variant)


def _weights_in(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of a save_pretrained directory's weight files (an index file stands for its shards)."""
    tensors = {}
    for file in files:
        if file.suffix == ".json":
            _check_shards(file)
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
            tensors |= _weights_in([file.parent / shard for shard in shards])
        elif file.suffix != SINGLE_FILE_SUFFIX:
            _check_single_file_name(file)  # refuses the pickle, saying why
        else:
            tensors |= _read_safetensors(file)
    return tensors


def _released_weights(path: Path, overrides: dict, variant: str | None) -> tuple[dict, dict, Path]:
    """An AutoencoderKLTurboVAED checkpoint's config (config.json under the spec's model.config, or model.config
    alone for one file) and tensors."""
    root = pretrained_root(path)
    if root.is_file():
        _check_no_variant(root, variant)
        if not overrides:
            raise EffconvError(f"pretrained file '{root}' holds only the weights of an {RELEASED_CLASS}, not its "
                               "architecture.", "add model.config with the keys of the config.json saved with it "
                               "(the released ones are configs/Turbo-VAED-*.json in github.com/hustvl/Turbo-VAED).")
        return overrides, _read_safetensors(root), root
    saved_config = _read_saved_config(root)
    if saved_config.get("_class_name", RELEASED_CLASS) != RELEASED_CLASS:
        raise EffconvError(f"'{root}' holds a {saved_config['_class_name']}, but the spec says {RELEASED_CLASS}.",
                           f"set model.diffusers to {saved_config['_class_name']}.")
    return {**saved_config, **overrides}, _weights_in(_weight_files(root)[_chosen_variant(root, variant)]), root


def _load_released(loaded: LoadedSpec) -> TurboVAEDDecoder:
    """The TurboVAEDDecoder an AutoencoderKLTurboVAED spec describes: random, or its checkpoint's weights mapped
    strictly (effconv.models.turbo_vaed.released)."""
    source = loaded.spec.model
    if loaded.pretrained_dir is None:
        _check_variant_without_weights(source.variant)
        return _build_random(TurboVAEDDecoder, decoder_config(dict(source.config)))
    config, tensors, weights = _released_weights(loaded.pretrained_dir, dict(source.config), source.variant)
    decoder = _build_random(TurboVAEDDecoder, decoder_config(config))
    decoder.load_state_dict(decoder_state_dict(tensors, decoder, f"'{weights}'"), strict=True)
    return decoder


def _check_variant_without_weights(variant: str | None) -> None:
    if variant is not None:
        raise EffconvError(f"model.variant '{variant}' names a weights variant, but the spec has no model.pretrained.",
                           "add model.pretrained (or pass --pretrained), or remove model.variant.")


def _build_random(cls: type[nn.Module], config: dict) -> nn.Module:
    check_size(lambda: cls(**config), f"this {cls.__name__} config")
    torch.manual_seed(INIT_SEED)
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError, AssertionError, IndexError, KeyError, ZeroDivisionError) as exc:
        raise EffconvError(
            f"{cls.__name__} cannot be built from this config: {exception_text(exc)}",
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
    elif source.diffusers == RELEASED_CLASS:
        model, adapter = _load_released(loaded), adapter_for(RELEASED_CLASS)
    else:
        cls = _diffusers_class(source.diffusers)
        adapter = adapter_for(source.diffusers)
        _check_config_keys(cls, source.config)
        if loaded.pretrained_dir is not None:
            model = _load_pretrained(cls, loaded.pretrained_dir, dict(source.config), source.variant)
        else:
            _check_variant_without_weights(source.variant)
            model = _build_random(cls, dict(source.config))
    model = adapter.prepare(model)
    compression = adapter.compression(model)
    _check_clip(loaded, compression, type(model).__name__)
    module = adapter.part_module(model, loaded.spec.part).eval()
    return LoadedModel(spec=loaded, model=model, adapter=adapter, compression=compression, module=module)
