"""Backend legality: which ops of an exported graph each backend's compute units can run, and why not.

The rules are data (`effconv/legalize/rules/<backend>.yaml`), one table per backend, each rule with
its source. A rule matches op nodes of the torch.export ATen graph by op name (`ops`, or
`except_ops` to leave some to a more specific rule) and conditions (`rank_above`, `factor_above`,
`dilation_above`, `grouped`, `mode`, `pieces`, `zero_reps`), rules out some compute units
(`illegal_on`), and names the effconv rewrites that fix it. An op that no unit of the backend can
run blocks export.

The same rules place ops in `effconv profile`'s latency estimate, which costs the ONNX graph: a rule
that rules out a unit says which nodes of that graph it concerns (`cost_nodes`, read by
effconv/profile/device/legality.py), or why that graph cannot show it (`cost_unseen`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
import yaml
from torch import fx

from effconv.artifacts import manifest_path, read_manifest
from effconv.errors import EffconvError
from effconv.legalize.rewrites import export_graph, legalize, rewrites_for
from effconv.models.loader import load_model
from effconv.spec import load_spec, spec_from_dict

RULES_DIR = Path(__file__).with_name("rules")
RULE_BACKENDS = tuple(sorted(path.stem for path in RULES_DIR.glob("*.yaml")))


class BackendBlocked(EffconvError):
    """An op no compute unit of the backend can run remains after effconv's rewrites (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None, report: "LintReport"):
        super().__init__(message, fix)
        self.report = report


# What a `cost_nodes` entry may test on a costed node (effconv/profile/graph/costs.py NodeCost): its kind or ONNX op
# type, its largest tensor rank, its upsampling factor, and how many outputs it has.
COST_NODE_KEYS = {"kinds", "rank_above", "rank_at_most", "factor_above", "outputs"}


@cache
def rule_table(backend: str) -> dict:
    if backend not in RULE_BACKENDS:
        raise EffconvError(f"unknown backend '{backend}'.", f"use one of: {', '.join(RULE_BACKENDS)}.")
    with open(RULES_DIR / f"{backend}.yaml", encoding="utf-8") as handle:
        table = yaml.safe_load(handle)
    for rule in table["rules"]:
        _check_cost_side(rule, backend)
    return table


def _check_cost_side(rule: dict, backend: str) -> None:
    """A rule that rules out a unit must say how the estimate sees it, so the two cannot silently drift apart."""
    where = f"effconv/legalize/rules/{backend}.yaml rule '{rule['id']}'"
    if rule["illegal_on"] and ("cost_nodes" in rule) == ("cost_unseen" in rule):
        raise EffconvError(f"{where} needs exactly one of cost_nodes and cost_unseen.",
                           "list the costed ONNX nodes it concerns (cost_nodes), or say why that graph cannot show it (cost_unseen).")
    for matcher in rule.get("cost_nodes", ()):
        unknown = set(matcher) - COST_NODE_KEYS
        if unknown:
            raise EffconvError(f"{where}: unknown cost_nodes key(s) {sorted(unknown)}.", f"use only: {', '.join(sorted(COST_NODE_KEYS))}.")


def device_units(backend: str, device: str | None) -> list[str]:
    table = rule_table(backend)
    if device is None:
        return list(table["units"])
    if device not in table["devices"]:
        raise EffconvError(
            f"device '{device}' has no {backend} rules.", f"use one of: {', '.join(table['devices'])} (or omit --device)."
        )
    return list(table["devices"][device])


def op_name(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _tensor(value):
    return value if isinstance(value, torch.Tensor) else None


def node_facts(node: fx.Node) -> dict:
    """The properties rules test, read from the shapes torch.export recorded on the node."""
    inputs = [_tensor(arg.meta.get("val")) for arg in node.all_input_nodes]
    output = _tensor(node.meta.get("val"))
    tensors = [t for t in [*inputs, output] if t is not None]
    facts = {"op": op_name(node), "rank": max((t.dim() for t in tensors), default=0)}
    args = list(node.args)
    if facts["op"].startswith(("upsample", "_upsample")) and inputs and inputs[0] is not None and output is not None:
        before, after = inputs[0].shape[2:], output.shape[2:]
        facts["factor"] = max((a / b for a, b in zip(after, before) if b), default=1)
    if facts["op"] in ("conv2d", "conv3d", "convolution"):
        facts["grouped"] = bool(len(args) > 6 and isinstance(args[6], int) and args[6] > 1)
        dilation = args[5] if len(args) > 5 and isinstance(args[5], (list, tuple)) else [1]
        facts["dilation"] = max(dilation)
    if facts["op"].startswith("split"):
        pieces = node.meta.get("val")
        facts["pieces"] = len(pieces) if isinstance(pieces, (list, tuple)) else 0
    if facts["op"] == "pad":
        facts["mode"] = args[2] if len(args) > 2 else node.kwargs.get("mode", "constant")
    if facts["op"] == "repeat" and len(args) > 1:
        facts["zero_reps"] = any(r == 0 for r in args[1])
    return facts


def _matches(rule: dict, facts: dict) -> bool:
    if "ops" in rule and facts["op"] not in rule["ops"]:
        return False
    if facts["op"] in rule.get("except_ops", ()):
        return False
    if "rank_above" in rule and facts["rank"] <= rule["rank_above"]:
        return False
    if "factor_above" in rule and facts.get("factor", 1) <= rule["factor_above"]:
        return False
    if "dilation_above" in rule and facts.get("dilation", 1) <= rule["dilation_above"]:
        return False
    if "grouped" in rule and facts.get("grouped") != rule["grouped"]:
        return False
    if "pieces" in rule and facts.get("pieces") != rule["pieces"]:
        return False
    if "mode" in rule and facts.get("mode") != rule["mode"]:
        return False
    if "zero_reps" in rule and facts.get("zero_reps", False) != rule["zero_reps"]:
        return False
    return True


def op_facts(graph: fx.Graph) -> list[dict]:
    """The facts of every op node the rules judge (export's runtime asserts are not ops)."""
    return [node_facts(node) for node in graph.nodes if node.op == "call_function" and not op_name(node).startswith("_assert")]


def matching_rules(table: dict, facts: dict) -> list[dict]:
    return [rule for rule in table["rules"] if _matches(rule, facts)]


@dataclass
class OpRow:
    """One op kind: how many nodes, how many each unit cannot run, and why."""

    op: str
    count: int = 0
    illegal: dict[str, int] = field(default_factory=dict)
    blocking: int = 0
    why: list[str] = field(default_factory=list)
    fix: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class LintReport:
    backend: str
    device: str | None
    units: list[str]
    rows: list[OpRow]

    @property
    def blocking(self) -> list[OpRow]:
        return [row for row in self.rows if row.blocking]

    @property
    def problems(self) -> list[OpRow]:
        return [row for row in self.rows if row.why]

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "device": self.device,
            "units": self.units,
            "blocking": [row.op for row in self.blocking],
            "ops": [row.as_dict() for row in self.rows],
        }


def _add_unique(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def lint_graph(graph: fx.Graph, backend: str, device: str | None = None, applied: tuple[str, ...] = ()) -> LintReport:
    """Per-op legality. `applied`: rewrites already run on this graph; what they left is not theirs to fix."""
    table = rule_table(backend)
    units = device_units(backend, device)
    all_units = set(table["units"])
    rows: dict[str, OpRow] = {}
    for facts in op_facts(graph):
        row = rows.setdefault(facts["op"], OpRow(op=facts["op"], illegal={unit: 0 for unit in units}))
        row.count += 1
        ruled_out: set[str] = set()
        for rule in matching_rules(table, facts):
            ruled_out |= set(rule["illegal_on"])
            why = rule["why"].format(rank=facts["rank"], factor=facts.get("factor", 1))
            _add_unique(row.why, f"{rule['id']}: {why}")
            for rewrite in [f for f in rule.get("fix") or [] if f not in applied] or ["none"]:
                _add_unique(row.fix, rewrite)
            _add_unique(row.sources, rule["source"])
        for unit in units:
            row.illegal[unit] += unit in ruled_out
        row.blocking += ruled_out >= all_units
    ordered = sorted(rows.values(), key=lambda r: (-r.blocking, -sum(r.illegal.values()), r.op))
    return LintReport(backend=backend, device=device, units=units, rows=ordered)


def check_exportable(report: LintReport, stage: str) -> None:
    """Raise BackendBlocked when an op remains that no compute unit of the backend can run."""
    if not report.blocking:
        return
    names = ", ".join(f"{row.op} x{row.blocking}" for row in report.blocking)
    raise BackendBlocked(
        f"{report.backend} cannot run {names} {stage}.",
        f"see the table; run `effconv lint SPEC --backend {report.backend}` for the reasons and sources.",
        report,
    )


def lint_module(module, example: torch.Tensor, backend: str, device: str | None = None) -> LintReport:
    return lint_graph(export_graph(module, example).graph, backend, device)


@dataclass
class LintResult:
    before: LintReport
    after: LintReport
    rewrites: dict[str, int]

    def as_dict(self) -> dict:
        return {"before_rewrites": self.before.as_dict(), "after_rewrites": self.after.as_dict(), "rewrites": self.rewrites}


def lint_model(model, backend: str, device: str | None = None) -> LintResult:
    """Lint a loaded model part as exported, and again after the backend's legalizing rewrites."""
    example = model.example_input(0)
    before = lint_module(model.module, example, backend, device)
    rewrites = rewrites_for(backend)
    legal = legalize(model.module, example, rewrites) if rewrites else None
    # effconv's replacement functions appear as single nodes; they are legal by construction.
    after = lint_graph(legal.module.graph, backend, device, tuple(legal.counts)) if legal else before
    return LintResult(before=before, after=after, rewrites=legal.counts if legal else {})


SPEC_SUFFIXES = (".yaml", ".yml")


def lint_target(path: Path, backend: str, device: str | None = None, allow_import: bool = False) -> LintResult:
    """Lint a spec, or an artifact through the graph it was exported from (its manifest's spec).

    Artifacts are not re-parsed op by op: the rules are written for the ATen graph, and an
    artifact's manifest records exactly which spec (and so which graph) it came from.
    """
    rule_table(backend)
    device_units(backend, device)
    path = Path(path)
    if path.suffix not in SPEC_SUFFIXES:
        if not path.exists():
            raise EffconvError(f"artifact '{path}' does not exist.", "pass an artifact effconv wrote, or a spec YAML.")
        manifest = read_manifest(manifest_path(path))
        loaded = spec_from_dict(manifest.spec, path.resolve().parent, source=str(manifest_path(path)))
    else:
        loaded = load_spec(path)
    return lint_model(load_model(loaded, allow_import=allow_import), backend, device)
