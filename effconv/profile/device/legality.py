"""Which compute unit of a device can run a node of the costed (ONNX) graph: `effconv lint`'s rules decide.

The lint rule tables (effconv/legalize/rules/<backend>.yaml) are the one source of legality; device profiles
hold none of their own. A rule that rules out a unit names the costed nodes it concerns (`cost_nodes`: kinds
and the rank, upsampling factor and output count a NodeCost carries). Each unit of a device profile names,
per backend, the lint units it is (`lint_units`); it runs a node unless the matching rules rule out all of
them, as a phone CPU runs on TFLite's builtin kernels what XNNPACK refuses.
"""

from __future__ import annotations

from functools import cache

from effconv.legalize.lint import RULE_BACKENDS, rule_table
from effconv.profile.graph.costs import NodeCost


def _matches(matcher: dict, kind: str, op_type: str, rank: int, factor: float, outputs: int) -> bool:
    if "kinds" in matcher and kind not in matcher["kinds"] and op_type not in matcher["kinds"]:
        return False
    if "rank_above" in matcher and rank <= matcher["rank_above"]:
        return False
    if "rank_at_most" in matcher and rank > matcher["rank_at_most"]:
        return False
    if "factor_above" in matcher and factor <= matcher["factor_above"]:
        return False
    return "outputs" not in matcher or outputs == matcher["outputs"]


@cache
def _rules_for(backend: str, kind: str, op_type: str, rank: int, factor: float, outputs: int) -> tuple[dict, ...]:
    return tuple(rule for rule in rule_table(backend)["rules"]
                 if any(_matches(m, kind, op_type, rank, factor, outputs) for m in rule.get("cost_nodes", ())))


def cost_rules(node: NodeCost, backend: str) -> tuple[dict, ...]:
    """The backend's lint rules that concern this costed node."""
    return _rules_for(backend, node.kind, node.op_type, node.max_rank, node.upsample, len(node.outputs))


def runs_on(node: NodeCost, backend: str, lint_units: list[str]) -> bool:
    ruled_out = set().union(*(rule["illegal_on"] for rule in cost_rules(node, backend)))
    return not set(lint_units) <= ruled_out


def rules_against(node: NodeCost, backend: str, lint_units: list[str]) -> list[dict]:
    """The rules that keep a node off a unit: those ruling out one of its lint units."""
    return [rule for rule in cost_rules(node, backend) if set(rule["illegal_on"]) & set(lint_units)]


def check_lint_units(name: str, backends: list[str], units: dict[str, dict[str, list[str]]]) -> None:
    """A device profile's units map onto existing lint units of the backends it lists, and onto exactly the units
    `effconv lint --device NAME` shows. Raises ValueError (the profile validator's error) naming the fix."""
    for backend in backends:
        if backend not in RULE_BACKENDS:
            raise ValueError(f"backend '{backend}' has no lint rules (use one of: {', '.join(RULE_BACKENDS)})")
    for unit, mapping in units.items():
        for backend, lint_units in mapping.items():
            if backend not in backends:
                raise ValueError(f"unit '{unit}' maps backend '{backend}', which 'backends' does not list (add it there)")
            known = rule_table(backend)["units"]
            unknown = [u for u in lint_units if u not in known]
            if unknown or not lint_units:
                what = f"unknown {backend} lint unit(s) {unknown}" if unknown else f"no {backend} lint unit"
                raise ValueError(f"unit '{unit}' names {what} (use: {', '.join(known)})")
    for backend in RULE_BACKENDS:
        mapped = {u for mapping in units.values() for u in mapping.get(backend, ())}
        if backend in backends and not mapped:
            raise ValueError(f"no unit names its {backend} lint units (add lint_units.{backend} to the units that run it)")
        linted = rule_table(backend)["devices"].get(name)
        if linted is not None and mapped != set(linted):
            raise ValueError(f"its units map {sorted(mapped)} of {backend}, but effconv/legalize/rules/{backend}.yaml "
                             f"gives {name} {sorted(linted)} (make them name the same units)")
