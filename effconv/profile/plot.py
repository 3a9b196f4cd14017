"""`effconv profile --plot`: latency by op category and a roofline chart of every op (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from effconv.artifacts import staged_output
from effconv.errors import EffconvError
from effconv.profile.run import ProfileResult

CATEGORY_COLORS = {"conv": "C0", "conv_dw": "C1", "conv_pw": "C2", "matmul": "C3", "norm": "C4",
                   "elementwise": "C5", "reduce": "C6", "resize": "C7", "layout": "C8", "conversion": "olive", "view": "C9"}


def _breakdown(ax, result: ProfileResult) -> None:
    totals = result.estimate.by("category")
    names = list(totals)[::-1]
    ax.barh(names, [totals[n] for n in names], color=[CATEGORY_COLORS.get(n, "gray") for n in names])
    ax.set_xlabel("estimated ms")
    ax.set_title(f"{result.source.name} on {result.device.name}: {result.estimate.total_ms:.1f} ms by op category")


def _roofline(ax, result: ProfileResult) -> None:
    device = result.device
    ops = [op for op in result.estimate.ops if op.node.flops > 0 and op.node.bytes > 0 and op.ms > 0]
    if not ops:
        ax.text(0.5, 0.5, "no ops with FLOPs", ha="center")
        return
    intensities = [op.node.flops / op.node.bytes for op in ops]
    low, high = min(intensities) / 2, max(intensities) * 2
    for name, dtype in sorted({(op.unit, op.dtype) for op in ops}):
        unit = device.units[name]
        peak = unit.peak_gops[dtype].value
        bandwidth = (unit.bandwidth_gbps or device.memory.bandwidth_gbps).value
        xs = [low, peak / bandwidth, high]
        ax.plot(xs, [min(peak, bandwidth * x) for x in xs], label=f"{name} {dtype} roof")
    for category in sorted({op.node.category for op in ops}):
        chosen = [op for op in ops if op.node.category == category]
        ax.scatter([op.node.flops / op.node.bytes for op in chosen], [op.node.flops / (op.ms * 1e6) for op in chosen],
                   s=12, color=CATEGORY_COLORS.get(category, "gray"), label=category)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("estimated GFLOP/s")
    ax.set_title("roofline (points: ops at their estimated time)")
    ax.legend(fontsize=7)


def write_plot(result: ProfileResult, path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise EffconvError(f"--plot '{path}' must end in .png.", "pass e.g. --plot profile.png.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    _breakdown(left, result)
    _roofline(right, result)
    figure.tight_layout()
    with staged_output(path.parent if str(path.parent) else Path(".")) as stage:
        figure.savefig(stage / path.name, dpi=110)
    plt.close(figure)
    return path
