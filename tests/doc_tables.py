"""Markdown tables of docs/*.md rebuilt from their results files, row by row.

A table in a doc is preceded by `<!--=table FILE.json NAME -->`; NAME is a function here that takes the loaded
JSON and returns the table's lines (header, separator, rows) exactly as the doc must show them. So every cell of
a large measured table is checked without a marker per cell, and a remeasurement changes the expected table.
"""

from __future__ import annotations

import re


def row(*cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def percent(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%"


# --- docs/profile.md: benchmarks/results/estimator_error.json -------------------------------------------------

ESTIMATOR_COLUMNS = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]


def estimator_cell(found: dict | None) -> str:
    if found is None:
        return "-"
    return f"{found['measured_ms']:.1f} / {found['predicted_ms']:.1f} ({found['rel_error'] * 100:+.0f}%)"


def estimator_per_model(data: dict) -> list[str]:
    """One row per decoder: its set, GFLOP and, per runtime and dtype, measured / calibrated ms (error)."""
    cells, names = {}, []
    for backend, fitted in data["runtimes"].items():
        for result in [*fitted["after"]["rows"], *fitted["fresh"]["rows"]]:
            cells[result["name"], result["backend"], result["dtype"]] = result
            if result["name"] not in names:
                names.append(result["name"])
    gflops = {m["name"]: m["gflops"] for m in data["models"] if (m["backend"], m["dtype"]) == ("onnx", "fp32")}
    lines = [
        row("model", "set", "GFLOP", "onnxruntime fp32 ms: measured / calibrated (error)", "int8", "LiteRT fp32", "int8"),
        row(*["---"] * 7),
    ]
    for name in names:
        first = next(cells[key] for key in cells if key[0] == name)
        kind = "fresh" if name.startswith("fresh-") else "held-out" if first["held_out"] else "fit"
        flops = f"{gflops[name]:.2f}" if name in gflops else "-"
        lines.append(row(name, kind, flops, *(estimator_cell(cells.get((name, *column))) for column in ESTIMATOR_COLUMNS)))
    return lines


def split_summary(parts: list[dict]) -> str:
    """'3.8% / 7.9%; 5.1% / 15.3% (14 each)', or with each count after its pair when they differ."""
    if len({p["n"] for p in parts}) == 1:
        return "; ".join(f"{percent(p['median_abs'])} / {percent(p['p90_abs'])}" for p in parts) + f" ({parts[0]['n']} each)"
    return "; ".join(f"{percent(p['median_abs'])} / {percent(p['p90_abs'])} ({p['n']}{': the max' if p['p90_is_max'] else ''})"
                     for p in parts)


def whole_summary(summary: dict) -> str:
    return (f"**{percent(summary['median_abs'])} / {percent(summary['p90_abs'])}** "
            f"({summary['n']}, max {percent(summary['max_abs'], 0)})")


def estimator_summary(data: dict) -> list[str]:
    """Held-out and fresh-set errors per runtime, before (uncalibrated) and after calibration."""
    runtimes = [data["runtimes"][backend] for backend in ("onnx", "tflite")]
    lines = [row("", "onnxruntime", "LiteRT, XNNPACK"), row("---", "---", "---")]
    lines.append(row("uncalibrated, held-out: median / p90", *(
        f"{percent(r['before']['held_out']['median_abs'], 0)} / {percent(r['before']['held_out']['p90_abs'], 0)}"
        for r in runtimes)))
    lines.append(row("**calibrated, held-out, fp32 + int8**", *(whole_summary(r["after"]["held_out"]) for r in runtimes)))
    lines.append(row("held-out fp32 / int8", *(
        split_summary([r["after"]["held_out_fp32"], r["after"]["held_out_int8"]]) for r in runtimes)))
    lines.append(row("**calibrated, fresh set, fp32 + int8**", *(whole_summary(r["fresh"]["all"]) for r in runtimes)))
    lines.append(row("fresh fp32 / int8", *(
        split_summary([r["fresh"]["fresh_fp32"], r["fresh"]["fresh_int8"]]) for r in runtimes)))
    return lines


TABLES = {
    "estimator_per_model": estimator_per_model,
    "estimator_summary": estimator_summary,
}

TABLE_MARKER = re.compile(r"<!--=table\s+(?P<files>(?:[^\s>]+\.json\s+)+)(?P<name>\w+)\s*-->")


def cells(line: str) -> list[str]:
    """A table line's cells, stripped; a separator's cells all read '---'."""
    found = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return ["---" if re.fullmatch(r":?-{3,}:?", cell) else cell for cell in found]
