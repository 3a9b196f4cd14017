"""What `effconv profile` costs and measures: an ONNX graph for the estimate, and the artifact to run for --measure.

A spec is built and exported on the fly. An artifact at a different --resolution/--frames is re-exported
from the spec recorded in its manifest (shapes are fixed in an exported graph, and re-exporting gives
exact shapes where scaling per-node costs would only approximate them); the artifact's own dtype is
kept for the cost (so an int8 artifact is still costed as int8). A .tflite, .pte or .mlpackage is costed
on the ONNX graph of the spec in its manifest, at the dtype it computes in, and measured as it ships, in its
own runtime.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import TypeAdapter, ValidationError

from effconv.artifacts import Manifest, manifest_path, read_manifest
from effconv.backends import registry
from effconv.backends.onnx import export as onnx_backend
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.streaming import StreamingStep, stream_layout
from effconv.profile.cost import artifact_dtype, load_graph
from effconv.spec import LoadedSpec, load_spec, spec_from_dict

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1088, 1920)}


@dataclass
class ProfileInput:
    name: str
    onnx_path: Path
    dtype: str
    compression: dict | None
    how: str  # one line: where the graph came from
    backend: str  # whose runtime runs it on the device (a spec: onnx)
    measured_path: Path | None  # what --measure runs: the artifact as it ships, or a spec's fresh ONNX export
    input_shapes: tuple[tuple[int, ...], ...]  # the artifact's inputs: the latent, then a streaming step's flag and caches
    not_measurable: str = ""  # why --measure cannot run it, when measured_path is None


def parse_resolution(text: str) -> tuple[int, int]:
    """'720p' or 'HxW' -> (height, width)."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise EffconvError(f"--resolution '{text}' is not understood.", f"use {', '.join(RESOLUTIONS)} or HxW (e.g. 720x1280).")
    return int(match[1]), int(match[2])


def _export(loaded: LoadedSpec, directory: Path, allow_import: bool) -> tuple[Path, dict, tuple[int, ...]]:
    model = load_model(loaded, allow_import=allow_import)
    path = directory / f"{loaded.spec.name}.onnx"
    example = model.example_input(0)
    onnx_backend.export(model.module, example, path, model.input_name, model.output_name)
    return path, model.compression.as_dict(), tuple(example.shape)


def _export_step(loaded: LoadedSpec, directory: Path, stream: dict) -> Path:
    """The streaming step of a student as ONNX, for costing a streaming artifact of another backend."""
    model = load_model(loaded)
    latent = model.example_input(0)
    layout = stream_layout(model.model, (*latent.shape[:2], stream["latent_frames_per_call"], *latent.shape[3:]))
    path = directory / f"{loaded.spec.name}-step.onnx"
    onnx_backend.export(StreamingStep(model.model).eval(), layout.first_call(torch.zeros(layout.latent_shape)), path,
                        layout.input_names, layout.output_names)
    return path


def _reshaped(loaded: LoadedSpec, resolution: str | None, frames: int | None) -> LoadedSpec:
    clip = loaded.spec.input
    height, width = parse_resolution(resolution) if resolution else (clip.height, clip.width)
    return loaded.with_input(frames or clip.frames, height, width)


def _clip_text(loaded: LoadedSpec) -> str:
    clip = loaded.spec.input
    return f"{clip.frames} frames at {clip.height}x{clip.width}"


def _manifest_compression(manifest, source: Path) -> dict | None:
    raw = getattr(manifest, "compression", None)
    if raw is None:
        return None
    try:
        return dataclasses.asdict(TypeAdapter(Compression).validate_python(raw))
    except ValidationError:
        raise EffconvError(f"manifest '{source}' has an invalid 'compression' section.", "re-create the artifact with effconv.") from None


def shipped_dtype(manifest: Manifest) -> str:
    """The dtype a non-ONNX artifact computes in, from its manifest: weight-only int8 computes in float, and
    Core ML (fp16 or W8A16) computes in fp16 on the GPU and Neural Engine."""
    extra = manifest.model_extra or {}
    quantize = extra.get("quantize")
    if manifest.backend == "coreml":
        return "fp16" if quantize or extra.get("export", {}).get("precision", "fp16") == "fp16" else "fp32"
    return "int8" if quantize and not quantize.get("weights_only") else "fp32"


def _source_spec(manifest, manifest_file: Path, target: Path, resolution: str | None, frames: int | None) -> LoadedSpec:
    if manifest is None:
        raise EffconvError(f"'{target}' has fixed shapes and no manifest beside it to re-export from.",
                           "drop --resolution/--frames, or profile the spec YAML instead.")
    return _reshaped(spec_from_dict(manifest.spec, target.resolve().parent, source=str(manifest_file)), resolution, frames)


def resolve(target: Path, workdir: Path, resolution: str | None = None, frames: int | None = None,
            allow_import: bool = False) -> ProfileInput:
    target = Path(target)
    if not target.exists():
        raise EffconvError(f"'{target}' does not exist.", f"pass an artifact written by effconv ({', '.join(registry.suffixes())}) or a spec YAML.")
    if target.suffix in (".yaml", ".yml"):
        loaded = _reshaped(load_spec(target), resolution, frames)
        path, compression, shape = _export(loaded, workdir, allow_import)
        return ProfileInput(loaded.spec.name, path, "fp32", compression, f"spec exported to ONNX for {_clip_text(loaded)}", "onnx", path, (shape,))
    backend = registry.for_artifact(target)
    manifest_file = manifest_path(target)
    manifest = read_manifest(manifest_file) if manifest_file.is_file() else None
    if backend.name == "onnx":
        dtype = artifact_dtype(load_graph(target))
    elif manifest is None:
        raise EffconvError(f"'{target}' has no manifest beside it: effconv costs a {backend.suffix} through the spec it records.",
                           "keep the .json `effconv convert` wrote beside the artifact, or profile the spec YAML.")
    else:
        _check_readable(target, backend, manifest)
        dtype = shipped_dtype(manifest)
    compression = _manifest_compression(manifest, manifest_file) if manifest else None
    reshaped = resolution is not None or frames is not None
    if backend.name == "onnx" and not reshaped:
        return ProfileInput(target.stem, target, dtype, compression, _as_exported(manifest), "onnx", target,
                            _manifest_shapes(manifest) if manifest else _onnx_input_shapes(target))
    loaded = _source_spec(manifest, manifest_file, target, resolution, frames)
    stream = (manifest.model_extra or {}).get("stream")
    if stream and not reshaped:
        return ProfileInput(loaded.spec.name, _export_step(loaded, workdir, stream), dtype, compression,
                            f"{backend.name} {_as_exported(manifest)}; costed on the same step exported to ONNX at {dtype}",
                            backend.name, target, _manifest_shapes(manifest))
    path, compression, shape = _export(loaded, workdir, allow_import)
    if not reshaped:
        return ProfileInput(loaded.spec.name, path, dtype, compression,
                            f"{backend.name} artifact measured as shipped; costed on its spec's ONNX graph at {dtype}",
                            backend.name, target, _manifest_shapes(manifest))
    how = f"re-exported from the manifest's spec for {_clip_text(loaded)}, artifact dtype {dtype} kept"
    if backend.name == "onnx" and dtype == "fp32":
        return ProfileInput(loaded.spec.name, path, dtype, compression, how, "onnx", path, (shape,))
    return ProfileInput(loaded.spec.name, path, dtype, compression, how, backend.name, None, (shape,),
                        f"--measure runs the {dtype} {backend.name} artifact as it ships, and --resolution/--frames "
                        "change its fixed shapes")


def _check_readable(target: Path, backend, manifest: Manifest) -> None:
    """The manifest describes this kind of artifact, and the artifact opens (its ops are listed)."""
    if manifest.backend != backend.name:
        raise EffconvError(f"the manifest beside '{target.name}' describes a {manifest.backend} artifact, not {backend.name}.",
                           "keep each artifact with the manifest `effconv convert` wrote for it.")
    try:
        backend.ops(target)
    except EffconvError:
        raise
    except Exception as exc:  # each runtime's reader raises its own types for a damaged file
        raise EffconvError(f"cannot read '{target.name}' as a {backend.suffix} ({type(exc).__name__}).",
                           f"re-create it with `effconv convert SPEC --to {backend.name}`.") from None


def _onnx_input_shapes(path: Path) -> tuple[tuple[int, ...], ...]:
    graph = load_graph(path).graph
    weights = {init.name for init in graph.initializer}
    return tuple(tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim) for i in graph.input if i.name not in weights)


def _manifest_shapes(manifest: Manifest) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(tensor.shape) for tensor in manifest.inputs)


def _as_exported(manifest: Manifest | None) -> str:
    stream = (manifest.model_extra or {}).get("stream") if manifest else None
    if not stream:
        return "artifact as exported"
    return (f"streaming step as exported: one call of {stream['latent_frames_per_call']} latent frames -> "
            f"{stream['video_frames_per_call']} video frames; FPS is the steady state, memory includes the caches")
