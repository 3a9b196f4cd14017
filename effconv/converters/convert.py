"""The convert stage: spec -> model part -> backend artifact + verified manifest."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from effconv.artifacts import Manifest, TensorInfo, staged_output, write_manifest
from effconv.converters import onnx as onnx_backend
from effconv.converters.verify import compare
from effconv.errors import EffconvError, VerificationFailed
from effconv.models.loader import LoadedModel, load_model
from effconv.spec import LoadedSpec

BACKENDS = {onnx_backend.NAME: onnx_backend}
VERIFY_SEED = 0


def backend_module(name: str):
    try:
        return BACKENDS[name]
    except KeyError:
        raise EffconvError(f"unknown backend '{name}'.", f"use one of: {', '.join(sorted(BACKENDS))}.") from None


def _tensor_info(name: str, shape, dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name=name, shape=[int(d) for d in shape], dtype=dtype)


def convert_model(model: LoadedModel, backend: str, out_dir: Path, atol: float | None = None,
                  opset: int = onnx_backend.DEFAULT_OPSET) -> Manifest:
    """Export an already-loaded model part; raise VerificationFailed (after writing) if off tolerance."""
    target = backend_module(backend)
    atol = target.DEFAULT_ATOL if atol is None else atol
    name = model.spec.spec.name
    example = model.example_input(VERIFY_SEED)
    with torch.no_grad():
        reference = model.module(example).numpy()
    with staged_output(out_dir) as stage:
        artifact = stage / f"{name}{target.SUFFIX}"
        started = time.perf_counter()
        export_info = target.export(model.module, example, artifact, model.input_name, model.output_name, opset=opset)
        export_seconds = time.perf_counter() - started
        candidate = target.predict(artifact, example)
        verify = compare(reference, candidate, atol) | {"seed": VERIFY_SEED, "input": "seeded standard normal"}
        manifest = Manifest(
            name=name,
            backend=backend,
            artifact=artifact.name,
            spec=model.spec.resolved(),
            inputs=[_tensor_info(model.input_name, model.input_shape)],
            outputs=[_tensor_info(model.output_name, reference.shape)],
            params=model.num_params(),
            verify=verify,
            family=model.adapter.family,
            compression={
                "latent_channels": model.compression.latent_channels,
                "temporal": model.compression.temporal,
                "spatial": model.compression.spatial,
                "causal": model.compression.causal,
            },
            export={**export_info, "seconds": round(export_seconds, 2)},
            versions=target.runtime_versions(),
        )
        write_manifest(manifest, stage)
    if not verify["passed"]:
        detail = verify.get("reason") or f"max abs error {verify['max_abs_err']:.3g} > atol {atol:g}"
        raise VerificationFailed(
            f"{backend} output does not match PyTorch: {detail}.",
            f"inspect {Path(out_dir) / (name + '.json')}; raise --atol only if that error is acceptable.",
            manifest=manifest,
        )
    return manifest


def convert(loaded: LoadedSpec, backend: str, out_dir: Path, atol: float | None = None,
            opset: int = onnx_backend.DEFAULT_OPSET, allow_import: bool = False) -> Manifest:
    backend_module(backend)
    onnx_backend.check_opset(opset)
    model = load_model(loaded, allow_import=allow_import)
    return convert_model(model, backend, out_dir, atol=atol, opset=opset)
