"""`effconv convert STUDENT --stream K`: one artifact that decodes K latent frames per call, its temporal cache as
inputs and outputs, verified by running the chunk loop in the artifact's runtime against the whole-clip decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import Manifest, staged_output, write_manifest
from effconv.backends import registry
from effconv.backends.base import Progress, no_progress
from effconv.backends.coreml import export as coreml_backend
from effconv.backends.streaming import stream_chunks
from effconv.backends.verify import compare
from effconv.convert.steps import VERIFY_SEED, checked, checked_rewrites, export_onnx, tensor_info, timed_export
from effconv.errors import EffconvError
from effconv.legalize.lint import check_exportable, lint_graph
from effconv.legalize.rewrites import rewrites_for
from effconv.models.loader import LoadedModel
from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
from effconv.models.turbo_vaed.streaming import StreamingStep, stream_layout

VERIFY_CHUNKS = 3  # the verification clip: three calls, the last one short when K > 1


def check_stream_request(model: LoadedModel, chunk: int) -> None:
    if chunk < 1:
        raise EffconvError(f"--stream must be at least 1 latent frame, got {chunk}.", "pass e.g. --stream 1.")
    if not isinstance(model.model, TurboVAEDDecoder) or model.spec.spec.part != "decoder":
        raise EffconvError(f"--stream exports effconv student decoders; '{model.spec.spec.name}' is a "
                           f"{type(model.model).__name__} {model.spec.spec.part}.",
                           "run `effconv rewrite TEACHER.yaml --out DIR` and convert the student spec it writes.")
    model.model.check_streamable()


def _verification_clip(model: LoadedModel, chunk: int) -> torch.Tensor:
    latent = model.example_input(VERIFY_SEED)
    frames = VERIFY_CHUNKS * chunk - (1 if chunk > 1 else 0)
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    return torch.randn((*latent.shape[:2], frames, *latent.shape[3:]), generator=generator)


def _chunk_runner(target, artifact: Path, step: StreamingStep, video_shape, export_info: dict, precision: str | None):
    """What runs the chunk loop: the artifact in its runtime; for Core ML off macOS, the step in torch with its
    precision simulated (as for whole-clip Core ML exports) plus the program's static checks. Also returns where it
    ran, in words, and the manifest's verify entries for it."""
    run_all = target.load_all(artifact, None)
    if run_all is not None:
        return run_all, f"in {target.runtime}", {"prediction": "run", "method": f"ran in {target.runtime}"}
    checks = coreml_backend.static_checks(export_info, video_shape) | {
        "prediction": coreml_backend.NOT_RUN, "method": coreml_backend.unrun_method(precision)}
    return (coreml_backend.simulated(step, precision),
            f"through the step in torch, {precision} simulated (Core ML predicts only on macOS)", checks)


def convert_streaming(model: LoadedModel, backend: str, out_dir: Path, chunk: int, atol: float | None = None,
                      layout: str = "auto", progress: Progress = no_progress, **export_options) -> Manifest:
    check_stream_request(model, chunk)
    target = registry.get(backend)
    precision = export_options.get("precision")
    atol = (coreml_backend.default_atol(precision) if precision else target.default_atol) if atol is None else atol
    decoder: TurboVAEDDecoder = model.model
    clip = _verification_clip(model, chunk)
    shape = stream_layout(decoder, (*clip.shape[:2], chunk, *clip.shape[3:]))
    step = StreamingStep(decoder).eval()
    example = shape.first_call(clip[:, :, :chunk])
    module, sections = step, {}
    if target.legalized:
        progress(f"legalizing the streaming step for {backend}: rewrites checked lossless, then linted")
        legal = checked_rewrites(step, example, rewrites_for(backend))
        check_exportable(lint_graph(legal.module.graph, backend, applied=tuple(legal.counts)), "after effconv's rewrites")
        module, sections = legal.module, {"legalize": legal.report()}
    progress("running PyTorch for the reference output")
    with torch.no_grad():
        reference = decoder(clip).numpy()
        step_outputs = step(*example)
    name, stream = model.spec.spec.name, shape.as_manifest()
    with staged_output(out_dir) as stage:
        artifact = stage / f"{name}{target.suffix}"

        def export(laid_out, path: Path, told: Progress) -> dict:
            return target.export(laid_out, example, path, shape.input_names, shape.output_names, progress=told,
                                 **export_options)

        if target.legalized:
            export_info = timed_export(export, module, artifact, progress)
        else:
            export_info, sections = export_onnx(step, example, layout, True, artifact, export, progress)
        run_all, where, checks = _chunk_runner(target, artifact, step, step_outputs[0].shape, export_info, precision)
        progress(f"verifying: the chunk loop {where}")
        streamed = np.concatenate(list(stream_chunks(run_all, stream, clip.numpy())), axis=2)
        verify = compare(reference, streamed, atol) | checks | {
            "against": f"whole-clip PyTorch decode of {clip.shape[2]} latent frames, streamed {chunk} per call {where}",
            "seed": VERIFY_SEED}
        verify["passed"] = bool(verify["passed"] and checks.get("rank_ok", True) and checks.get("output_shape_ok", True))
        manifest = Manifest(
            name=name, backend=backend, artifact=artifact.name, spec=model.spec.resolved(),
            inputs=[tensor_info(n, t.shape) for n, t in zip(shape.input_names, example)],
            outputs=[tensor_info(n, t.shape) for n, t in zip(shape.output_names, step_outputs)],
            params=model.num_params(), verify=verify, family=model.adapter.family,
            compression=model.compression.as_dict(), stream=stream, **sections,
            export=export_info, versions=target.runtime_versions(),
        )
        write_manifest(manifest, stage)
    return checked(manifest, out_dir, atol)
