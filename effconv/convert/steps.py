"""Steps both convert paths take, the whole-clip export (stage.py) and the streaming one (streaming.py): the
checked rewrites, the timed export, the ONNX layout, the manifest's tensors and the final pass/fail."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from effconv.artifacts import Manifest, TensorInfo
from effconv.backends.base import Progress, no_progress
from effconv.convert.layout import CONV2D_REWRITES, candidates, ruled, timed_choice
from effconv.errors import VerificationFailed
from effconv.legalize.rewrites import as_args, legalize, resolve

VERIFY_SEED = 0


def tensor_info(name: str, shape, dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name=name, shape=[int(d) for d in shape], dtype=dtype)


def checked_rewrites(module, example, rewrites):
    """The module after `rewrites`, or VerificationFailed when they changed its output on `example`."""
    legal = legalize(module, example, rewrites)
    if not legal.report()["equivalence"]["passed"]:
        raise VerificationFailed(
            f"effconv's rewrites changed the output (max abs error {legal.max_abs_err:.3g}).",
            "report this as an effconv bug; export without them meanwhile.",
        )
    return legal


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


Export = Callable[[torch.nn.Module, Path, Progress], dict]  # (module, path, progress) -> the backend's export info


def timed_export(export: Export, module, path: Path, progress: Progress = no_progress) -> dict:
    """`export(module, path, progress)`'s info with the seconds it took."""
    started = time.perf_counter()
    return export(module, path, progress) | {"seconds": round(time.perf_counter() - started, 2)}


def _in_layout(layout: str, module, example, progress: Progress) -> tuple[torch.nn.Module, dict]:
    if layout == "conv3d":
        return module, {}
    progress("rewriting Conv3d as Conv2d, checked lossless")
    legal = checked_rewrites(module, example, resolve(list(CONV2D_REWRITES)))
    return legal.module, {"legalize": legal.report()}


def _progress_in(layout: str, progress: Progress) -> Progress:
    return lambda message: progress(f"{layout} layout: {message}")


def export_onnx(module, example, requested: str, student: bool, artifact: Path,
                export: Export, progress: Progress = no_progress) -> tuple[dict, dict]:
    """Export `module` to `artifact` in the ONNX layout asked for (auto: a student's two layouts timed and chosen by
    convert/layout.py's rule, Conv3d for a teacher); return the export info and the manifest's sections (layout, and
    legalize when rewritten). The layout not chosen is exported into a temporary folder inside the staging folder and
    removed with it."""
    layouts = candidates(requested, student)
    exported = {}
    with tempfile.TemporaryDirectory(dir=artifact.parent) as trials:
        for layout in layouts:
            path = artifact if len(layouts) == 1 else Path(trials) / layout / artifact.name
            path.parent.mkdir(exist_ok=True)
            in_layout = _progress_in(layout, progress)
            laid_out, sections = _in_layout(layout, module, example, in_layout)
            exported[layout] = (path, timed_export(export, laid_out, path, in_layout), sections)
        if len(layouts) == 1:
            _, info, sections = exported[layouts[0]]
            return info, sections | {"layout": ruled(requested, layouts[0])}
        progress(f"timing the {' and '.join(layouts)} layouts in onnxruntime")
        section = timed_choice({layout: path for layout, (path, _, _) in exported.items()},
                               tuple(tensor.numpy() for tensor in as_args(example)))
        path, info, sections = exported[section["chosen"]]
        for item in path.parent.iterdir():  # the model and its external weights, if any
            os.replace(item, artifact.parent / item.name)
    return info, sections | {"layout": section}
