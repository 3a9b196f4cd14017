"""The latency estimate and `effconv lint` keep the same ops off the same compute units.

For every shipped device and every backend it lists, the estimate's placement (`estimate.unit_accepts` on the
family decoder's costed ONNX graph) and lint (the same decoder's torch.export ATen graph) must rule the same
things out of each unit. The two graphs name ops differently (ATen `upsample_nearest3d` is an ONNX `Resize` on
rank-5 tensors, `_upsample_nearest_exact2d` a `GatherND`, `stack` an `Unsqueeze` + `Concat`), so they are
compared by rule: each rule names its ATen ops (`ops`) and the costed nodes they become (`cost_nodes`). A rule
the costed graph cannot show (`cost_unseen`, with its reason: an ATen `alias` is dropped by the ONNX export, a
5-D GroupNorm becomes InstanceNormalization on a rank-3 view) is left out of the comparison.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import yaml

from backend_cases import family_params, small_clip, spec_path
from effconv.backends.onnx import export as onnx_backend
from effconv.legalize.lint import matching_rules, op_facts, rule_table
from effconv.legalize.rewrites import export_graph
from effconv.models.loader import load_model
from effconv.profile.device.legality import rules_against
from effconv.profile.device.profiles import HOST, DeviceProfile, builtin_names, load_device, profiles_dir
from effconv.profile.estimate.placement import unit_accepts
from effconv.profile.graph.onnx import graph_cost, load_graph
from effconv.spec import load_spec


def _shipped(name: str) -> DeviceProfile:
    """A shipped profile as written: host-cpu's measured figures do not change which unit runs what."""
    if name == HOST:
        return DeviceProfile.model_validate(yaml.safe_load((profiles_dir() / f"{HOST}.yaml").read_text()))
    return load_device(name)


@pytest.fixture(scope="module", params=family_params(["ltx"]))
def graphs(request, tmp_path_factory):
    """(ATen op facts, costed ONNX nodes) of one family's tiny decoder at a two-latent-frame clip."""
    model = load_model(small_clip(load_spec(spec_path(request.param))))
    example = model.example_input(0)
    path = tmp_path_factory.mktemp(request.param) / "decoder.onnx"
    onnx_backend.export(model.module, example, path, model.input_name, model.output_name)
    return op_facts(export_graph(model.module, example).graph), graph_cost(load_graph(path)).nodes


def _lint_off(aten: list[dict], backend: str, lint_units: list[str]) -> dict[str, set[str]]:
    """rule id -> ATen ops, over the nodes lint rules out on every one of the unit's lint units."""
    table, off = rule_table(backend), defaultdict(set)
    for facts in aten:
        rules = matching_rules(table, facts)
        if set(lint_units) <= set().union(*(rule["illegal_on"] for rule in rules)):
            for rule in rules:
                if set(rule["illegal_on"]) & set(lint_units) and "cost_nodes" in rule:
                    off[rule["id"]].add(facts["op"])
    return dict(off)


def _estimate_off(nodes, backend: str, unit) -> dict[str, set[str]]:
    """rule id -> costed kinds, over the nodes the estimate will not place on the unit."""
    off = defaultdict(set)
    for node in nodes:
        if not unit_accepts(unit, node, backend):
            rules = rules_against(node, backend, unit.lint_units[backend])
            assert rules, f"{node.kind} kept off with no rule"
            for rule in rules:
                off[rule["id"]].add(node.kind)
    return dict(off)


def test_the_estimate_keeps_off_each_unit_what_lint_rules_out_there(graphs):
    aten, nodes = graphs
    disagreements = []
    for name in builtin_names():
        device = _shipped(name)
        for backend in device.backends:
            for unit_name, unit in device.for_backend(backend).units.items():
                lint = _lint_off(aten, backend, unit.lint_units[backend])
                estimate = _estimate_off(nodes, backend, unit)
                if set(lint) != set(estimate):
                    disagreements.append(f"{name} {backend} {unit_name}: lint {lint} vs estimate {estimate}")
    assert disagreements == []
