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


# --- docs/student.md: benchmarks/results/init_from_teacher.json, student_vs_teacher*.json ----------------------


def init_from_teacher(data: dict) -> list[str]:
    """PSNR of from-teacher minus random init per step count, held out and in domain."""
    runs = {init: {run["steps"]: run for run in runs} for init, runs in data["inits"].items()}
    lines = [row("steps", f"{data['held_out_video']} (held out)", "Big Buck Bunny (training video)"), row("---", "---", "---")]
    for gain in data["from_teacher_gain_db"]:
        steps = gain["steps"]
        cells_ = [f"{gain[split]:+.2f} dB ({runs['from-teacher'][steps][key]:.2f} vs {runs['random'][steps][key]:.2f})"
                  for split, key in (("held_out", "held_out_psnr_db"), ("in_domain", "in_domain_psnr_db"))]
        lines.append(row(steps, *cells_))
    return lines


FAMILY_NAMES = {"hunyuan": "Hunyuan", "wan21": "Wan 2.1", "cogvideox": "CogVideoX", "ltx": "LTX", "wan22": "Wan 2.2 5B",
                "mochi": "Mochi"}
# The Turbo-VAED paper's own figures beside effconv's, and which rows are the paper's layout and effconv's default.
PAPER = {("hunyuan", "turbo-vaed"): "paper 27.9%", ("ltx", "turbo-vaed"): "paper 41.9 M / 17.5%"}
RECIPE_LABELS = {("hunyuan", "turbo-vaed"): "turbo-vaed (paper)", ("hunyuan", "turbo-vaed-mobile"): "turbo-vaed-mobile (default)"}


def student_vs_teacher(*runs: dict) -> list[str]:
    """Teacher and students per family: params, FLOPs ratio, onnxruntime seconds per layout and speed-ups."""
    lines = [
        row("family (clip)", "teacher params", "teacher ORT", "recipe", "student params (ratio)", "FLOPs ratio",
            "student ORT Conv3d / Conv2d", "speedup (both Conv3d)"),
        row(*["---"] * 8),
    ]
    for run in runs:
        for family, result in run["families"].items():
            for number, (recipe, student) in enumerate(result["students"].items()):
                params = student["comparison"]["params"]
                ratio = f"{params['ratio'] * 100:.1f}%" + (f"; {PAPER[family, recipe]}" if (family, recipe) in PAPER else "")
                layouts = student["timing"]["layouts"]
                lines.append(row(
                    f"{FAMILY_NAMES[family]} ({'x'.join(map(str, result['clip']))})" if number == 0 else "",
                    f"{params['teacher'] / 1e6:.1f} M" if number == 0 else "",
                    f"{result['teacher']['median_s']:.2f} s" if number == 0 and result["teacher"]["median_s"] < 100
                    else f"{result['teacher']['median_s']:.1f} s" if number == 0 else "",
                    RECIPE_LABELS.get((family, recipe), recipe),
                    f"{params['student'] / 1e6:.1f} M ({ratio})",
                    f"{student['comparison']['flops_per_frame']['ratio'] * 100:.1f}%",
                    f"{layouts['conv3d']['median_s']:.2f} / {layouts['conv2d']['median_s']:.2f} s",
                    f"{student['speedup']:.1f}x ({student['speedup_conv3d_both']:.1f}x)",
                ))
    return lines


def student_vs_teacher_families(data: dict) -> list[str]:
    """Per family at its full clip: the teacher, its family recipe's student and the default recipe's, with shares of
    the teacher's params and GFLOP beside the measured onnxruntime fp32 speed-up and the load the family ran under."""
    lines = [
        row("family (clip)", "teacher params", "teacher s", "student (recipe)", "output patch", "params share",
            "GFLOP share", "student s", "speed-up", "load (1 min, after)"),
        row(*["---"] * 10),
    ]
    for family, result in data["families"].items():
        for number, (recipe, student) in enumerate(result["students"].items()):
            first = number == 0
            lines.append(row(
                f"{FAMILY_NAMES[family]} ({'x'.join(map(str, result['clip']))})" if first else "",
                f"{result['teacher_params'] / 1e6:.1f} M" if first else "",
                f"{result['teacher']['median_s']:.1f} s" if first else "",
                recipe,
                student["output_patch"],
                f"{student['params_share'] * 100:.1f}%",
                f"{student['gflop_share'] * 100:.1f}%",
                f"{student['student_s']:.2f} s",
                f"{student['speedup']:.1f}x",
                f"{result['load_avg']['after'][0]:.1f}" if first else "",
            ))
    return lines


# --- docs/quantize.md: benchmarks/results/onnx_int8_layouts.json ----------------------------------------------


def onnx_int8_layouts(data: dict) -> list[str]:
    """Float and all-Conv int8 (u8 and s8 activations) per ONNX layout, and the op times that explain them."""
    lines = [row("layout", "float", "all Conv int8 (u8 act.)", "all Conv int8 (s8 act.)", "where the int8 time goes"),
             row(*["---"] * 5)]
    conv3d, conv2d = data["layouts"]["conv3d"], data["layouts"]["conv2d"]
    u8, s8 = "all Conv int8, uint8 activations", "all Conv int8, int8 activations"

    def timed(run: dict) -> str:
        return f"{run['median_ms']:.0f} ms" + (f" ({run['speedup_vs_float']:.2f}x)" if run["speedup_vs_float"] != 1.0 else "")

    ops3, ops2, float2 = conv3d[u8]["op_types"], conv2d[u8]["op_types"], conv2d["float"]["op_types"]
    float_conv2d = sum(float2[op]["ms"] for op in ("Conv", "ReorderInput", "ReorderOutput"))
    why3 = (f"QLinearConv {ops3['QLinearConv']['ms']:.0f} ms vs float Conv {conv3d['float']['op_types']['Conv']['ms']:.0f} ms: "
            "onnxruntime's 3-D int8 conv (im2col + int8 GEMM) is slower than its float conv at these widths")
    why2 = (f"QLinearConv {ops2['QLinearConv']['ms']:.0f} ms vs float Conv + NCHWc reorders {float_conv2d:.0f} ms "
            f"({float_conv2d / ops2['QLinearConv']['ms']:.1f}x faster), but onnxruntime wraps every int8 Conv2d in NHWC "
            f"Transposes ({ops2['Transpose']['nodes']} nodes, {ops2['Transpose']['ms']:.0f} ms) that it cannot cancel "
            "across the time-shift Slice/Concat")
    lines.append(row("Conv3d (as written)", timed(conv3d["float"]), timed(conv3d[u8]), timed(conv3d[s8]), why3))
    lines.append(row("Conv2d (`convert --layout conv2d`)", timed(conv2d["float"]), timed(conv2d[u8]), timed(conv2d[s8]), why2))
    return lines


# --- docs/profile.md, README.md: benchmarks/results/device_truth.json ------------------------------------------


def device_truth(data: dict) -> list[str]:
    """Each public Apple measurement: the estimate before the fit, held out (its family left out of the fit), and the
    error held out."""
    lines = [row("network", "phone (SoC)", "precision", "measured ms", "before fit ms", "held out ms", "held-out error"),
             row(*["---"] * 7)]
    for r in data["rows"]:
        if r["group"] == "apple_ane":
            lines.append(row(r["model_id"], f"{r['device']} ({r['soc']})", r["precision"], f"{r['latency_ms']:.2f}",
                             f"{r['before_ms']:.2f}", f"{r['held_out_ms']:.2f}", f"{r['held_out_error'] * 100:+.0f}%"))
    return lines


NPU_GROUPS = {"apple_ane": "Apple Neural Engine (iphone12pro, 14pro, 15pro, 16pro)", "galaxy-s23": "Snapdragon 8 Gen 2 HTP (galaxy-s23)",
              "galaxy-s24": "Snapdragon 8 Gen 3 HTP (galaxy-s24)", "sd8-elite": "Snapdragon 8 Elite HTP (sd8-elite)"}


def device_truth_held_out(data: dict) -> list[str]:
    """Per fitted NPU, all its rows and then each runtime: held-out rows, median and 90th-percentile absolute error,
    the share inside the printed band, and the median error with the figures the profile carried before the fit; then
    the rows reported apart, per reason (AI Hub's job or effconv's estimate ran ops off the NPU)."""
    lines = [row("NPU (profiles)", "runtime", "held-out rows", "median error", "90th percentile", "inside band",
                 "median error before the fit"), row(*["---"] * 7)]
    for group, title in NPU_GROUPS.items():
        result = data[group]
        parts = [("all", result["held_out"])] if len(result["held_out_by_runtime"]) > 1 else []
        for label, summary in [*parts, *result["held_out_by_runtime"].items()]:
            before = result["before_fit"]["median_abs"] if label == "all" or len(parts) == 0 else None
            lines.append(row(title, label, *held_out_cells(summary), f"{before * 100:.0f}%" if before is not None else ""))
        for reason, summary in result.get("held_out_apart", {}).items():
            lines.append(row(title, f"apart: {reason}", *held_out_cells(summary), ""))
    return lines


def held_out_cells(summary: dict) -> tuple:
    """Rows, median, 90th percentile (nearest rank: with fewer than 10 rows the largest error, marked so) and the share
    inside the band."""
    p90 = f"{summary['p90_abs'] * 100:.0f}%" + (" (the max)" if summary["p90_is_max"] else "")
    return summary["n"], f"{summary['median_abs'] * 100:.0f}%", p90, f"{summary['inside_band'] * 100:.0f}%"


# --- docs/profile.md: benchmarks/results/fusion_effect.json ------------------------------------------------------

FUSION_CATEGORIES = ("elementwise", "conv", "layout", "reduce")


def fusion_effect(data: dict) -> list[str]:
    """Each family's paper-layout student on iphone16pro at 512x512: estimate, estimate unfused, and the share of time of
    the largest categories before -> after fusion."""
    lines = [row("student (recipe)", "GFLOP", "estimate ms (band)", "FPS", "every op its own kernel, ms",
                 *(f"{category} share" for category in FUSION_CATEGORIES)), row(*["---"] * (5 + len(FUSION_CATEGORIES)))]
    students = [(family, result) for family, result in data["families"].items()]
    students += [(f"{family}, default recipe", result) for family, result in data["default_recipe"].items()]
    for name, r in students:
        latency, shares = r["latency_ms"], r["by_category"]
        lines.append(row(f"{name} ({r['recipe']})", f"{r['gflops']:.0f}",
                         f"{latency['estimate']:.0f} ({latency['low']:.0f}-{latency['high']:.0f})", f"{r['fps']['estimate']:.1f}",
                         f"{r['unfused_ms']:.0f}",
                         *(f"{shares['unfused'].get(c, {'share': 0})['share'] * 100:.0f}% -> {shares['fused'].get(c, {'share': 0})['share'] * 100:.0f}%"
                           for c in FUSION_CATEGORIES)))
    return lines


TABLES = {
    "fusion_effect": fusion_effect,
    "device_truth": device_truth,
    "device_truth_held_out": device_truth_held_out,
    "onnx_int8_layouts": onnx_int8_layouts,
    "init_from_teacher": init_from_teacher,
    "student_vs_teacher": student_vs_teacher,
    "student_vs_teacher_families": student_vs_teacher_families,
    "estimator_per_model": estimator_per_model,
    "estimator_summary": estimator_summary,
}

TABLE_MARKER = re.compile(r"<!--=table\s+(?P<files>(?:[^\s>]+\.json\s+)+)(?P<name>\w+)\s*-->")


def cells(line: str) -> list[str]:
    """A table line's cells, stripped; a separator's cells all read '---'."""
    found = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return ["---" if re.fullmatch(r":?-{3,}:?", cell) else cell for cell in found]
