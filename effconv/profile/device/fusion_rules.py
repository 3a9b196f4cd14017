"""A runtime's fusion rules: which ops it runs as one kernel, as data (effconv.profile.estimate.fusion applies them).

A runtime's rules are data (`effconv/device_profiles/fusion/<name>.yaml`, each rule with its public source); a
device profile's unit names the rules its runtime applies per backend (`ComputeUnit.fusion`). Three kinds of rule:

- `epilogues`: an op joins the kernel of the op that produced one of its inputs when the kernel's first op (its root)
  and the joining op match a rule (a convolution's activation, a clamp after an add), and, where the rule says
  `lone_consumer`, when the joining op is the only reader of that input.
- `halo`: a padding op (and the `Slice`s that feed only it) whose output only convolutions read is the convolution's
  halo read, not a copy: it moves no bytes of its own (the convolution reads the padded extent).
- `free`: view kinds that are no kernel at all in this runtime (quantize/dequantize pairs that become an int8
  kernel's tensor parameters): no dispatch.
- `in_place`: ops whose inputs their producers write straight into the op's output (a concatenation whose inputs
  are slices of its output buffer): no kernel and no bytes of its own.

Only what a runtime's public source shows is a rule, or what public on-device measurements show where the compiler is
closed (the rule's source says so and names them): what a compiler may fuse beyond that is not assumed (the rules
files say what is not public).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from pydantic import Field, ValidationError, field_validator

from effconv.errors import EffconvError
from effconv.profile.graph.costs import CATEGORIES, CONV_CATEGORIES, NodeCost
from effconv.spec import StrictModel, format_validation_error, read_yaml_mapping


def _known(selectors: list[str]) -> list[str]:
    """Selectors are op categories (lower case: `elementwise`) or op kinds (as graph/costs.py names them: `Silu`, `Add`)."""
    for selector in selectors:
        if selector.islower() and selector not in CATEGORIES:
            raise ValueError(f"unknown op category '{selector}' (categories: {', '.join(CATEGORIES)}; kinds start upper case)")
    return selectors


class Epilogue(StrictModel):
    into: list[str] = Field(min_length=1, description="categories or kinds of the kernel's first op")
    fuse: list[str] = Field(min_length=1, description="categories or kinds of the ops that join that kernel")
    lone_consumer: bool = Field(False, description="the joining op must be the only reader of the kernel's tensor it reads")
    source: str = Field(min_length=3, description="where the runtime says so: a URL, or a repository path and symbol")

    @field_validator("into", "fuse")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        return _known(value)

    def joins(self, root: NodeCost, node: NodeCost) -> bool:
        return matches(self.into, root) and matches(self.fuse, node)


class Halo(StrictModel):
    kinds: list[str] = Field(min_length=1, description="padding ops (Concat, Pad) and the Slices that only feed them")
    into: list[str] = Field(default_factory=lambda: list(CONV_CATEGORIES), description="the readers they fold into")
    source: str = Field(min_length=3)

    @field_validator("kinds", "into")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        return _known(value)


class FreeViews(StrictModel):
    kinds: list[str] = Field(min_length=1, description="view kinds that are not kernels in this runtime")
    source: str = Field(min_length=3)


class InPlace(StrictModel):
    kinds: list[str] = Field(min_length=1, description="ops whose producers write into their output (Concat)")
    source: str = Field(min_length=3)


class FusionRules(StrictModel):
    name: str
    runtime: str = Field(description="the runtime and compiler these rules describe, with its version where it matters")
    epilogues: list[Epilogue] = Field(default_factory=list)
    halo: Halo | None = None
    free: FreeViews | None = None
    in_place: InPlace | None = None
    not_fused: str = Field(min_length=3, description="what this runtime is known not to fuse, and what is not public")


def matches(selectors: list[str], node: NodeCost) -> bool:
    return node.category in selectors or node.kind in selectors


def rules_dir():
    return resources.files("effconv") / "device_profiles" / "fusion"


def rule_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in rules_dir().iterdir() if p.name.endswith(".yaml"))


@cache
def load_rules(name: str) -> FusionRules:
    if name not in rule_names():
        raise EffconvError(f"unknown fusion rules '{name}'.", f"use one of: {', '.join(rule_names())}.")
    path = rules_dir() / f"{name}.yaml"
    with resources.as_file(path) as real_path:
        data = read_yaml_mapping(real_path, "fusion rules")
    try:
        return FusionRules.model_validate(data)
    except ValidationError as exc:
        error = format_validation_error(exc, str(path))
        raise EffconvError(error.message, error.fix) from None
