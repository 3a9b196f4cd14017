"""Fit the host-cpu latency model per runtime (`effconv calibrate`; not to be confused with quantization calibration
data, `effconv.quantize.calibration`): convert a set of decoders to each runtime's artifact (fp32 and int8), measure
them in their own runtime, fit each runtime's host-cpu unit on some of them, and report the estimator's error on the
others.

The set: teacher decoders of the six families (random init, tiny and small widths, three clip sizes) and real
Turbo-VAED students (`TurboVAEDDecoder`, made by `effconv rewrite` from those teachers) of two widths, each converted
as a user would (`convert`, then static int8 calibrated on random latents, as `quantize --calib random` makes it).
Half are fitted, half held out: every family is in both sets.

Fit, per runtime (onnxruntime -> unit `cpu`, LiteRT -> unit `xnnpack`):
1. a prior for the per-op-category efficiencies: for onnxruntime, per-node kernel times from its profiler (fused
   kernels mapped back to the node they absorbed): efficiency = roofline ms / measured ms of each category, net of
   the per-node overhead (the median time of reshape-like nodes), with the width below which convs and matmuls lose
   efficiency (`narrow_channels`) picked from a grid; LiteRT has no per-op times under XNNPACK, so its prior is
   onnxruntime's fit;
2. the models' wall-clock medians: non-negative least squares of their relative error in the inverse
   efficiencies, a per-node overhead and a per-run overhead, pulled towards the prior (ridge rows) so that
   categories few models exercise keep the prior;
   int8 nodes get efficiencies of their own (of the int8 peak, nominally twice fp32's) and int8 convolutions a cost
   per output position, fitted the same way on the int8 models; their prior is onnxruntime's int8 kernel times
   where there are some, else the fp32 efficiency (and no cost per position).
Medians throughout, because the machine may be shared and noisy.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from effconv.artifacts import manifest_path, read_manifest, staged_output
from effconv.backends import registry
from effconv.backends.base import CalibrationSet, QuantizeOptions
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.host import default_threads
from effconv.profile.cost import CATEGORIES, CONV_3D_KEYS, GraphCost
from effconv.profile.devices import (HOST, HOST_UNIT_BACKENDS, DeviceProfile, cost_model_version, host_key, load_device,
                                     write_cache_entry)
from effconv.profile.estimate import NARROW_CATEGORIES, POSITION_CATEGORIES, estimate_cost, int8_keys, op_ms, output_positions
from effconv.profile.inputs import OWN_GRAPH
from effconv.profile.measure import measure_kernels, measure_walls
from effconv.profile.onnx_cost import load_graph
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec

BACKEND_UNITS = {backend: unit for unit, backend in HOST_UNIT_BACKENDS.items()}  # the runtimes calibrate fits
ZERO4, ZERO8 = [0.0] * 4, [0.0] * 8
# Tiny random-init decoder configs of each family (the same as examples/specs/*-tiny.yaml), with the clip (frames,
# height, width in pixels) they are measured at; `scale` widens the channel lists for the "small" variants.
TEACHERS = {
    "hunyuan": ("AutoencoderKLHunyuanVideo", {"latent_channels": 4, "block_out_channels": [8, 8, 16, 16],
                "layers_per_block": 1, "norm_num_groups": 4, "mid_block_add_attention": True}, (9, 32, 48)),
    "cogvideox": ("AutoencoderKLCogVideoX", {"block_out_channels": [8, 8, 16, 16], "latent_channels": 4,
                  "layers_per_block": 1, "norm_num_groups": 4}, (9, 32, 48)),
    "ltx": ("AutoencoderKLLTXVideo", {"latent_channels": 8, "block_out_channels": [8, 8, 8, 8],
            "decoder_block_out_channels": [8, 8, 8, 8], "layers_per_block": [1, 1, 1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1, 1, 1], "spatio_temporal_scaling": [True, True, False, False],
            "decoder_spatio_temporal_scaling": [True, True, False, False],
            "decoder_inject_noise": [False] * 5, "upsample_residual": [False] * 4, "upsample_factor": [1] * 4,
            "patch_size": 1, "patch_size_t": 1}, (9, 32, 48)),
    "mochi": ("AutoencoderKLMochi", {"latent_channels": 4, "encoder_block_out_channels": [32, 32, 32, 32],
              "decoder_block_out_channels": [32, 32, 32, 32], "layers_per_block": [1, 1, 1, 1, 1],
              "add_attention_block": [False] * 5}, (13, 32, 48)),
    "wan21": ("AutoencoderKLWan", {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True, True], "latents_mean": ZERO4, "latents_std": [1.0] * 4}, (9, 32, 48)),
    "wan22": ("AutoencoderKLWan", {"base_dim": 8, "decoder_base_dim": 8, "z_dim": 8, "dim_mult": [1, 2, 2, 2],
              "num_res_blocks": 1, "temperal_downsample": [False, True, True], "is_residual": True, "patch_size": 2,
              "in_channels": 12, "out_channels": 12, "scale_factor_spatial": 16, "latents_mean": ZERO8,
              "latents_std": [1.0] * 8}, (9, 32, 64)),
}
WIDTH_KEYS = ("block_out_channels", "decoder_block_out_channels", "encoder_block_out_channels", "base_dim", "decoder_base_dim")
STUDENT_FAMILIES = ("hunyuan", "cogvideox", "ltx", "mochi", "wan21")
STUDENT_WIDTHS = (32, 64)
STUDENT_SIZE = (64, 96)  # students decode the family's clip length at this height and width
MIN_EFFICIENCY, MAX_EFFICIENCY = 0.005, 5.0
NARROW_GRID = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
PRIOR_WEIGHT = 0.05  # ridge rows: how strongly a category's efficiency stays at its prior (1 = as much as one model)
INT8_PREFIX = "int8 "
POSITION_PREFIX = "int8 positions "  # a wall-fit column: an int8 key's output positions, coefficient ns per position


@dataclass(frozen=True)
class CalibrationModel:
    name: str
    held_out: bool
    write_spec: Callable[[Path], Path]  # folder -> the model's spec YAML, written into it


def _teacher_data(family: str, scale: int, clip: tuple[int, int, int]) -> dict:
    class_name, config, _ = TEACHERS[family]
    config = copy.deepcopy(config)
    for key in WIDTH_KEYS:
        if isinstance(config.get(key), list):
            config[key] = [c * scale for c in config[key]]
        elif key in config:
            config[key] *= scale
    frames, height, width = clip
    return {"name": f"{family}-x{scale}", "model": {"diffusers": class_name, "config": config}, "part": "decoder",
            "input": {"frames": frames, "height": height, "width": width}}


def teacher_writer(family: str, scale: int, clip: tuple[int, int, int]) -> Callable[[Path], Path]:
    """The family's tiny teacher (`TEACHERS`) with its widths times `scale`, decoding `clip` (frames, height, width)."""
    def write(directory: Path) -> Path:
        path = directory / f"{family}-x{scale}.yaml"
        path.write_text(yaml.safe_dump(_teacher_data(family, scale, clip)), encoding="utf-8")
        return path

    return write


def student_writer(family: str, width: int, size: tuple[int, int] = STUDENT_SIZE) -> Callable[[Path], Path]:
    """A Turbo-VAED student of the family's tiny teacher (the paper's layout: separable mid and first up block),
    decoding the family's clip length at `size` (height, width)."""
    def write(directory: Path) -> Path:
        teacher = teacher_writer(family, 1, (TEACHERS[family][2][0], *size))(directory)
        recipe = directory / f"student-w{width}.yaml"
        recipe.write_text(yaml.safe_dump({"name": f"student-w{width}", "description": "calibration student", "student": {
            "widths": [width, width, width // 2, 16, 8], "layers": [2, 1, 1, 1, 1],
            "separable": [True, True, False, False, False], "upsample": [False, True, True, True], "kernel_size": 5}}),
            encoding="utf-8")
        manifest = rewrite(load_spec(teacher), recipe, directory / "student")
        return directory / "student" / f"{manifest.name}.yaml"

    return write


def calibration_set() -> list[CalibrationModel]:
    """28 decoders: 18 teachers (six families at three sizes: tiny widths at 32x48 and at 48x80, doubled widths at
    64x96) and 10 students (five families, two widths); each family has models in the fit set and held out, alternating
    which size, so the held-out models span the fitted range. The narrow teachers at two clip sizes separate costs
    that grow with activation size (per output position, memory) from those that grow with channels."""
    models = []
    for index, (family, (_, _, clip)) in enumerate(TEACHERS.items()):
        models.append(CalibrationModel(f"{family}-tiny", index % 2 == 1, teacher_writer(family, 1, clip)))
        models.append(CalibrationModel(f"{family}-small", index % 2 == 0, teacher_writer(family, 2, (clip[0], 64, 96))))
        models.append(CalibrationModel(f"{family}-tiny-48x80", index % 2 == 0, teacher_writer(family, 1, (clip[0], 48, 80))))
    for index, family in enumerate(STUDENT_FAMILIES):
        for width in STUDENT_WIDTHS:
            held_out = (index + (width == STUDENT_WIDTHS[1])) % 2 == 1
            models.append(CalibrationModel(f"{family}-student-w{width}", held_out, student_writer(family, width)))
    return models


def _int8(artifact: Path, backend: str, out_path: Path) -> Path:
    """The artifact in static int8 (every node kind int8, no speed search), calibrated on seeded random latents, as
    `effconv quantize --calib random` makes it, without its gate and manifest."""
    manifest = read_manifest(manifest_path(artifact))
    calib, held_out = CalibrationSet.random(tuple(manifest.inputs[0].shape), 3, seed=0).split(1)
    registry.get(backend).quantize(artifact, manifest, calib, held_out, out_path, QuantizeOptions(select_by_speed=False))
    return out_path


def _artifacts(entry: CalibrationModel, directory: Path, backends: tuple[str, ...], int8: bool,
               progress) -> list[tuple[str, str, Path, tuple]]:
    """(backend, dtype, artifact, input shapes) of one model, converted (and quantized) as a user would."""
    loaded = load_spec(entry.write_spec(directory))
    made = []
    for backend in backends:
        manifest = convert(loaded, backend, directory / backend)
        artifact, shapes = directory / backend / manifest.artifact, (tuple(manifest.inputs[0].shape),)
        made.append((backend, "fp32", artifact, shapes))
        if int8:
            try:
                made.append((backend, "int8", _int8(artifact, backend, directory / f"int8-{manifest.artifact}"), shapes))
            except EffconvError as exc:  # a quantizer that cannot quantize one model leaves that model's int8 out
                progress(f"{entry.name}: no {backend} int8 artifact ({exc.message})")
    return made


def measure_set(models: list[CalibrationModel], threads: int, repeats: int, backends: tuple[str, ...] = tuple(BACKEND_UNITS),
                int8: bool = True, progress=print, keep: Path | None = None) -> list[dict]:
    """Convert every model to each backend's artifact, then measure them all: onnxruntime fp32 models' per-node
    kernel times (interleaved profiled rounds), every artifact's wall clock in interleaved rounds. With `keep`, the
    artifacts stay in that folder and each record keeps its `path` (to cost them again after a cost-model change)."""
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory()) as tmp:
        records = []
        for entry in models:
            started = time.perf_counter()
            directory = Path(tmp) / entry.name
            directory.mkdir()
            for backend, dtype, path, shapes in _artifacts(entry, directory, backends, int8, progress):
                records.append({"name": entry.name, "held_out": entry.held_out, "backend": backend, "dtype": dtype,
                                "path": path, "cost": OWN_GRAPH[backend][1](path), "shapes": shapes})
            progress(f"converted {entry.name} ({time.perf_counter() - started:.0f} s)")
        profiled = [r for r in records if r["backend"] == "onnx"]
        progress(f"measuring {len(records)} artifacts in {repeats} interleaved rounds...")
        nodes = [{node.name for node in load_graph(r["path"]).graph.node} for r in profiled]
        for record, kernels in zip(profiled, measure_kernels([r["path"] for r in profiled], nodes, threads, repeats)):
            record["kernels"] = kernels
        for record, wall in zip(records, measure_walls([r["path"] for r in records], [r["shapes"] for r in records], threads,
                                                      repeats=repeats)):
            record["wall"] = wall
            progress(f"measured {_label(record)}: {wall['median_ms']:.1f} ms median")
    if keep is None:
        for record in records:
            del record["path"]
    return records


def _label(record: dict) -> str:
    return f"{record['name']} {record['backend']} {record['dtype']}"


def with_fit(device: DeviceProfile, fitted: dict) -> DeviceProfile:
    """The device (narrowed to one runtime's unit) with a fit applied to that unit."""
    (name, unit), = device.units.items()
    unit = unit.model_copy(update={"efficiency": fitted["efficiency"], "int8_efficiency": fitted.get("int8_efficiency", {}),
                                   "op_overhead_us": fitted["op_overhead_us"], "narrow_channels": fitted["narrow_channels"],
                                   "int8_position_ns": fitted.get("int8_position_ns", {})})
    return device.model_copy(update={"units": {name: unit}, "run_overhead_ms": fitted["run_overhead_ms"]})


def _bare(device: DeviceProfile, narrow: float) -> DeviceProfile:
    return with_fit(device, {"efficiency": {}, "op_overhead_us": 0.0, "narrow_channels": narrow, "run_overhead_ms": 0.0})


def _node_pairs(records: list[dict], device: DeviceProfile, narrow: float) -> list[tuple[str, float, float]]:
    """(category, roofline ms at efficiency 1, measured ms) for every profiled, non-view node."""
    trial = _bare(device, narrow)
    (unit,) = trial.units.values()
    pairs = []
    for record in records:
        for node in record["cost"].nodes:
            measured = record["kernels"]["node_ms"].get(node.name)
            if node.category != "view" and measured is not None:
                pairs.append((node.category, op_ms(node, unit, "fp32", trial)[2], measured))
    return pairs


def _fit_efficiencies(pairs, overhead_ms: float) -> dict[str, float]:
    """Per category: total roofline ms / total measured ms net of the per-node overhead (time-weighted,
    so the efficiency reproduces the category's share of the latency)."""
    efficiency = {}
    for category in CATEGORIES:
        roofline = sum(r for c, r, _ in pairs if c == category)
        measured = sum(max(0.0, m - overhead_ms) for c, _, m in pairs if c == category)
        if roofline > 0 and measured > 0:
            efficiency[category] = _clamped(roofline / measured)
    return efficiency


def _clamped(efficiency: float) -> float:
    return min(MAX_EFFICIENCY, max(MIN_EFFICIENCY, efficiency))


def _narrow_error(pairs, efficiency: dict[str, float], overhead_ms: float) -> float:
    """Time-weighted squared log error of conv/matmul nodes: how well a narrow-layer width explains them."""
    total = weight = 0.0
    for category, roofline, measured in pairs:
        if category in NARROW_CATEGORIES and roofline > 0 and measured > 0:
            predicted = roofline / efficiency[category] + overhead_ms
            total += measured * math.log(predicted / measured) ** 2
            weight += measured
    return total / max(weight, 1e-12)


def _int8_kernel_fit(records: list[dict], device: DeviceProfile, narrow: float, overhead_ms: float) -> dict:
    """Per int8 key: the efficiency and (convs) the cost per output position that best explain its nodes' kernel
    times (least squares of the relative error, both non-negative)."""
    from scipy.optimize import lsq_linear

    trial = _bare(device, narrow)
    (unit,) = trial.units.values()
    nodes: dict[str, list[tuple[float, float, float]]] = {}
    for record in records:
        for node in record["cost"].nodes:
            measured = record["kernels"]["node_ms"].get(node.name)
            if node.dtype == "int8" and node.category != "view" and measured:
                positions = output_positions(node) / 1e6 if node.category in POSITION_CATEGORIES else 0.0
                nodes.setdefault(int8_keys(node)[0], []).append(
                    (op_ms(node, unit, "int8", trial)[2], positions, max(measured - overhead_ms, 1e-6)))
    fitted = {"int8_efficiency": {}, "int8_position_ns": {}}
    for key, rows in nodes.items():
        a = np.array([row[:2] for row in rows]) / np.array([row[2] for row in rows])[:, None]
        columns = 2 if a[:, 1].any() else 1  # a key whose nodes have no positions fits its efficiency alone
        solution = lsq_linear(a[:, :columns], np.ones(len(rows)), bounds=([1 / MAX_EFFICIENCY, 0.0][:columns],
                                                                          [1 / MIN_EFFICIENCY, np.inf][:columns])).x
        fitted["int8_efficiency"][key] = _clamped(1 / solution[0])
        if columns == 2:
            fitted["int8_position_ns"][key] = float(solution[1])
    return fitted


def kernel_fit(records: list[dict], device: DeviceProfile) -> dict:
    """onnxruntime's per-node fit (the prior of its wall fit). The per-node overhead is the median time of view nodes
    (pure dispatch); the narrow-layer width is the one that best explains the fp32 conv/matmul node times; the int8
    models' nodes give int8 efficiencies and costs per output position (`_int8_kernel_fit`)."""
    fp32 = [r for r in records if r["dtype"] == "fp32"]
    view_times = [r["kernels"]["node_ms"][n.name] for r in fp32 for n in r["cost"].nodes
                  if n.category == "view" and n.name in r["kernels"]["node_ms"]]
    overhead_ms = statistics.median(view_times) if view_times else 0.0
    best = None
    for narrow in NARROW_GRID:
        pairs = _node_pairs(fp32, device, narrow)
        efficiency = _fit_efficiencies(pairs, overhead_ms)
        error = _narrow_error(pairs, efficiency, overhead_ms)
        if best is None or error < best[0]:
            best = (error, {"efficiency": efficiency, "op_overhead_us": overhead_ms * 1000, "narrow_channels": narrow,
                            "run_overhead_ms": 0.0})
    fitted = best[1]
    return fitted | _int8_kernel_fit([r for r in records if r["dtype"] == "int8"], device, fitted["narrow_channels"],
                                     overhead_ms)


def _terms(cost: GraphCost, device: DeviceProfile, narrow: float) -> tuple[dict[str, float], int]:
    """A graph's roofline ms at efficiency 1 per category, int8 nodes apart ("int8 conv"), the output positions of its
    int8 convolutions in millions per key ("int8 positions conv": ms per ns of fixed cost per position), and its
    node count."""
    terms: dict[str, float] = {}
    estimate = estimate_cost(cost, _bare(device, narrow))
    for op in estimate.ops:
        if op.node.category == "view":
            continue
        key = f"{INT8_PREFIX}{int8_keys(op.node)[0]}" if op.dtype == "int8" else op.node.category
        terms[key] = terms.get(key, 0.0) + op.ms
        if op.dtype == "int8" and op.node.category in POSITION_CATEGORIES:
            key = f"{POSITION_PREFIX}{int8_keys(op.node)[0]}"
            terms[key] = terms.get(key, 0.0) + output_positions(op.node) / 1e6
    return terms, len(estimate.ops)


def _ridge(keys: list[str], a: np.ndarray, prior: dict) -> tuple[np.ndarray, np.ndarray]:
    """One row per column pulling it to the prior: an inverse efficiency to the prior's (an int8 category's prior: its
    own kernel-fitted one, else its fp32 efficiency, i.e. int8 at twice the fp32 speed), a cost per position to the
    prior's (none: 0), each as strongly as PRIOR_WEIGHT of a typical model's relative error."""
    rows, targets = np.zeros((len(keys), a.shape[1])), np.zeros(len(keys))
    for index, key in enumerate(keys):
        if key.startswith(POSITION_PREFIX):
            scale = PRIOR_WEIGHT * float(np.median(a[a[:, index] > 0, index]))
            rows[index, index] = scale
            targets[index] = scale * prior.get("int8_position_ns", {}).get(key.removeprefix(POSITION_PREFIX), 0.0)
        else:
            category = key.removeprefix(INT8_PREFIX)
            own = prior.get("int8_efficiency", {}).get(category) if key.startswith(INT8_PREFIX) else None
            rows[index, index] = PRIOR_WEIGHT * (own or prior["efficiency"].get(CONV_3D_KEYS.get(category, category), 1.0))
            targets[index] = PRIOR_WEIGHT
    return rows, targets


def wall_fit(records: list[dict], device: DeviceProfile, prior: dict, narrow_grid=NARROW_GRID) -> dict:
    """Inverse efficiencies (fp32 and int8 nodes apart), int8 convolutions' cost per output position, per-node and
    per-run overhead from wall-clock medians: least squares of the relative error within the efficiency bounds
    (costs and overheads non-negative), with a ridge row per column pulling it to the prior (`_ridge`)."""
    from scipy.optimize import lsq_linear

    best = None
    walls = np.array([r["wall"]["median_ms"] for r in records])
    for narrow in narrow_grid:
        terms = [_terms(r["cost"], device, narrow) for r in records]
        keys = sorted({key for t, _ in terms for key in t})
        a = np.array([[t.get(key, 0.0) for key in keys] + [n, 1.0] for t, n in terms]) / walls[:, None]
        ridge, targets = _ridge(keys, a, prior)
        positions = [key.startswith(POSITION_PREFIX) for key in keys]
        lower = [0.0 if p else 1 / MAX_EFFICIENCY for p in positions] + [0.0, 0.0]
        upper = [np.inf if p else 1 / MIN_EFFICIENCY for p in positions] + [np.inf, np.inf]
        solution = lsq_linear(np.vstack([a, ridge]), np.concatenate([np.ones(len(records)), targets]), bounds=(lower, upper)).x
        error = float(np.sum(np.log(np.maximum(a @ solution, 1e-6)) ** 2))
        if best is None or error < best[0]:
            fitted = {key: x if key.startswith(POSITION_PREFIX) else _clamped(1 / x) for key, x in zip(keys, solution)}
            int8 = {c: e for c, e in fitted.items() if c.startswith(INT8_PREFIX) and not c.startswith(POSITION_PREFIX)}
            best = (error, {
                "efficiency": {c: fitted.get(c, e) for c, e in prior["efficiency"].items()} | {
                    c: e for c, e in fitted.items() if not c.startswith(INT8_PREFIX)},
                "int8_efficiency": {c.removeprefix(INT8_PREFIX): e for c, e in int8.items()},
                "int8_position_ns": {c.removeprefix(POSITION_PREFIX): float(ns) for c, ns in fitted.items()
                                     if c.startswith(POSITION_PREFIX)},
                "op_overhead_us": float(solution[-2]) * 1000, "narrow_channels": narrow,
                "run_overhead_ms": float(solution[-1])})
    return best[1]


def fit_runtime(records: list[dict], device: DeviceProfile, prior: dict | None) -> dict:
    """One runtime's fit on its records not held out, refined from `prior` on their walls (with onnxruntime's kernel
    times, `prior` None, its own kernel fit of the fp32 models is the prior)."""
    fitted = [r for r in records if not r["held_out"]]
    fitted_fp32 = [r for r in fitted if r["dtype"] == "fp32"]
    if not fitted_fp32:
        raise EffconvError("no fp32 model to fit on: every calibration model is held out.",
                           "calibrate on the default set (leave out `models`), or mark some models as fitted.")
    if prior is None:
        prior = kernel_fit([r for r in fitted if "kernels" in r], device)
        return wall_fit(fitted, device, prior, (prior["narrow_channels"],))
    return wall_fit(fitted, device, prior)


def _unit_prior(device: DeviceProfile) -> dict:
    """The profile's own (uncalibrated) figures of the device's one unit: the prior when no other runtime was fitted."""
    (unit,) = device.units.values()
    return {"efficiency": unit.efficiency, "op_overhead_us": unit.op_overhead_us, "narrow_channels": unit.narrow_channels,
            "run_overhead_ms": device.run_overhead_ms}


def errors(records: list[dict], device: DeviceProfile) -> list[dict]:
    rows = []
    for r in records:
        predicted = estimate_cost(r["cost"], device).total_ms
        measured = r["wall"]["median_ms"]
        rows.append({"name": r["name"], "held_out": r["held_out"], "backend": r["backend"], "dtype": r["dtype"],
                     "measured_ms": measured, "predicted_ms": predicted, "rel_error": (predicted - measured) / measured})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Median and 90th percentile of |error| (nearest rank); with fewer than 10 rows the p90 is the max, and says so."""
    errors = sorted(abs(row["rel_error"]) for row in rows)
    if not errors:
        return {"n": 0}
    p90_index = min(len(errors) - 1, max(0, math.ceil(0.9 * len(errors)) - 1))
    return {"n": len(errors), "median_abs": statistics.median(errors), "p90_abs": errors[p90_index], "max_abs": errors[-1],
            "p90_is_max": p90_index == len(errors) - 1}


def _sets(rows: list[dict]) -> dict:
    """Held-out and fitted summaries, overall and per dtype."""
    summary = {}
    for label, held in (("held_out", True), ("fitted", False)):
        chosen = [r for r in rows if r["held_out"] == held]
        summary[label] = summarize(chosen)
        for dtype in sorted({r["dtype"] for r in chosen}):
            summary[f"{label}_{dtype}"] = summarize([r for r in chosen if r["dtype"] == dtype])
    return summary


def check_arguments(threads: int | None, repeats: int) -> None:
    if repeats < 1 or (threads is not None and threads < 1):
        raise EffconvError("--repeats and --threads must be at least 1.", "pass positive numbers.")


def check_backends(backends: tuple[str, ...]) -> None:
    unknown = [b for b in backends if b not in BACKEND_UNITS]
    if unknown or not backends:
        raise EffconvError(f"cannot calibrate runtime(s) {', '.join(unknown) or '(none)'}.",
                           f"pass --runtime one or more of: {', '.join(BACKEND_UNITS)}.")


def calibrate_host(threads: int | None = None, repeats: int = 10, remeasure: bool = False, progress=print,
                   backends: tuple[str, ...] = tuple(BACKEND_UNITS), int8: bool = True) -> dict:
    """`effconv calibrate`: check the arguments, (re-)measure the host's peaks if needed, then calibrate().

    threads None = all cores; remeasure re-measures the runtimes' peak GFLOP/s and the bandwidth first.
    """
    check_arguments(threads, repeats)
    check_backends(backends)
    threads = threads or default_threads()
    load_device(HOST, threads=threads, remeasure=remeasure)
    return calibrate(threads, repeats=repeats, progress=progress, backends=backends, int8=int8)


def write_report(result: dict, path: str | Path) -> Path:
    """Write calibrate()'s full result as JSON to path; nothing is left behind if writing fails."""
    path = Path(path)
    with staged_output(path.parent) as stage:
        (stage / path.name).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def calibrate(threads: int, repeats: int = 10, progress=print, models: list[CalibrationModel] | None = None,
              backends: tuple[str, ...] = tuple(BACKEND_UNITS), int8: bool = True) -> dict:
    """Convert, measure, fit each runtime, evaluate before/after on held-out models, and store the fits in the
    host-cpu cache."""
    check_arguments(threads, repeats)
    check_backends(backends)
    records = measure_set(models or calibration_set(), threads, repeats, backends, int8, progress)
    return fit_and_store(records, threads, repeats)


def _validation(runtime: str, held_out: dict, fitted_models: int, threads: int, repeats: int) -> str:
    p90 = "max" if held_out["p90_is_max"] else "p90"
    return (f"{runtime}: calibrated by `effconv calibrate` on {fitted_models} artifacts; held-out error on "
            f"{held_out['n']} artifacts (fp32 and int8): median {held_out['median_abs']:.0%}, {p90} {held_out['p90_abs']:.0%} "
            f"({threads} threads, medians of {repeats} runs).")


def fit_and_store(records: list[dict], threads: int, repeats: int) -> dict:
    """Fit each runtime measured in `records` (onnxruntime first: its kernel fit is LiteRT's prior), store the fits in
    the host-cpu cache, and return the fits with the estimator's error before and after."""
    host = load_device(HOST, threads=threads, calibrated=False)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runtimes, calibration, prior = {}, {}, None
    for backend in sorted({r["backend"] for r in records}, key=list(BACKEND_UNITS).index):
        unit = BACKEND_UNITS[backend]
        chosen = [r for r in records if r["backend"] == backend]
        device = host.for_backend(backend)
        with_kernels = all("kernels" in r for r in chosen if r["dtype"] == "fp32")
        fitted = fit_runtime(chosen, device, None if with_kernels else (prior or _unit_prior(device)))
        prior = prior or fitted
        before, after = errors(chosen, device), errors(chosen, with_fit(device, fitted))
        held_out = summarize([row for row in after if row["held_out"]])
        calibration[unit] = {
            **fitted,
            "model_uncertainty": max(0.1, round(held_out.get("p90_abs", 0.5) + 0.05, 2)),
            "validation": _validation(registry.get(backend).runtime, held_out, sum(not r["held_out"] for r in chosen), threads, repeats),
            "calibrated_at": stamp,
            "threads": threads,
            "produced_by": cost_model_version(),  # a later cost model ignores this fit (devices.host_calibration)
        }
        runtimes[backend] = {"unit": unit, "fit": calibration[unit], "before": {"rows": before, **_sets(before)},
                             "after": {"rows": after, **_sets(after)}}
    write_cache_entry(host_key(threads), "calibration", calibration)
    return {
        "threads": threads,
        "repeats": repeats,
        "runtimes": runtimes,
        "models": [{"name": r["name"], "held_out": r["held_out"], "backend": r["backend"], "dtype": r["dtype"],
                    "gflops": r["cost"].flops / 1e9, "wall": r["wall"]} for r in records],
    }
