"""The convert stage: spec -> model part -> backend artifact + verified manifest."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from effconv.artifacts import Manifest, TensorInfo, staged_output, write_manifest
from effconv.backends import registry
from effconv.backends.base import Backend
from effconv.backends.coreml import export as coreml_backend
from effconv.backends.onnx import export as onnx_backend
from effconv.backends.verify import compare
from effconv.convert.layout import CONV2D_REWRITES, LAYOUTS, candidates, fastest, ruled
from effconv.errors import EffconvError, VerificationFailed, exception_text
from effconv.legalize.lint import check_exportable, lint_graph
from effconv.legalize.rewrites import as_args, legalize, resolve, rewrites_for
from effconv.legalize.student_form import exported_module
from effconv.models.loader import LoadedModel, load_model
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.spec import LoadedSpec

VERIFY_SEED = 0


def tensor_info(name: str, shape, dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name=name, shape=[int(d) for d in shape], dtype=dtype)


def convert_model(model: LoadedModel, backend: str, out_dir: Path, atol: float | None = None,
                  opset: int = onnx_backend.DEFAULT_OPSET, precision: str = "fp16", layout: str = "auto") -> Manifest:
    """Export an already-loaded model part; raise VerificationFailed (after writing) if off tolerance.
    `layout` (ONNX only): conv2d exports Conv3d as Conv2d over time-stacked frames, checked lossless first;
    auto times both for a student and keeps Conv3d for a teacher (convert/layout.py)."""
    target = registry.get(backend)
    if target.legalized:
        return convert_legalized(model, target, out_dir, atol=atol, precision=precision)
    atol = target.default_atol if atol is None else atol
    name = model.spec.spec.name
    example = model.example_input(VERIFY_SEED)
    with torch.no_grad():
        reference = model.module(example).numpy()
    with staged_output(out_dir) as stage:
        artifact = stage / f"{name}{target.suffix}"
        export_info, extra = export_onnx(
            model.module, example, layout, is_student(model), artifact,
            lambda module, path: target.export(module, example, path, model.input_name, model.output_name, opset=opset))
        if "legalize" in extra:
            extra["legalize"]["shape"] = list(example.shape)
        candidate = _predict_at_opset(target, artifact, example, opset)
        verify = compare(reference, candidate, atol) | {"seed": VERIFY_SEED, "input": "seeded standard normal"}
        manifest = Manifest(
            **_base_manifest(model, backend, artifact, reference.shape, verify),
            export=export_info,
            versions=target.runtime_versions(),
            **extra,
        )
        write_manifest(manifest, stage)
    return checked(manifest, out_dir, atol)


def checked_rewrites(module, example, rewrites):
    """The module after `rewrites`, or VerificationFailed when they changed its output on `example`."""
    legal = legalize(module, example, rewrites)
    if not legal.report()["equivalence"]["passed"]:
        raise VerificationFailed(
            f"effconv's rewrites changed the output (max abs error {legal.max_abs_err:.3g}).",
            "report this as an effconv bug; export without them meanwhile.",
        )
    return legal


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
                               atol: float) -> dict:
    """Core ML off macOS: check ranks, output shape and the rewrite, and simulate fp16 in torch."""
    checks = coreml_backend.static_checks(export_info, reference.shape)
    verify = {"prediction": coreml_backend.NOT_RUN, **checks}
    passed = checks["rank_ok"] and checks["output_shape_ok"] and legal.report()["equivalence"]["passed"]
    if precision == "fp16":
        verify["fp16_simulation"] = compare(reference, coreml_backend.simulate_fp16(model.module, example), atol)
        passed = passed and verify["fp16_simulation"]["passed"]
    return verify | {"passed": bool(passed), "atol": atol}


def convert_legalized(model: LoadedModel, target: Backend, out_dir: Path, atol: float | None = None,
                      precision: str = "fp16") -> Manifest:
    """Core ML / TFLite: legalize the graph (checked lossless), fail early on ops no unit can run, export, verify."""
    backend = target.name
    options = {}
    if backend == coreml_backend.NAME:
        coreml_backend.check_precision(precision)
        options = {"precision": precision}
        atol = coreml_backend.default_atol(precision) if atol is None else atol
    atol = target.default_atol if atol is None else atol
    example = model.example_input(VERIFY_SEED)
    with torch.no_grad():
        reference = model.module(example).numpy()
    module, form = exported_module(model.module, backend, example, torch.from_numpy(reference))
    legal = checked_rewrites(module, example, rewrites_for(backend))
    lint = lint_graph(legal.module.graph, backend, applied=tuple(legal.counts))
    check_exportable(lint, "after effconv's rewrites")
    name = model.spec.spec.name
    with staged_output(out_dir) as stage:
        artifact = stage / f"{name}{target.suffix}"
        export_info = timed_export(
            lambda module, path: target.export(module, example, path, model.input_name, model.output_name, **options),
            legal.module, artifact)
        candidate = target.predict(artifact, example)
        if candidate is None:
            verify = _verify_without_prediction(model, example, reference, export_info, legal, precision, atol)
        else:
            verify = compare(reference, candidate, atol) | {"prediction": "run"}
        verify |= {"seed": VERIFY_SEED, "input": "seeded standard normal"}
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


def checked(manifest: Manifest, out_dir: Path, atol: float) -> Manifest:
    """Return the written manifest, or raise VerificationFailed (exit 1) when it failed its tolerance."""
    verify = manifest.verify
    if verify["passed"]:
        return manifest
    detail = verify.get("reason") or (
        f"max abs error {verify['max_abs_err']:.3g} > atol {atol:g}" if "max_abs_err" in verify
        else "a static check failed (see verify in the manifest)"
    )
    raise VerificationFailed(
        f"{manifest.backend} output does not match PyTorch: {detail}.",
        f"inspect {Path(out_dir) / (manifest.name + '.json')}; raise --atol only if that error is acceptable.",
        manifest=manifest,
    )


def timed_export(export: Callable[[torch.nn.Module, Path], dict], module, path: Path) -> dict:
    """`export(module, path)`'s info with the seconds it took."""
    started = time.perf_counter()
    return export(module, path) | {"seconds": round(time.perf_counter() - started, 2)}


def is_student(model: LoadedModel) -> bool:
    return isinstance(model.model, TurboVAEDDecoder)


def _in_layout(layout: str, module, example) -> tuple[torch.nn.Module, dict]:
    if layout == "conv3d":
        return module, {}
    legal = checked_rewrites(module, example, resolve(list(CONV2D_REWRITES)))
    return legal.module, {"legalize": legal.report()}


def export_onnx(module, example, requested: str, student: bool, artifact: Path,
                export: Callable[[torch.nn.Module, Path], dict]) -> tuple[dict, dict]:
    """Export `module` to `artifact` in the ONNX layout asked for (auto: both timed for a student, Conv3d for a
    teacher); return the export info and the manifest's sections (layout, and legalize when rewritten). The layout
    not chosen is exported into a temporary folder inside the staging folder and removed with it."""
    layouts = candidates(requested, student)
    exported = {}
    with tempfile.TemporaryDirectory(dir=artifact.parent) as trials:
        for layout in layouts:
            path = artifact if len(layouts) == 1 else Path(trials) / layout / artifact.name
            path.parent.mkdir(exist_ok=True)
            laid_out, sections = _in_layout(layout, module, example)
            exported[layout] = (path, timed_export(export, laid_out, path), sections)
        if len(layouts) == 1:
            _, info, sections = exported[layouts[0]]
            return info, sections | {"layout": ruled(requested, layouts[0])}
        section = fastest({layout: path for layout, (path, _, _) in exported.items()},
                          tuple(tensor.numpy() for tensor in as_args(example)))
        path, info, sections = exported[section["chosen"]]
        for item in path.parent.iterdir():  # the model and its external weights, if any
            os.replace(item, artifact.parent / item.name)
    return info, sections | {"layout": section}


def convert(loaded: LoadedSpec, backend: str, out_dir: Path, atol: float | None = None,
            opset: int = onnx_backend.DEFAULT_OPSET, allow_import: bool = False, precision: str = "fp16",
            layout: str = "auto", stream: int | None = None) -> Manifest:
    """`stream` K: a streaming artifact that decodes K latent frames per call (convert/streaming.py)."""
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
    model = load_model(loaded, allow_import=allow_import)
    if stream is not None:
        from effconv.convert.streaming import convert_streaming

        options = ({"opset": opset} if backend == onnx_backend.NAME else
                   {"precision": precision} if backend == coreml_backend.NAME else {})
        return convert_streaming(model, backend, out_dir, stream, atol=atol, layout=layout, **options)
    return convert_model(model, backend, out_dir, atol=atol, opset=opset, precision=precision, layout=layout)
