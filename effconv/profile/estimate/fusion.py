"""Which ops a runtime runs as one kernel: the graph a compiler executes, not the op list an artifact stores, grouped
by the fusion rules of the unit each op runs on (effconv.profile.device.fusion_rules: the kinds of rule).

A tensor whose producer and every reader are in one kernel never goes to DRAM: it is "on chip", and neither its
writer nor its readers pay for it; a kernel reads each outside tensor once. An op that joins a kernel keeps its FLOPs
and pays no dispatch; a halo padding op moves no bytes of its own; a free view is no kernel at all, nor is an in-place
op (its producers wrote its output).

An op joins a kernel only on the same compute unit, and only when each of its other inputs exists before the kernel
starts (so the fused kernel never waits on work that waits on it).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

from effconv.profile.device.fusion_rules import FusionRules, matches
from effconv.profile.graph.costs import GraphCost, NodeCost


@dataclass(frozen=True)
class Fused:
    """A graph as one device's runtimes execute it: its nodes carry `kernel` / `on_chip` (NodeCost), and `rules`
    names the rules each unit applied."""

    cost: GraphCost
    rules: dict[str, str]  # unit -> rules name (units without rules absent)


class _Graph:
    """Producers and readers of each tensor, views seen through (a view's output is its input's data)."""

    def __init__(self, nodes: list[NodeCost], graph_outputs: set[str]):
        self.alias: dict[str, str] = {}
        for node in nodes:
            data = [t.name for t in node.reads if not t.constant]
            if node.category == "view" and data:
                for name in node.outputs[:1]:
                    self.alias[name] = self.real(data[0])
        self.producer: dict[str, int] = {}
        self.readers: dict[str, set[int]] = defaultdict(set)
        for index, node in enumerate(nodes):
            if node.category == "view":
                continue
            for name in node.outputs:
                self.producer[name] = index
            for tensor in node.reads:
                if not tensor.constant:
                    self.readers[self.real(tensor.name)].add(index)
        self.outputs = {self.real(name) for name in graph_outputs}

    def real(self, name: str) -> str:
        return self.alias.get(name, name)

    def data_inputs(self, node: NodeCost) -> list[str]:
        return list(dict.fromkeys(self.real(t.name) for t in node.reads if not t.constant))


def _halo_targets(nodes: list[NodeCost], graph: _Graph, units: list[str], rules_by_unit: dict[str, FusionRules]) -> dict[int, int]:
    """Padding op -> the convolution it is the halo of, walking back from the readers (a Slice feeding a halo Concat
    is part of that halo)."""
    target: dict[int, int] = {}
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        rules = rules_by_unit.get(units[index])
        halo = rules.halo if rules else None
        if halo is None or node.kind not in halo.kinds or not node.outputs:
            continue
        readers = set().union(*(graph.readers[graph.real(name)] for name in node.outputs))
        if not readers or any(graph.real(name) in graph.outputs for name in node.outputs):
            continue
        ends = {reader if matches(halo.into, nodes[reader]) else target.get(reader) for reader in readers}
        if len(ends) == 1 and None not in ends and units[next(iter(ends))] == units[index]:
            target[index] = next(iter(ends))
    return target


def _in_place(nodes: list[NodeCost], graph: _Graph, units: list[str], rules_by_unit: dict[str, FusionRules]) -> set[int]:
    """Ops an `in_place` rule covers whose every data input an op on the same unit produced (a graph input was
    written by no kernel that could have put it in place)."""
    result = set()
    for index, node in enumerate(nodes):
        rules = rules_by_unit.get(units[index])
        if rules is None or rules.in_place is None or node.kind not in rules.in_place.kinds:
            continue
        producers = [graph.producer.get(name) for name in graph.data_inputs(node)]
        if producers and all(producer is not None and units[producer] == units[index] for producer in producers):
            result.add(index)
    return result


def _join(index: int, nodes: list[NodeCost], graph: _Graph, root_of: dict[int, int], last_of: dict[int, int],
          units: list[str], rules: FusionRules) -> int | None:
    """The root of the kernel node `index` joins, or None: the latest producer's kernel a rule lets it join, when
    every other input of the node comes from a kernel that ended before that one starts (`last_of`: kernel root ->
    its last op), so a fused kernel never waits on work that waits on it."""
    node = nodes[index]
    producers = [graph.producer[name] for name in graph.data_inputs(node) if name in graph.producer]
    for producer in sorted(producers, reverse=True):
        root = root_of.get(producer)
        if root is None or units[root] != units[index]:
            continue
        alone = all(graph.readers[graph.real(name)] == {index} for name in nodes[producer].outputs)
        if not any(rule.joins(nodes[root], node) and (alone or not rule.lone_consumer) for rule in rules.epilogues):
            continue
        if all(root_of.get(other, other) == root or last_of.get(root_of.get(other, other), other) < root
               for other in producers):
            return root
    return None


def fuse(cost: GraphCost, units: list[str], rules_by_unit: dict[str, FusionRules]) -> Fused:
    """`cost` as its runtimes run it: each node placed on `units[i]` is grouped by that unit's rules."""
    if not rules_by_unit:  # every op its own kernel, as the graph stores it (host-cpu; estimate_cost(fused=False))
        return Fused(cost, {})
    nodes = cost.nodes
    graph = _Graph(nodes, set(cost.output_shapes))
    root_of: dict[int, int] = {}  # compute node -> the first node of its kernel
    last_of: dict[int, int] = {}  # kernel root -> its last node
    halo_of = _halo_targets(nodes, graph, units, rules_by_unit)
    in_place = _in_place(nodes, graph, units, rules_by_unit)
    for index, node in enumerate(nodes):
        if node.category == "view" or index in halo_of or index in in_place:
            continue
        rules = rules_by_unit.get(units[index])
        joined = _join(index, nodes, graph, root_of, last_of, units, rules) if rules else None
        root_of[index] = index if joined is None else joined
        last_of[root_of[index]] = index
    kernel_of = {index: nodes[root].name for index, root in root_of.items()}
    kernel_of |= {index: nodes[conv].name for index, conv in halo_of.items()}
    on_chip = set()
    for name, producer in graph.producer.items():
        readers = graph.readers.get(name, set())
        if producer in root_of and readers and name not in graph.outputs and all(
                root_of.get(reader) == root_of[producer] for reader in readers):
            on_chip.add(name)
    fused_nodes = []
    read_by_kernel: dict[int, set[str]] = {}  # kernel root -> outside tensors it already read (once per kernel)
    for index, node in enumerate(nodes):
        rules = rules_by_unit.get(units[index])
        if index in halo_of or index in in_place:
            chip = frozenset(t.name for t in (*node.reads, *node.writes))
            kernel = kernel_of[index] if index in halo_of else ""  # an in-place op is no kernel: its producers wrote it
            fused_nodes.append(dataclasses.replace(node, kernel=kernel, on_chip=chip))
        elif node.category == "view":
            free = rules is not None and rules.free is not None and node.kind in rules.free.kinds
            fused_nodes.append(dataclasses.replace(node, kernel="" if free else None))
        elif rules is None:
            fused_nodes.append(node)
        else:
            kernel_reads = read_by_kernel.setdefault(root_of[index], set())
            chip = {t.name for t in (*node.reads, *node.writes) if graph.real(t.name) in on_chip}
            chip |= {t.name for t in node.reads if not t.constant and graph.real(t.name) in kernel_reads}
            kernel_reads |= {graph.real(t.name) for t in node.reads if not t.constant}
            fused_nodes.append(dataclasses.replace(node, kernel=kernel_of[index], on_chip=frozenset(chip)))
    applied = {unit: rules.name for unit, rules in rules_by_unit.items() if unit in units}
    return Fused(dataclasses.replace(cost, nodes=fused_nodes), applied)
