"""The convert stage: spec -> model part -> backend artifact + verified manifest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import Manifest, check_out_dir, staged_output, write_manifest
from effconv.backends import registry
from effconv.backends.base import Backend, Progress, no_progress
from effconv.backends.coreml import export as coreml_backend
from effconv.backends.onnx import export as onnx_backend
from effconv.backends.verify import compare
from effconv.convert.layout import LAYOUTS
from effconv.convert.steps import VERIFY_SEED, checked, checked_rewrites, export_onnx, tensor_info, timed_export
from effconv.convert.streaming import convert_streaming
from effconv.errors import EffconvError, exception_text
from effconv.legalize.lint import check_exportable, lint_graph
from effconv.legalize.rewrites import rewrites_for
from effconv.legalize.student_form import exported_module
from effconv.models.loader import LoadedModel, load_model
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.spec import LoadedSpec


def convert_model(model: LoadedModel, backend: str, out_dir: Path, atol: float | None = None,
                  opset: int = onnx_backend.DEFAULT_OPSET, precision: str = "fp16", layout: str = "auto",
                  progress: Progress = no_progress) -> Manifest:
    """Export an already-loaded model part; raise VerificationFailed (after writing) if off tolerance.
    `layout` (ONNX only): conv2d exports Conv3d as Conv2d over time-stacked frames, checked lossless first;
    auto times both for a student and applies convert/layout.py's rule, and keeps Conv3d for a teacher.
    `progress` is told each step as it starts (export, lowering, verification...)."""
    target = registry.get(backend)
    if target.legalized:
        return convert_legalized(model, target, out_dir, atol=atol, precision=precision, progress=progress)
    atol = target.default_atol if atol is None else atol
    name = model.spec.spec.name
    example, reference = _reference(model, progress)
    with staged_output(out_dir) as stage:
        artifact = stage / f"{name}{target.suffix}"
        export_info, extra = export_onnx(
            model.module, example, layout, is_student(model), artifact,
            lambda module, path, told: target.export(module, example, path, model.input_name, model.output_name,
                                                     opset=opset, progress=told),
            progress)
        if "legalize" in extra:
            extra["legalize"]["shape"] = list(example.shape)
        progress(f"verifying in {target.runtime}")
        candidate = _predict_at_opset(target, artifact, example, opset)
        verify = compare(reference, candidate, atol) | _verified_how(f"ran in {target.runtime}")
        manifest = Manifest(
            **_base_manifest(model, backend, artifact, reference.shape, verify),
            export=export_info,
            versions=target.runtime_versions(),
            **extra,
        )
        write_manifest(manifest, stage)
    return checked(manifest, out_dir, atol)


def _reference(model: LoadedModel, progress: Progress) -> tuple[torch.Tensor, np.ndarray]:
    """The seeded example input and PyTorch's output on it, which the artifact must reproduce."""
    progress("running PyTorch for the reference output")
    example = model.example_input(VERIFY_SEED)
    with torch.no_grad():
        return example, model.module(example).numpy()


def _verified_how(method: str) -> dict:
    """The manifest's record of what verification ran on: `method` in words, and the input."""
    return {"method": method, "seed": VERIFY_SEED, "input": "seeded standard normal"}


def _predict_at_opset(target: Backend, artifact: Path, example, opset: int):
    """Run the export; past the default opset torch's exporter can write graphs onnxruntime rejects
    (opsets 26-28 with torch 2.13 / onnxruntime 1.32): that is a bad --opset, not an effconv bug."""
    try:
        return target.predict(artifact, example)
    except Exception as exc:  # onnxruntime's pybind error types share no base class below Exception
        if opset <= onnx_backend.DEFAULT_OPSET:
            raise
        reason = exception_text(exc, 200)
        raise EffconvError(f"onnxruntime cannot load the opset-{opset} export: {reason}",
                           f"use --opset {onnx_backend.DEFAULT_OPSET} (the exporter or onnxruntime does not support opset {opset} here).") from None


def _base_manifest(model: LoadedModel, backend: str, artifact: Path, reference_shape, verify: dict) -> dict:
    return dict(
        name=model.spec.spec.name,
        backend=backend,
        artifact=artifact.name,
        spec=model.spec.resolved(),
        inputs=[tensor_info(model.input_name, model.input_shape)],
        outputs=[tensor_info(model.output_name, reference_shape)],
        params=model.num_params(),
        verify=verify,
        family=model.adapter.family,
        compression=model.compression.as_dict(),
    )


def _verify_without_prediction(model: LoadedModel, example, reference, export_info: dict, legal, precision: str,
                               atol: float, progress: Progress) -> dict:
    """Core ML off macOS: check ranks, output shape and the rewrite, and simulate fp16 in torch."""
    simulated = precision if precision == "fp16" else None
    method = coreml_backend.unrun_method(simulated)
    progress(f"verifying: {method}")
    checks = coreml_backend.static_checks(export_info, reference.shape)
    verify = {"prediction": coreml_backend.NOT_RUN, **checks}
    passed = checks["rank_ok"] and checks["output_shape_ok"] and legal.report()["equivalence"]["passed"]
    if simulated:
        verify["fp16_simulation"] = compare(reference, coreml_backend.simulate_fp16(model.module, example), atol)
        passed = passed and verify["fp16_simulation"]["passed"]
    return verify | {"passed": bool(passed), "atol": atol} | _verified_how(method)


def convert_legalized(model: LoadedModel, target: Backend, out_dir: Path, atol: float | None = None,
                      precision: str = "fp16", progress: Progress = no_progress) -> Manifest:
    """Core ML / TFLite / ExecuTorch: legalize the graph (checked lossless), fail early on ops no unit can run,
    export, verify."""
    backend = target.name
    options = {}
    if backend == coreml_backend.NAME:
        coreml_backend.check_precision(precision)
        options = {"precision": precision}
        atol = coreml_backend.default_atol(precision) if atol is None else atol
    atol = target.default_atol if atol is None else atol
    example, reference = _reference(model, progress)
    progress(f"legalizing for {backend}: rewrites checked lossless, then linted")
    module, form = exported_module(model.module, backend, example, torch.from_numpy(reference))
    legal = checked_rewrites(module, example, rewrites_for(backend))
    lint = lint_graph(legal.module.graph, backend, applied=tuple(legal.counts))
    check_exportable(lint, "after effconv's rewrites")
    name = model.spec.spec.name
    with staged_output(out_dir) as stage:
        artifact = stage / f"{name}{target.suffix}"
        export_info = timed_export(
            lambda module, path, told: target.export(module, example, path, model.input_name, model.output_name,
                                                     progress=told, **options),
            legal.module, artifact, progress)
        run = target.load(artifact, None)
        if run is None:
            verify = _verify_without_prediction(model, example, reference, export_info, legal, precision, atol, progress)
        else:
            progress(f"verifying in {target.runtime}")
            candidate = run(example.numpy())
            verify = compare(reference, candidate, atol) | {"prediction": "run"} | _verified_how(f"ran in {target.runtime}")
        manifest = Manifest(
            **_base_manifest(model, backend, artifact, reference.shape, verify),
            legalize=legal.report() | form | {"shape": list(example.shape)},
            lint={"rules": f"effconv/legalize/rules/{backend}.yaml", "blocking": [],
                  "remaining": [row.as_dict() for row in lint.problems]},
            export=export_info,
            versions=target.runtime_versions(),
        )
        write_manifest(manifest, stage)
    return checked(manifest, out_dir, atol)


def is_student(model: LoadedModel) -> bool:
    return isinstance(model.model, TurboVAEDDecoder)


def convert(loaded: LoadedSpec, backend: str, out_dir: Path, atol: float | None = None,
            opset: int = onnx_backend.DEFAULT_OPSET, allow_import: bool = False, precision: str = "fp16",
            layout: str = "auto", stream: int | None = None, progress: Progress = no_progress) -> Manifest:
    """`stream` K: a streaming artifact that decodes K latent frames per call (convert/streaming.py).
    `progress` is told each step as it starts, in words (the CLI shows it; the library stays silent without it)."""
    registry.get(backend)
    if atol is not None and not 0 <= atol < math.inf:
        raise EffconvError(f"--atol must be a finite number >= 0, got {atol}.", "pass e.g. --atol 1e-3.")
    if backend == onnx_backend.NAME:
        onnx_backend.check_opset(opset)
    if backend == coreml_backend.NAME:
        coreml_backend.check_precision(precision)
    if layout not in LAYOUTS:
        raise EffconvError(f"unknown --layout '{layout}'.", f"use one of: {', '.join(LAYOUTS)}.")
    if layout != "auto" and backend != onnx_backend.NAME:
        raise EffconvError(f"--layout applies to ONNX exports only; {backend} exports pick their own rewrites.",
                           "drop --layout, or use --to onnx.")
    check_out_dir(out_dir)
    progress("loading the model")
    model = load_model(loaded, allow_import=allow_import)
    if stream is not None:
        options = ({"opset": opset} if backend == onnx_backend.NAME else
                   {"precision": precision} if backend == coreml_backend.NAME else {})
        return convert_streaming(model, backend, out_dir, stream, atol=atol, layout=layout, progress=progress, **options)
    return convert_model(model, backend, out_dir, atol=atol, opset=opset, precision=precision, layout=layout,
                         progress=progress)
