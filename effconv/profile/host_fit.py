"""Fit the host-cpu latency model (`effconv calibrate`; not to be confused with quantization calibration data,
`effconv.quantize.calibration`): measure a set of decoders with onnxruntime, fit per-op-category
efficiencies and overheads on some of them, and report the estimator's error on the others.

The set: teacher decoders of all five families (random init, tiny and small widths, two clip sizes)
and Turbo-VAED-style students (depthwise-separable Conv3d blocks + decoupled pixel shuffle) of four
widths. Half are fitted, half held out: every family is in both sets, at different sizes.

Fit (per-node kernel times from onnxruntime's profiler, fused kernels mapped back to the node they
absorbed): the per-node overhead is the median time of reshape-like nodes; for each op category,
efficiency = median over fitted models of roofline ms / (measured ms - overhead per node); the width
below which convs and matmuls lose efficiency (`narrow_channels`) is picked from a small grid by the
fitted models' error; run overhead is the median of what is left of the wall time. Medians, because
the machine may be shared and noisy.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effconv.artifacts import staged_output
from effconv.backends.onnx import export as onnx_backend
from effconv.errors import EffconvError
from effconv.host import default_threads
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.layers.pixel_shuffle import DecoupledPixelShuffle3d
from effconv.profile.cost import CATEGORIES
from effconv.profile.onnx_cost import graph_cost, load_graph
from effconv.profile.devices import HOST, host_key, load_device, write_cache_entry
from effconv.profile.estimate import NARROW_CATEGORIES, estimate, op_ms
from effconv.profile.measure import measure_many
from effconv.spec import spec_from_dict

ZERO4, ZERO8 = [0.0] * 4, [0.0] * 8
# Tiny random-init decoder configs of each family (the same as examples/specs/*-tiny.yaml), with the
# clip they are measured at; `scale` widens the channel lists for the "small" variants.
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
MIN_EFFICIENCY, MAX_EFFICIENCY = 0.005, 5.0
NARROW_GRID = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)


class _SeparableBlock(nn.Module):
    """Depthwise k^3 + pointwise Conv3d, RMS-normalized, SiLU, residual (the paper's wide-block unit)."""

    def __init__(self, channels: int, kernel: int = 5):
        super().__init__()
        self.depthwise = nn.Conv3d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.pointwise = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        return x + self.pointwise(self.depthwise(nn.functional.silu(h)))


class StudentLikeDecoder(nn.Module):
    """A small Turbo-VAED-shaped decoder used only to calibrate costs of separable convs and pixel
    shuffles (the real student builder lives in effconv.models.turbo_vaed)."""

    def __init__(self, latent_channels: int, width: int, blocks: int):
        super().__init__()
        self.conv_in = nn.Conv3d(latent_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*[_SeparableBlock(width) for _ in range(blocks)])
        self.up1 = nn.Conv3d(width, (width // 2) * 8, 3, padding=1)
        self.shuffle1 = DecoupledPixelShuffle3d(2, 2, 2, causal=True)
        self.dense = nn.Conv3d(width // 2, width // 4, 3, padding=1)
        self.up2 = nn.Conv3d(width // 4, 8 * 4, 3, padding=1)
        self.shuffle2 = DecoupledPixelShuffle3d(1, 2, 2, causal=True)
        self.conv_out = nn.Conv3d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv_in(x))
        x = nn.functional.silu(self.dense(self.shuffle1(self.up1(x))))
        return self.conv_out(self.shuffle2(self.up2(x)))


@dataclass(frozen=True)
class CalibrationModel:
    name: str
    held_out: bool
    build: object  # () -> (nn.Module, example tensor)


def _teacher(family: str, scale: int, clip: tuple[int, int, int]):
    def build():

        class_name, config, _ = TEACHERS[family]
        config = copy.deepcopy(config)
        for key in WIDTH_KEYS:
            if isinstance(config.get(key), list):
                config[key] = [c * scale for c in config[key]]
            elif key in config:
                config[key] *= scale
        frames, height, width = clip
        data = {"name": f"{family}-x{scale}", "model": {"diffusers": class_name, "config": config}, "part": "decoder",
                "input": {"frames": frames, "height": height, "width": width}}
        model = load_model(spec_from_dict(data, Path.cwd()))
        return model.module, model.example_input(0)

    return build


def _student(width: int, blocks: int, latent: tuple[int, int, int]):
    def build():
        torch.manual_seed(0)
        module = StudentLikeDecoder(8, width, blocks).eval()
        return module, torch.randn(1, 8, *latent)

    return build


def calibration_set() -> list[CalibrationModel]:
    """16 decoders; every family has one model in the fit set and one held out, alternating which
    size is held out, so the held-out models span the same range of sizes as the fitted ones."""
    models = []
    for index, (family, (_, _, clip)) in enumerate(TEACHERS.items()):
        models.append(CalibrationModel(f"{family}-tiny", index % 2 == 1, _teacher(family, 1, clip)))
        models.append(CalibrationModel(f"{family}-small", index % 2 == 0, _teacher(family, 2, (clip[0], 64, 96))))
    models += [
        CalibrationModel("student-w32", False, _student(32, 3, (3, 4, 6))),
        CalibrationModel("student-w48", True, _student(48, 3, (3, 6, 8))),
        CalibrationModel("student-w64", True, _student(64, 4, (3, 8, 8))),
        CalibrationModel("student-w96", False, _student(96, 4, (3, 8, 12))),
    ]
    return models


def _export(entry: CalibrationModel, directory: Path) -> Path:
    module, example = entry.build()
    path = directory / f"{entry.name}.onnx"
    onnx_backend.export(module, example, path, "latent", "video")
    return path


def measure_set(models: list[CalibrationModel], threads: int, repeats: int, progress=print) -> list[dict]:
    """Export every model, then measure all of them in interleaved rounds (wall-clock and profiled)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, graphs = [], []
        for entry in models:
            started = time.perf_counter()
            paths.append(_export(entry, Path(tmp)))
            graphs.append(load_graph(paths[-1]))
            progress(f"exported {entry.name} ({time.perf_counter() - started:.0f} s)")
        progress(f"measuring {len(models)} models in {repeats} interleaved rounds...")
        results = measure_many(paths, [{n.name for n in g.graph.node} for g in graphs], threads, repeats=repeats)
    records = []
    for entry, graph, (wall, kernels) in zip(models, graphs, results):
        records.append({"name": entry.name, "held_out": entry.held_out, "wall": wall, "kernels": kernels, "graph": graph})
        progress(f"measured {entry.name}: {wall['median_ms']:.1f} ms median")
    return records


def _with_fit(device, fitted: dict):
    """The device with a fit applied to its (single) CPU unit."""
    name, unit = next(iter(device.units.items()))
    unit = unit.model_copy(update={k: fitted[k] for k in ("efficiency", "op_overhead_us", "narrow_channels")})
    return device.model_copy(update={"units": {name: unit}, "run_overhead_ms": fitted["run_overhead_ms"]})


def _node_pairs(records: list[dict], device, narrow: float) -> list[tuple[str, float, float]]:
    """(category, roofline ms at efficiency 1, measured ms) for every profiled, non-view node."""
    trial = _with_fit(device, {"efficiency": {}, "op_overhead_us": 0.0, "narrow_channels": narrow, "run_overhead_ms": 0.0})
    unit = next(iter(trial.units.values()))
    pairs = []
    for record in records:
        for node in graph_cost(record["graph"], "fp32").nodes:
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
            efficiency[category] = min(MAX_EFFICIENCY, max(MIN_EFFICIENCY, roofline / measured))
    return efficiency


def _narrow_error(pairs, efficiency: dict[str, float], overhead_ms: float) -> float:
    """Time-weighted squared log error of conv/matmul nodes: how well a narrow-layer width explains them."""
    total = weight = 0.0
    for category, roofline, measured in pairs:
        if category in NARROW_CATEGORIES and roofline > 0 and measured > 0:
            predicted = roofline / efficiency[category] + overhead_ms
            total += measured * math.log(predicted / measured) ** 2
            weight += measured
    return total / max(weight, 1e-12)


def _wall_terms(candidate: dict, records: list[dict], device) -> dict:
    """Extend a kernel-level fit to wall-clock time: wall = kernels x (1 + beta) + alpha x nodes.

    The profiler's kernel times leave out what the executor does between kernels (allocation,
    scheduling: alpha per node) and the time other processes take the core during a run, which
    grows with the run (beta). Both are fitted by least squares on the relative error of the fitted
    models' wall-clock medians, and folded into the overhead and the efficiencies."""
    rows, targets = [], []
    for record in records:
        wall = record["wall"]["median_ms"]
        predicted = estimate(record["graph"], _with_fit(device, candidate)).total_ms
        rows.append([predicted / wall, len(record["graph"].graph.node) / wall])
        targets.append((wall - predicted) / wall)
    a, b = np.array(rows), np.array(targets)
    beta, alpha = np.linalg.lstsq(a, b, rcond=None)[0]
    if alpha < 0:
        alpha, beta = 0.0, float(np.linalg.lstsq(a[:, :1], b, rcond=None)[0][0])
    elif beta < 0:
        beta, alpha = 0.0, float(np.linalg.lstsq(a[:, 1:], b, rcond=None)[0][0])
    beta, alpha = max(float(beta), -0.5), max(float(alpha), 0.0)
    efficiency = {c: min(MAX_EFFICIENCY, max(MIN_EFFICIENCY, e / (1 + beta))) for c, e in candidate["efficiency"].items()}
    return {**candidate, "efficiency": efficiency, "op_overhead_us": candidate["op_overhead_us"] + alpha * 1000,
            "wall_over_kernels": 1 + beta, "executor_us_per_node": alpha * 1000}


def fit(records: list[dict], device) -> dict:
    """Fit on the records not held out. The per-node overhead is the median time of view nodes (pure
    dispatch); the narrow-layer width is the one that best explains the conv/matmul node times."""
    fitted_records = [r for r in records if not r["held_out"]]
    view_times = [r["kernels"]["node_ms"][n.name] for r in fitted_records for n in graph_cost(r["graph"], "fp32").nodes
                  if n.category == "view" and n.name in r["kernels"]["node_ms"]]
    overhead_ms = statistics.median(view_times) if view_times else 0.0
    best = None
    for narrow in NARROW_GRID:
        pairs = _node_pairs(fitted_records, device, narrow)
        efficiency = _fit_efficiencies(pairs, overhead_ms)
        error = _narrow_error(pairs, efficiency, overhead_ms)
        if best is None or error < best[0]:
            best = (error, {"efficiency": efficiency, "op_overhead_us": overhead_ms * 1000, "narrow_channels": narrow,
                            "run_overhead_ms": 0.0})
    return _wall_terms(best[1], fitted_records, device)


def _errors(records: list[dict], device) -> list[dict]:
    rows = []
    for r in records:
        predicted = estimate(r["graph"], device).total_ms
        measured = r["wall"]["median_ms"]
        rows.append({"name": r["name"], "held_out": r["held_out"], "measured_ms": measured,
                     "predicted_ms": predicted, "rel_error": (predicted - measured) / measured})
    return rows


def summarize(rows: list[dict]) -> dict:
    errors = sorted(abs(row["rel_error"]) for row in rows)
    if not errors:
        return {"n": 0}
    p90_index = min(len(errors) - 1, max(0, round(0.9 * len(errors) + 0.4999) - 1))
    return {"n": len(errors), "median_abs": statistics.median(errors), "p90_abs": errors[p90_index], "max_abs": errors[-1]}


def check_arguments(threads: int | None, repeats: int) -> None:
    if repeats < 1 or (threads is not None and threads < 1):
        raise EffconvError("--repeats and --threads must be at least 1.", "pass positive numbers.")


def calibrate_host(threads: int | None = None, repeats: int = 10, remeasure: bool = False, progress=print) -> dict:
    """`effconv calibrate`: check the arguments, (re-)measure the host's peaks if needed, then calibrate().

    threads None = all cores; remeasure re-measures host peak GFLOP/s and bandwidth first.
    """
    check_arguments(threads, repeats)
    threads = threads or default_threads()
    load_device(HOST, threads=threads, remeasure=remeasure)
    return calibrate(threads, repeats=repeats, progress=progress)


def write_report(result: dict, path: str | Path) -> Path:
    """Write calibrate()'s full result as JSON to path; nothing is left behind if writing fails."""
    path = Path(path)
    with staged_output(path.parent) as stage:
        (stage / path.name).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def calibrate(threads: int, repeats: int = 10, progress=print, models: list[CalibrationModel] | None = None) -> dict:
    """Measure, fit, evaluate before/after on held-out models, and store the fit in the host-cpu cache."""
    check_arguments(threads, repeats)
    records = measure_set(models or calibration_set(), threads, repeats, progress)
    return fit_and_store(records, threads, repeats)


def fit_and_store(records: list[dict], threads: int, repeats: int) -> dict:
    device = load_device(HOST, threads=threads, calibrated=False)
    before = _errors(records, device)
    fitted = fit(records, device)
    after = _errors(records, _with_fit(device, fitted))
    held_out = summarize([row for row in after if row["held_out"]])
    calibration = {
        **fitted,
        "model_uncertainty": max(0.1, round(held_out.get("p90_abs", 0.5) + 0.05, 2)),
        "validation": (
            f"calibrated by `effconv calibrate` on {sum(not r['held_out'] for r in records)} models; held-out error on "
            f"{held_out['n']} models: median {held_out['median_abs']:.0%}, p90 {held_out['p90_abs']:.0%} "
            f"(onnxruntime CPU, {threads} threads, medians of {repeats} runs)."
        ),
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": threads,
    }
    write_cache_entry(host_key(threads), "calibration", calibration)
    return {
        "threads": threads,
        "repeats": repeats,
        "fit": calibration,
        "models": [{"name": r["name"], "held_out": r["held_out"], "gflops": graph_cost(r["graph"], "fp32").flops / 1e9,
                    "wall": r["wall"], "kernel_ms": r["kernels"]["kernel_ms"]} for r in records],
        "before": {"rows": before, "held_out": summarize([r for r in before if r["held_out"]]),
                   "fitted": summarize([r for r in before if not r["held_out"]])},
        "after": {"rows": after, "held_out": held_out, "fitted": summarize([r for r in after if not r["held_out"]])},
    }
