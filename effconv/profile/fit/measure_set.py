"""Measure the calibration set on this machine: every model converted to each runtime's artifact (model_set.py), each
artifact's wall clock in its own runtime and the onnxruntime fp32 models' per-node kernel times, in interleaved rounds,
medians throughout, because the machine may be shared and noisy.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from effconv.errors import exception_text
from effconv.profile.device.host_cpu import HOST_UNIT_BACKENDS
from effconv.profile.fit.model_set import CalibrationModel, make_artifacts
from effconv.profile.graph.onnx import load_graph
from effconv.profile.graph.targets import OWN_GRAPH
from effconv.profile.measure import measure_kernels, measure_walls
from effconv.quiet import cli_setting, follow_cli

IN_PROCESS = "in-process"  # where models are converted again when worker processes broke
BACKEND_UNITS = {backend: unit for unit, backend in HOST_UNIT_BACKENDS.items()}  # the runtimes calibrate fits


def measure_set(models: list[CalibrationModel], threads: int, repeats: int, backends: tuple[str, ...] = tuple(BACKEND_UNITS),
                int8: bool = True, progress=print, keep: Path | None = None) -> list[dict]:
    """Convert every model to each backend's artifact, then measure them all: onnxruntime fp32 models' per-node
    kernel times (interleaved profiled rounds), every artifact's wall clock in interleaved rounds. With `keep`, the
    artifacts stay in that folder and each record keeps its `path` (to cost them again after a cost-model change)."""
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory()) as tmp:
        records = []
        for entry, made in zip(models, convert_all(models, Path(tmp), backends, int8, progress)):
            for backend, dtype, path, shapes in made:
                records.append({"name": entry.name, "held_out": entry.held_out, "backend": backend, "dtype": dtype,
                                "path": path, "cost": OWN_GRAPH[backend][1](path), "shapes": shapes})
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


def _convert_one(entry: CalibrationModel, directory: Path, backends: tuple[str, ...], int8: bool,
                 torch_threads: int | None = None) -> tuple[list, list[str]]:
    """One model's artifacts (make_artifacts) in its own folder under `directory`, and the progress lines it said."""
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    started, said = time.perf_counter(), []
    (directory / entry.name).mkdir()
    made = make_artifacts(entry, directory / entry.name, backends, int8, said.append)
    return made, [*said, f"converted {entry.name} ({time.perf_counter() - started:.0f} s)"]


def convert_all(models: list[CalibrationModel], directory: Path, backends: tuple[str, ...], int8: bool, progress) -> list[list]:
    """Every model's artifacts, in the models' order. Converting is mostly single-threaded Python (torch.export and
    the ONNX exporter's optimizer), so the models are converted in one process per core (spawned: a forked torch can
    hang), each with one torch thread; progress lines come as each model finishes. A student's ONNX layout is chosen
    by timing both (convert's `auto`), here while another model converts, so it can differ from an idle machine's
    choice: either is an artifact users get. Where worker processes cannot run (e.g. a main script read from stdin),
    the models are converted one at a time here."""
    workers = min(len(models), os.cpu_count() or 1)
    if workers < 2:
        return _in_process(models, directory, backends, int8, progress)
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=follow_cli, initargs=(cli_setting(),)) as pool:
            futures = [pool.submit(_convert_one, entry, directory, backends, int8, 1) for entry in models]
            try:
                for future in as_completed(futures):
                    for line in future.result()[1]:
                        progress(line)
            except BaseException:  # a model that cannot be converted (or Ctrl-C) stops the models not yet started
                pool.shutdown(cancel_futures=True)
                raise
            return [future.result()[0] for future in futures]
    except BrokenProcessPool as exc:
        progress(f"cannot convert in worker processes ({exception_text(exc)}); converting one model at a time")
        (directory / IN_PROCESS).mkdir()
        return _in_process(models, directory / IN_PROCESS, backends, int8, progress)


def _in_process(models: list[CalibrationModel], directory: Path, backends: tuple[str, ...], int8: bool, progress) -> list[list]:
    return [_report(_convert_one(entry, directory, backends, int8), progress) for entry in models]


def _report(converted: tuple[list, list[str]], progress) -> list:
    for line in converted[1]:
        progress(line)
    return converted[0]


def _label(record: dict) -> str:
    return f"{record['name']} {record['backend']} {record['dtype']}"
