"""Which compute unit of a device runs each node of a costed graph: the first, in the profile's order, that the lint
rules let run it (effconv.profile.device.legality), and notes naming the rules that kept nodes off the preferred unit
or off every unit, with lint's fixes.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from effconv.legalize.lint import rule_table
from effconv.profile.device.legality import rules_against, runs_on
from effconv.profile.device.profiles import ComputeUnit, DeviceProfile
from effconv.profile.graph.costs import NodeCost


def unit_accepts(unit: ComputeUnit, node: NodeCost, backend: str) -> bool:
    """Whether a compute unit can run a node: `effconv lint`'s rules for `backend` on the lint units it is."""
    return runs_on(node, backend, unit.lint_units[backend])


def place(node: NodeCost, device: DeviceProfile) -> tuple[str, bool]:
    """The first unit, in the profile's order, that accepts the node as its first backend runs it (`for_backend`
    narrows a device to the artifact's). When none does, the op is not legal on this device at all (it needs a
    rewrite); it is costed on the last unit and flagged."""
    backend = device.backends[0]
    units = [name for name, unit in device.units.items() if backend in unit.lint_units]
    for name in units:
        if unit_accepts(device.units[name], node, backend):
            return name, True
    return units[-1], False


def _by_rule(nodes: list[NodeCost], backend: str, lint_units: list[str]) -> str:
    kinds: dict[str, Counter] = defaultdict(Counter)
    rules: dict[str, dict] = {}
    for node in nodes:
        for rule in rules_against(node, backend, lint_units):
            kinds[rule["id"]][node.kind] += 1
            rules[rule["id"]] = rule
    return "; ".join(f"{rule_id} ({', '.join(f'{k} x{n}' for k, n in counts.most_common())}; "
                     f"fix: {', '.join(rules[rule_id].get('fix') or ['none'])})" for rule_id, counts in kinds.items())


def placement_notes(device: DeviceProfile, placed: list[tuple[NodeCost, str, bool]]) -> list[str]:
    """Which lint rules kept nodes off the preferred unit, and which left them on no unit, with lint's fixes.
    `placed`: (node, unit, legal) per costed node, as `place` put them."""
    backend = device.backends[0]
    units = [name for name, unit in device.units.items() if backend in unit.lint_units]
    preferred, last = units[0], units[-1]
    lint = f"`effconv lint SPEC --backend {backend}" + (f" --device {device.name}`" if device.name in rule_table(backend)["devices"] else "`")
    notes = []
    moved = [node for node, unit, legal in placed if legal and unit != preferred]
    if moved:
        notes.append(f"kept off {preferred} by {backend} lint rules: "
                     f"{_by_rule(moved, backend, device.units[preferred].lint_units[backend])}.")
    stuck = [node for node, _, legal in placed if not legal]
    if stuck:
        every_unit = sorted({u for name in units for u in device.units[name].lint_units[backend]})
        notes.append(f"not runnable on any {device.name} unit as {backend} without a rewrite (costed on {last}): "
                     f"{_by_rule(stuck, backend, every_unit)}; {lint} shows them on the exported graph.")
    return notes
