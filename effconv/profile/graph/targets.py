"""What `effconv profile` costs and measures: the graph each target is costed on, and the file --measure runs.

- A spec YAML is built and exported to ONNX on the fly (fp32).
- An .onnx is costed on its own graph, a .tflite on its own flatbuffer (tflite.py), a .mlpackage on its own
  ML program (mlprogram.py), each node in the dtype it computes in there.
- A .pte is costed on the ONNX graph of the module it was lowered from (its spec legalized as `effconv convert --to
  executorch` did; ExecuTorch's serialized XNNPACK program does not list per-op shapes), with the dtypes the .pte
  ships: static int8 computes the kinds XNNPACKQuantizer quantizes in int8 (XNNPACK_INT8_KINDS), the rest in fp32.
- At another --resolution/--frames an artifact is re-exported from the spec in its manifest (shapes are fixed in an
  exported graph, and re-exporting gives exact shapes where scaling per-node costs would only approximate them):
  to its own backend with `effconv convert`'s library function (ONNX, TFLite and Core ML convert here), a .pte to
  ONNX (lowering to XNNPACK takes minutes). The re-export is float; each node kind then takes the precision it has
  in the shipped artifact (GraphCost.precisions_by_kind: compute dtype and weight storage, the most common per kind),
  so an int8 artifact is still costed as int8 and a weight-only one as float with int8 weights.
- --measure runs the artifact as it ships, in its own runtime.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from effconv.artifacts import Manifest, manifest_path, read_manifest
from effconv.backends import registry
from effconv.backends.executorch import quantize as executorch_quantize
from effconv.backends.onnx import export as onnx_backend
from effconv.convert.stage import convert
from effconv.errors import EffconvError, VerificationFailed
from effconv.models.base import Compression
from effconv.models.loader import load_model
from effconv.profile.graph.costs import CONV_CATEGORIES, GraphCost, NodeCost, Precision
from effconv.profile.graph.mlprogram import mlprogram_cost
from effconv.profile.graph.onnx import graph_cost, load_graph
from effconv.profile.graph.tflite import tflite_cost
from effconv.spec import LoadedSpec, load_spec, spec_from_dict

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1088, 1920)}
# What each backend's artifact is costed on, read from the file itself
OWN_GRAPH = {"onnx": ("its own ONNX graph", lambda path: graph_cost(load_graph(path))),
             "tflite": ("its own LiteRT flatbuffer", tflite_cost),
             "coreml": ("its own ML program", mlprogram_cost)}
# XNNPACKQuantizer's static int8 patterns: conv, conv_transpose, linear, add, mul, cat (each also fused with relu):
# https://github.com/pytorch/executorch/blob/main/backends/xnnpack/quantizer/xnnpack_quantizer.py (SUPPORTED_PATTERNS)
XNNPACK_INT8_KINDS = {"Add", "Mul", "Concat", "Relu"}
INT8 = Precision("int8", "int8")
FLOAT = Precision("fp32", "fp32")


@dataclass
class ProfileInput:
    name: str
    cost: GraphCost
    compression: dict | None
    how: str  # one line: what graph was costed, and how its dtypes were chosen
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


def statically_quantized(manifest: Manifest) -> bool:
    """Whether an artifact is statically quantized (int8 compute), from its manifest."""
    quantize = (manifest.model_extra or {}).get("quantize")
    return bool(quantize) and not quantize.get("weights_only")


def _executorch_precisions(cost: GraphCost) -> dict[str, Precision]:
    """Per kind, what a statically quantized .pte computes in int8: the kinds XNNPACKQuantizer annotates."""
    def quantized(node: NodeCost) -> bool:
        return node.category in (*CONV_CATEGORIES, "matmul") or node.kind in XNNPACK_INT8_KINDS

    return {node.kind: INT8 for node in cost.nodes if quantized(node)}


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
        return ProfileInput(loaded.spec.name, graph_cost(load_graph(path)), compression,
                            f"spec exported to ONNX for {_clip_text(loaded)}", "onnx", path, (shape,))
    backend = registry.for_artifact(target)
    manifest_file = manifest_path(target)
    manifest = read_manifest(manifest_file) if manifest_file.is_file() else None
    if backend.name != "onnx":
        if manifest is None:
            raise EffconvError(f"'{target}' has no manifest beside it: effconv reads a {backend.suffix}'s spec, inputs "
                               "and compression from it.",
                               "keep the .json `effconv convert` wrote beside the artifact, or profile the spec YAML.")
        _check_readable(target, backend, manifest)
    compression = _manifest_compression(manifest, manifest_file) if manifest else None
    if resolution is None and frames is None:
        return _as_shipped(target, backend.name, manifest, compression, workdir, allow_import)
    return _re_exported(target, backend.name, manifest, compression, workdir,
                        _source_spec(manifest, manifest_file, target, resolution, frames), allow_import)


def _as_shipped(target: Path, backend: str, manifest: Manifest | None, compression: dict | None, workdir: Path,
                allow_import: bool) -> ProfileInput:
    if backend in OWN_GRAPH:
        what, read = OWN_GRAPH[backend]
        cost = read(target)
        shapes = _manifest_shapes(manifest) if manifest else _fixed(cost.input_shapes.values())
        exported = _as_exported(manifest)
        if backend != "onnx":
            exported = f"{backend} {exported}, measured as shipped"
        how = f"{exported}; costed on {what} ({cost.dtype})"
        return ProfileInput(target.stem, cost, compression, how, backend, target, shapes)
    stream = (manifest.model_extra or {}).get("stream")
    cost = graph_cost(load_graph(_export_lowered(manifest, workdir, allow_import)))
    if statically_quantized(manifest):
        cost = cost.with_precisions(_executorch_precisions(cost))
    return ProfileInput(manifest.spec["name"], cost, compression,
                        f"{backend} {_as_exported(manifest)}, measured as shipped; costed on the ONNX graph of the module "
                        f"it was lowered from{' (the same step)' if stream else ''}, after the same rewrites, with the "
                        f"dtypes the .pte ships ({cost.dtype})", backend, target, _manifest_shapes(manifest))


def _export_lowered(manifest: Manifest, directory: Path, allow_import: bool) -> Path:
    """The module a .pte was lowered from (its spec's decoder or streaming step, legalized as `effconv convert --to
    executorch` did: e.g. Conv3d as Conv2d over frames), as ONNX: ExecuTorch's serialized XNNPACK program does not
    list per-op shapes, this graph has the same ops."""
    module, example = executorch_quantize.lowered_module(manifest, allow_import)
    path = directory / f"{manifest.name}-lowered.onnx"
    onnx_backend.export(module, example if len(example) > 1 else example[0], path,
                        [info.name for info in manifest.inputs], [info.name for info in manifest.outputs])
    return path


def _re_exported(target: Path, backend: str, manifest: Manifest, compression: dict | None, workdir: Path,
                 loaded: LoadedSpec, allow_import: bool) -> ProfileInput:
    """The artifact at another shape: re-exported from its spec, each node kind at the shipped artifact's precision."""
    if backend in OWN_GRAPH:
        read = OWN_GRAPH[backend][1]
        shipped = read(target)
        path = _converted(loaded, backend, manifest, workdir, allow_import)
        fresh = read(path)
        precisions = {} if _is_float(shipped) else shipped.precisions_by_kind()
        where = f"re-exported to {backend} from the manifest's spec for {_clip_text(loaded)}"
    else:
        path, _, _ = _export(loaded, workdir, allow_import)
        fresh = graph_cost(load_graph(path))
        precisions = _executorch_precisions(fresh) if statically_quantized(manifest) else {}
        where = (f"re-exported to ONNX from the manifest's spec for {_clip_text(loaded)} (a .pte is not re-lowered "
                 "to XNNPACK here)")
    cost = fresh.with_precisions(precisions)
    how = f"{where}; each op kind keeps the shipped artifact's dtype ({cost.dtype})"
    shapes = _fixed(fresh.input_shapes.values())
    if backend == "onnx" and not precisions:
        return ProfileInput(loaded.spec.name, cost, compression, how, "onnx", path, shapes)
    return ProfileInput(loaded.spec.name, cost, compression, how, backend, None, shapes,
                        f"--measure runs the {backend} artifact as it ships ({cost.dtype}), and --resolution/--frames "
                        "change its fixed shapes")


def _is_float(cost: GraphCost) -> bool:
    """Every op computes in fp32 on fp32 weights: nothing for a re-export to carry over."""
    return all(node.precision == FLOAT for node in cost.nodes if node.category != "view")


def _converted(loaded: LoadedSpec, backend: str, manifest: Manifest, directory: Path, allow_import: bool) -> Path:
    """`effconv convert` of the spec to the artifact's backend, with the options the artifact was exported with."""
    extra = manifest.model_extra or {}
    options: dict = {}
    if backend == "onnx":
        options = {"layout": extra.get("layout", {}).get("requested", "auto"),
                   "opset": extra.get("export", {}).get("opset", onnx_backend.DEFAULT_OPSET)}
    elif backend == "coreml":
        options = {"precision": extra.get("export", {}).get("precision", "fp16")}
    stream = extra.get("stream")
    directory = directory / backend
    try:
        written = convert(loaded, backend, directory, allow_import=allow_import,
                          stream=stream["latent_frames_per_call"] if stream else None, **options)
    except VerificationFailed as failed:  # a tolerance missed at this shape does not change what the graph costs
        written = failed.manifest
    return directory / written.artifact


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


def _fixed(shapes) -> tuple[tuple[int, ...], ...]:
    """Input shapes to feed --measure: a dimension the graph leaves open is fed as 1."""
    return tuple(tuple(d if d > 0 else 1 for d in shape) for shape in shapes)


def _manifest_shapes(manifest: Manifest) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(tensor.shape) for tensor in manifest.inputs)


def _as_exported(manifest: Manifest | None) -> str:
    stream = (manifest.model_extra or {}).get("stream") if manifest else None
    if not stream:
        return "artifact as exported"
    return (f"streaming step as exported: one call of {stream['latent_frames_per_call']} latent frames -> "
            f"{stream['video_frames_per_call']} video frames; FPS is the steady state, memory includes the caches")
