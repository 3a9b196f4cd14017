"""What `effconv profile` measures: an ONNX file for the requested clip, from an effconv artifact or a spec.

A spec is built and exported on the fly. An artifact at a different --resolution/--frames is re-exported
from the spec recorded in its manifest (shapes are fixed in an exported graph, and re-exporting gives
exact shapes where scaling per-node costs would only approximate them); the artifact's own dtype is
kept for the cost (so an int8 artifact is still costed as int8).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from effconv.artifacts import manifest_path, read_manifest
from effconv.backends.onnx import export as onnx_backend
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import load_model
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


def parse_resolution(text: str) -> tuple[int, int]:
    """'720p' or 'HxW' -> (height, width)."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise EffconvError(f"--resolution '{text}' is not understood.", f"use {', '.join(RESOLUTIONS)} or HxW (e.g. 720x1280).")
    return int(match[1]), int(match[2])


def _export(loaded: LoadedSpec, directory: Path, allow_import: bool) -> tuple[Path, dict]:
    model = load_model(loaded, allow_import=allow_import)
    path = directory / f"{loaded.spec.name}.onnx"
    onnx_backend.export(model.module, model.example_input(0), path, model.input_name, model.output_name)
    return path, model.compression.as_dict()


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


def resolve(target: Path, workdir: Path, resolution: str | None = None, frames: int | None = None,
            allow_import: bool = False) -> ProfileInput:
    target = Path(target)
    if not target.exists():
        raise EffconvError(f"'{target}' does not exist.", "pass an .onnx written by effconv or a spec YAML.")
    if target.suffix in (".yaml", ".yml"):
        loaded = _reshaped(load_spec(target), resolution, frames)
        path, compression = _export(loaded, workdir, allow_import)
        return ProfileInput(loaded.spec.name, path, "fp32", compression, f"spec exported to ONNX for {_clip_text(loaded)}")
    if target.suffix != ".onnx":
        raise EffconvError(f"'{target}' is neither an .onnx artifact nor a spec YAML.", "pass NAME.onnx or SPEC.yaml.")
    dtype = artifact_dtype(load_graph(target))
    manifest_file = manifest_path(target)
    manifest = read_manifest(manifest_file) if manifest_file.is_file() else None
    compression = _manifest_compression(manifest, manifest_file) if manifest else None
    if resolution is None and frames is None:
        return ProfileInput(target.stem, target, dtype, compression, "artifact as exported")
    if manifest is None:
        raise EffconvError(f"'{target}' has fixed shapes and no manifest beside it to re-export from.",
                           "drop --resolution/--frames, or profile the spec YAML instead.")
    loaded = _reshaped(spec_from_dict(manifest.spec, target.resolve().parent, source=str(manifest_file)), resolution, frames)
    path, compression = _export(loaded, workdir, allow_import)
    return ProfileInput(loaded.spec.name, path, dtype, compression,
                        f"re-exported from the manifest's spec for {_clip_text(loaded)}, artifact dtype {dtype} kept")
