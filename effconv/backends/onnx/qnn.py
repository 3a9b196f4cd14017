"""ONNX int8 for a Snapdragon HTP: the QDQ model onnxruntime's QNN execution provider compiles.

QNN's HTP runs a graph only as quantized node units: every op between DequantizeLinear inputs and a
QuantizeLinear output, activations per tensor (8- or 16-bit), weights per channel and symmetric for convolutions.
onnxruntime builds exactly that form with `qnn_preprocess_model` (graph fusions QNN expects) and
`get_qnn_qdq_config` (which ops and tensors to quantize how, with the fix-ups QNN needs), per
https://onnxruntime.ai/docs/execution-providers/QNN-ExecutionProvider.html. Qualcomm AI Hub ships its models for
this path as w8a8 or w8a16.

No HTP runs here, so the model is checked the two ways Linux allows: its structure (every op in a node unit, read
back from the written graph; an op outside one falls back to the phone's CPU) and its numbers, the QDQ arithmetic
run op by op in onnxruntime's CPU execution provider against the float model. w8a8 is tried first; when it misses
--min-psnr-vs-float, w8a16 (16-bit activations, twice the activation traffic on the HTP). The host-CPU timing and
node choices of `quantize.py` do not apply: this model is for the HTP.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

from effconv.backends.base import CalibrationSet, QuantizeOptions
from effconv.backends.onnx.quantize import FeedReader, artifact_sizes, drop_exporter_notes, graph_input_names, quiet_ort, run_all
from effconv.backends.quality import CALIBRATE_MORE, quality_report
from effconv.quiet import captured_stdout

QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear")
# (scheme, activation QuantType name): tried in this order until one meets the fidelity gate
SCHEMES = (("w8a8", "QUInt8"), ("w8a16", "QUInt16"))
QNN_SOURCE = "https://onnxruntime.ai/docs/execution-providers/QNN-ExecutionProvider.html"


def outside_node_units(path: Path) -> list[dict]:
    """The nodes (name, op) that are not a quantized node unit: fed by anything but a DequantizeLinear (a constant
    initializer aside), or feeding anything but a QuantizeLinear or the graph output."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {output: node for node in graph.node for output in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {output.name for output in graph.output}
    outside = []
    for node in graph.node:
        if node.op_type in QUANTIZE_OPS:
            continue
        fed = all(producer[name].op_type == "DequantizeLinear" for name in node.input if name in producer)
        feeds = all(name in graph_outputs or all(c.op_type == "QuantizeLinear" for c in consumers[name])
                    for name in node.output)
        if not (fed and feeds):
            outside.append({"name": node.name, "op": node.op_type})
    return outside


def quantize_as(source: Path, out: Path, activation: str, calib: CalibrationSet, input_names: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    with quiet_ort(), captured_stdout():
        config = get_qnn_qdq_config(str(source), FeedReader(input_names, calib.feeds),
                                    activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
                                    per_channel=True)
        quantize(str(source), str(out), config)
    drop_exporter_notes(out)


def quantize_for_qnn(artifact: Path, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
                     options: QuantizeOptions) -> dict:
    """Write the QNN QDQ model of `artifact` to `out_path` (w8a8, else w8a16 when w8a8 misses the fidelity gate);
    return the quantize report."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    threads = options.threads or 1
    input_names = graph_input_names(artifact)
    # the scheme is chosen on a validation split of the calibration clips; the held-out clips only measure the result
    fit, validation = calib.validation_split() if len(calib) > 1 else (calib, calib)
    validation_floats = run_all(artifact, validation.feeds, threads)
    tried = []
    with tempfile.TemporaryDirectory(prefix="effconv-qnn-") as tmp:
        prepared = Path(tmp) / "qnn-preprocessed.onnx"
        options.progress("pre-processing the graph for QNN (onnxruntime qnn_preprocess_model)")
        with quiet_ort():
            source = prepared if qnn_preprocess_model(str(artifact), str(prepared)) else artifact
        for scheme, activation in SCHEMES:
            options.progress(f"quantizing {scheme} for the HTP (get_qnn_qdq_config, {len(fit)} calibration samples)")
            quantize_as(source, out_path, activation, fit, input_names)
            options.progress(f"running the {scheme} QDQ arithmetic op by op on the {len(validation)} validation samples")
            psnr = quality_report(validation_floats, run_all(out_path, validation.feeds, threads, fused=False),
                                  None)["psnr_vs_float_db"]
            tried.append({"scheme": scheme, "validation_psnr_vs_float_db": psnr})
            if options.min_psnr_vs_float is None or psnr >= options.min_psnr_vs_float:
                break
    options.progress(f"running the {scheme} QDQ arithmetic op by op on the {len(held_out)} held-out samples")
    quality = quality_report(run_all(artifact, held_out.feeds, threads),
                             run_all(out_path, held_out.feeds, threads, fused=False), held_out.frames)
    outside = outside_node_units(out_path)
    met = options.min_psnr_vs_float is None or psnr >= options.min_psnr_vs_float
    return {
        "scheme": f"QNN HTP {scheme}: onnxruntime get_qnn_qdq_config, per-channel symmetric int8 weights, per-tensor "
                  f"{'8' if scheme == 'w8a8' else '16'}-bit activations on every op",
        "qnn": {"scheme": scheme, "tried": tried, "preprocessed": source != artifact, "source": QNN_SOURCE,
                "nodes_outside_node_units": outside},
        "size_bytes": artifact_sizes(artifact, out_path),
        "quality": quality,
        "latency_ms": {"not_measured": "the model is for the Snapdragon HTP (QNN); onnxruntime's CPU run here checks "
                                       "its arithmetic, not its speed"},
        "float_nodes": [{"name": node["name"], "kind": node["op"], "reason": "not in a quantized node unit: runs on the "
                         "phone's CPU"} for node in outside],
        "target_device": options.target_device,
        "remedies": [CALIBRATE_MORE],
        "notes": [f"quality is the QDQ arithmetic run op by op on this CPU, as the HTP computes it; {scheme} "
                  f"{'meets' if met else 'is the widest scheme effconv tries and misses'} the fidelity gate"
                  f" on the validation split"
                  + (f" (w8a8 reached {tried[0]['validation_psnr_vs_float_db']:.1f} dB there)" if len(tried) > 1 else "")],
    }
