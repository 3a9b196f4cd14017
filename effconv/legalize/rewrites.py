"""Named lossless rewrites that make an exported graph legal for Core ML and TFLite.

diffusers writes the ops that mobile backends lack (8-D permutes, nearest-exact resizes, 3D
nearest upsampling, `pow`) inline in forward methods, next to caching logic such as Wan's
per-frame feature cache. So the rewrites act on the graph `torch.export` traces from the module,
not on module classes: each pass replaces matching op nodes by the equivalent functions in
`effconv.legalize.ops` and returns how many it replaced. The result is again an
`nn.Module` (an fx GraphModule), checked against the original on the real input shape.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx, nn

from effconv.errors import EffconvError
from effconv.quiet import captured_stdout
from effconv.legalize import ops as legal_ops

aten = torch.ops.aten
MAX_RANK = 5
EQUIVALENCE_ATOL = 1e-4

RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
            aten.unflatten.int, aten.squeeze.dim, aten.unsqueeze.default}
PERMUTES = {aten.permute.default, aten.transpose.int, aten.movedim.int}
COPIES = {aten.contiguous.default, aten.clone.default}
LAYOUT_OPS = RESHAPES | PERMUTES | COPIES
NEAREST_UPSAMPLES = {aten.upsample_nearest3d.vec, aten.upsample_nearest2d.vec,
                     aten._upsample_nearest_exact2d.vec, aten._upsample_nearest_exact3d.vec}
LTX_SHUFFLE_PERM = (0, 1, 5, 2, 6, 3, 7, 4)


@dataclass(frozen=True)
class Rewrite:
    name: str
    reason: str
    backends: tuple[str, ...]
    apply: Callable[[fx.GraphModule], int]


def _value(node) -> torch.Tensor | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _rank(node) -> int:
    value = _value(node)
    return value.dim() if value is not None else 0


def _shape(node) -> list[int]:
    return [int(d) for d in _value(node).shape]


def _calls(graph: fx.Graph, targets) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and n.target in targets]


def _replace(graph: fx.Graph, old: fx.Node, function, args: tuple) -> fx.Node:
    with graph.inserting_before(old):
        new = graph.call_function(function, args)
    new.meta["val"] = old.meta.get("val")
    old.replace_all_uses_with(new)
    return new


def stack_of_selects_as_permute(gm: fx.GraphModule) -> int:
    """`stack([x.select(d, 0), ..., x.select(d, n-1)], k)` is `x.movedim(d, k)` (Wan's time upsampler)."""
    count = 0
    for node in _calls(gm.graph, {aten.stack.default}):
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        if not parts or not all(isinstance(p, fx.Node) and p.target == aten.select.int for p in parts):
            continue
        source, axis = parts[0].args[0], parts[0].args[1] % _rank(parts[0].args[0])
        in_order = all(p.args[0] is source and p.args[1] % _rank(source) == axis
                       and p.args[2] % _shape(source)[axis] == i for i, p in enumerate(parts))
        if in_order and len(parts) == _shape(source)[axis]:
            _replace(gm.graph, node, aten.movedim.int, (source, axis, dim % _rank(node)))
            count += 1
    return count


def _layout_steps(chain: list[fx.Node]) -> list:
    steps: list = []
    for node in chain:
        if node.target in COPIES:
            continue
        if node.target in RESHAPES:
            if steps and steps[-1][0] == "reshape":
                steps.pop()
            steps.append(("reshape", tuple(_shape(node))))
            continue
        rank = _rank(node.args[0])
        order = list(range(rank))
        if node.target == aten.permute.default:
            order = [axis % rank for axis in node.args[1]]
        elif node.target == aten.transpose.int:
            a, b = node.args[1] % rank, node.args[2] % rank
            order[a], order[b] = order[b], order[a]
        else:
            order.insert(node.args[2] % rank, order.pop(node.args[1] % rank))
        steps.append(("permute", tuple(order)))
    return steps


def _high_rank_chains(gm: fx.GraphModule) -> list[tuple[fx.Node, list[fx.Node]]]:
    """Chains of layout ops that go above rank 5 from a rank <= 5 input and come back down."""
    chains = []
    for node in _calls(gm.graph, LAYOUT_OPS):
        source = node.args[0]
        if _rank(node) <= MAX_RANK or not isinstance(source, fx.Node) or _rank(source) > MAX_RANK:
            continue
        chain = [node]
        while _rank(chain[-1]) > MAX_RANK:
            users = list(chain[-1].users)
            if len(users) != 1 or users[0].target not in LAYOUT_OPS or users[0].args[0] is not chain[-1]:
                break
            chain.append(users[0])
        if _rank(chain[-1]) <= MAX_RANK:
            chains.append((source, chain))
    return chains


def _shuffle_factors(source: fx.Node, steps: list) -> tuple[int, int, int] | None:
    if len(steps) != 3 or steps[1] != ("permute", LTX_SHUFFLE_PERM) or len(steps[0][1]) != 8:
        return None
    batch, channels, s_t, s_h, s_w, frames, height, width = steps[0][1]
    expected = [batch, channels, frames * s_t, height * s_h, width * s_w]
    if _shape(source) == [batch, channels * s_t * s_h * s_w, frames, height, width] and list(steps[2][1]) == expected:
        return s_t, s_h, s_w
    return None


def depth_to_space_as_decoupled_shuffle(gm: fx.GraphModule) -> int:
    count = 0
    for source, chain in _high_rank_chains(gm):
        factors = _shuffle_factors(source, _layout_steps(chain))
        if factors:
            _replace(gm.graph, chain[-1], legal_ops.depth_to_space_3d, (source, *factors))
            count += 1
    return count


def layout_chains_rank4(gm: fx.GraphModule) -> int:
    count = 0
    for source, chain in _high_rank_chains(gm):
        _replace(gm.graph, chain[-1], legal_ops.layout_chain, (source, _layout_steps(chain), _shape(chain[-1])))
        count += 1
    return count


def nearest_upsample_legal(gm: fx.GraphModule) -> int:
    count = 0
    for node in _calls(gm.graph, NEAREST_UPSAMPLES):
        before, after = _shape(node.args[0])[2:], _shape(node)[2:]
        if any(a % b for a, b in zip(after, before)):
            continue
        _replace(gm.graph, node, legal_ops.upsample_nearest, (node.args[0], [a // b for a, b in zip(after, before)]))
        count += 1
    return count


def group_norm_rank3(gm: fx.GraphModule) -> int:
    count = 0
    for node in _calls(gm.graph, {aten.group_norm.default}):
        if _rank(node) <= 4:
            continue
        x, groups, weight, bias, eps = (list(node.args) + [None, None, 1e-5])[:5]
        _replace(gm.graph, node, legal_ops.group_norm_rank3, (x, groups, weight, bias, eps))
        count += 1
    return count


def repeat_interleave_low_rank(gm: fx.GraphModule) -> int:
    count = 0
    for node in _calls(gm.graph, {aten.repeat_interleave.self_int}):
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        if dim is None or not isinstance(node.args[1], int):
            continue
        _replace(gm.graph, node, legal_ops.repeat_interleave_low_rank, (node.args[0], node.args[1], dim))
        count += 1
    return count


def replicate_pad_as_concat(gm: fx.GraphModule) -> int:
    count = 0
    for node in _calls(gm.graph, {aten.pad.default}):
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        pad = list(node.args[1])
        if mode != "replicate" or any(p < 0 for p in pad):
            continue
        _replace(gm.graph, node, legal_ops.replicate_pad, (node.args[0], pad))
        count += 1
    return count


def pow_as_multiply(gm: fx.GraphModule) -> int:
    count = 0
    for node in _calls(gm.graph, {aten.pow.Tensor_Scalar}):
        if node.args[1] == 2:
            _replace(gm.graph, node, legal_ops.square, (node.args[0],))
            count += 1
    return count


def channel_mean_as_conv(gm: fx.GraphModule) -> int:
    """A float mean over channels that keeps the dim (the students' RMSNorm) -> a 1x1 convolution with constant
    weights 1/C: XNNPACK's mean takes only the H and W axes of a 4-D tensor, so in ExecuTorch every RMSNorm left
    the delegate and split the program around it."""
    count = 0
    for node in _calls(gm.graph, {aten.mean.dim}):
        x, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        rank, value = _rank(x), _value(x)
        if (rank < 3 or not keepdim or node.kwargs.get("dtype") is not None or value.dtype != torch.float32
                or [d % rank for d in ([dims] if isinstance(dims, int) else dims)] != [1]):
            continue
        channels = _shape(x)[1]
        name = f"channel_mean_weight_{channels}"
        if not hasattr(gm, name):
            gm.register_buffer(name, torch.full((1, channels, 1, 1), 1.0 / channels))
        with gm.graph.inserting_before(node):
            weight = gm.graph.get_attr(name)
        _replace(gm.graph, node, legal_ops.channel_mean_as_conv, (x, weight))
        count += 1
    return count


def empty_concat_inputs(gm: fx.GraphModule) -> int:
    """Drop zero-size pieces from concatenations (a causal pad of 0 frames is `repeat` with 0 reps)."""
    count = 0
    for node in _calls(gm.graph, {aten.cat.default, aten.concatenate.default}):
        parts = list(node.args[0])
        kept = [p for p in parts if _value(p) is None or _value(p).numel() > 0]
        if kept and len(kept) < len(parts):
            dim = node.args[1] if len(node.args) > 1 else 0
            _replace(gm.graph, node, aten.cat.default, (kept, dim))
            count += 1
    return count


def alias_as_identity(gm: fx.GraphModule) -> int:
    """`alias` (a view of the whole tensor, from CogVideoX's conv cache) is the tensor itself."""
    nodes = _calls(gm.graph, {aten.alias.default})
    for node in nodes:
        node.replace_all_uses_with(node.args[0])
    return len(nodes)


def single_split_as_identity(gm: fx.GraphModule) -> int:
    """A split that yields one piece (Mochi's chunked GroupNorm on batch 1) is the tensor itself."""
    count = 0
    for node in _calls(gm.graph, {aten.split.Tensor, aten.split_with_sizes.default}):
        pieces = node.meta.get("val")
        users = list(node.users)
        if not isinstance(pieces, (list, tuple)) or len(pieces) != 1:
            continue
        if not all(user.target is operator.getitem and user.args[1] == 0 for user in users):
            continue
        for user in users:
            user.replace_all_uses_with(node.args[0])
        count += 1
    return count


def _conv3d_nodes(gm: fx.GraphModule, grouped: bool) -> list[fx.Node]:
    nodes = []
    for node in _calls(gm.graph, {aten.conv3d.default}):
        args = list(node.args) + [None] * (7 - len(node.args))
        groups = args[6] or 1
        if isinstance(args[4], str) or (groups > 1) != grouped:
            continue
        nodes.append(node)
    return nodes


def _triple(values) -> list[int]:
    values = list(values)
    return values * 3 if len(values) == 1 else values


def _module_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner = gm
    for name in target.split("."):
        owner = getattr(owner, name)
    return owner


def _drop_attr(gm: fx.GraphModule, target: str) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = _module_attr(gm, owner_path) if owner_path else gm
    delattr(owner, name)


def _prepared_weight(gm: fx.GraphModule, weight: fx.Node, groups: int):
    """The Conv3d weight in 2D form. A module constant (get_attr) is reshaped now and stored as new constants,
    so every exporter sees plain Conv2d weights (ExecuTorch's XNNPACK partitioner delegates only convolutions
    whose weights are constants: computed in the graph, 38 of 38 convs of a small student stayed on the
    portable kernels, 56x slower); a weight computed at run time is reshaped in the graph."""
    if weight.op != "get_attr":
        with gm.graph.inserting_after(weight):
            return gm.graph.call_function(legal_ops.conv3d_weight_for_conv2d, (weight, groups))
    prepared = legal_ops.conv3d_weight_for_conv2d(_module_attr(gm, weight.target).detach(), groups)
    tensors = [prepared] if groups == 1 else list(prepared)
    nodes = []
    for index, tensor in enumerate(tensors):
        name = f"{weight.target.replace('.', '_')}_as_conv2d{'' if groups == 1 else f'_tap{index}'}"
        gm.register_buffer(name, tensor.contiguous().clone())
        with gm.graph.inserting_after(weight):
            nodes.append(gm.graph.get_attr(name))
    return nodes[0] if groups == 1 else tuple(nodes)


def _conv3d_to_2d(gm: fx.GraphModule, grouped: bool) -> int:
    """Replace Conv3d nodes; each weight is prepared for 2D once, however many calls share it (Wan decodes
    frame by frame), and the original 3-D weight leaves the module when nothing else reads it."""
    nodes = _conv3d_nodes(gm, grouped)
    prepared: dict[tuple, object] = {}
    for node in nodes:
        x, weight, bias, stride, padding, dilation, groups = (list(node.args) + [None] * 7)[:7]
        groups = groups or 1
        key = (weight, groups)
        if key not in prepared:
            prepared[key] = _prepared_weight(gm, weight, groups)
        kernel_t = _shape(weight)[2]
        _replace(gm.graph, node, legal_ops.conv3d_frames_as_conv2d,
                 (x, prepared[key], bias, kernel_t, _triple(stride or [1]), _triple(padding or [0]),
                  _triple(dilation or [1]), groups))
        gm.graph.erase_node(node)
    for weight, _ in prepared:
        if weight.op == "get_attr" and not weight.users:
            target = weight.target
            gm.graph.erase_node(weight)
            if not any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
                _drop_attr(gm, target)
    return len(nodes)


def dense_conv3d_as_conv2d(gm: fx.GraphModule) -> int:
    return _conv3d_to_2d(gm, grouped=False)


def grouped_conv3d_as_conv2d_taps(gm: fx.GraphModule) -> int:
    return _conv3d_to_2d(gm, grouped=True)


REWRITES: dict[str, Rewrite] = {
    rewrite.name: rewrite
    for rewrite in (
        Rewrite("stack-as-permute", "a stack of all slices along one axis is a permute; exposes Wan's rank-6 "
                "time interleave to the rank rewrites", ("coreml", "tflite", "executorch"), stack_of_selects_as_permute),
        Rewrite("shuffle-decoupled", "8-D depth-to-space permute (LTX, Mochi upsamplers) -> rank-5 decoupled "
                "pixel shuffle (temporal shuffle, then 2D pixel_shuffle)", ("coreml", "tflite", "executorch"),
                depth_to_space_as_decoupled_shuffle),
        Rewrite("legalize-rank5", "reshape/permute chains above rank 5 -> the same data movement as rank-4 "
                "block transposes (Core ML allows rank <= 5)", ("coreml", "tflite", "executorch"), layout_chains_rank4),
        Rewrite("upsample-nearest", "3D nearest and nearest-exact resizes -> 2D nearest resize + rank-5 time "
                "repeat (identical for integer factors)", ("coreml", "tflite", "executorch"), nearest_upsample_legal),
        Rewrite("groupnorm-rank3", "5-D GroupNorm -> normalize on a (B, groups, rest) view, so no rank-6 "
                "reshape is created", ("coreml",), group_norm_rank3),
        Rewrite("repeat-interleave-rank3", "repeat_interleave -> a rank-3 broadcast; the stock lowering "
                "unsqueezes a 5-D tensor to rank 6", ("coreml", "tflite", "executorch"), repeat_interleave_low_rank),
        Rewrite("replicate-pad-as-concat", "replicate padding -> concatenated copies of the edge frames/rows "
                "(the stock lowering is a gather)", ("coreml", "tflite", "executorch"), replicate_pad_as_concat),
        Rewrite("pow-as-mul", "x ** 2 -> x * x (TFLite has no legal POW for float tensors)", ("coreml", "tflite", "executorch"),
                pow_as_multiply),
        Rewrite("channel-mean-as-conv", "mean over channels (RMSNorm) -> a 1x1 Conv2d with weights 1/C; XNNPACK's "
                "mean takes only H and W of a 4-D tensor", ("executorch",), channel_mean_as_conv),
        Rewrite("drop-empty-concat", "zero-frame pieces of a concatenation (0-rep repeat) are removed",
                ("coreml", "tflite", "executorch"), empty_concat_inputs),
        Rewrite("alias-as-identity", "alias (a full view) -> the tensor itself; coremltools has no alias "
                "converter", ("coreml", "tflite", "executorch"), alias_as_identity),
        Rewrite("single-split-as-identity", "a split into one piece -> the tensor itself; litert-torch fails on "
                "one-piece split_with_sizes", ("coreml", "tflite", "executorch"), single_split_as_identity),
        Rewrite("conv3d-as-conv2d", "dense Conv3d -> one Conv2d over time-shifted frames stacked on channels "
                "(XNNPACK, GPU delegate and int8 have no CONV_3D)", ("tflite", "executorch"), dense_conv3d_as_conv2d),
        Rewrite("dwconv3d-as-conv2d-taps", "grouped/depthwise Conv3d -> sum of grouped Conv2d, one per temporal "
                "tap", ("tflite", "executorch"), grouped_conv3d_as_conv2d_taps),
    )
}


def rewrites_for(backend: str) -> list[Rewrite]:
    return [rewrite for rewrite in REWRITES.values() if backend in rewrite.backends]


def resolve(names: list[str]) -> list[Rewrite]:
    unknown = [name for name in names if name not in REWRITES]
    if unknown:
        raise EffconvError(f"unknown rewrite(s): {', '.join(unknown)}.", f"use any of: {', '.join(REWRITES)}.")
    return [REWRITES[name] for name in names]


Example = torch.Tensor | tuple[torch.Tensor, ...]


def as_args(example: Example) -> tuple[torch.Tensor, ...]:
    """A module's positional inputs: one tensor (a decoder's latent) or several (a streaming step's latent, flag
    and caches)."""
    return example if isinstance(example, tuple) else (example,)


def as_names(names: str | list[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _as_outputs(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def export_graph(module: nn.Module, example: Example) -> fx.GraphModule:
    """The module as an fx graph of ATen ops, with shapes on every node (node.meta['val'])."""
    with torch.no_grad(), captured_stdout():
        graph = torch.export.export(module, as_args(example)).module()
    graph.training = False  # exported graphs refuse .eval(); converters read this flag
    return graph


def apply_rewrites(gm: fx.GraphModule, rewrites: list[Rewrite]) -> dict[str, int]:
    counts = {}
    for rewrite in rewrites:
        counts[rewrite.name] = rewrite.apply(gm)
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return counts


@dataclass
class Legalized:
    module: fx.GraphModule
    counts: dict[str, int]
    max_abs_err: float

    def report(self) -> dict:
        return {
            "rewrites": self.counts,
            "equivalence": {"max_abs_err": self.max_abs_err, "atol": EQUIVALENCE_ATOL,
                            "passed": self.max_abs_err <= EQUIVALENCE_ATOL, "dtype": "float32"},
        }


def legalize(module: nn.Module, example: Example, rewrites: list[Rewrite]) -> Legalized:
    """Export, rewrite, and check the rewritten graph against the original module on `example` (every output)."""
    gm = export_graph(module, example)
    counts = apply_rewrites(gm, rewrites)
    with torch.no_grad():
        references, rewrittens = _as_outputs(module(*as_args(example))), _as_outputs(gm(*as_args(example)))
    error = max((float((a.double() - b.double()).abs().max()) if a.shape == b.shape else float("inf")
                 for a, b in zip(references, rewrittens)), default=0.0) if len(references) == len(rewrittens) else float("inf")
    return Legalized(module=gm, counts=counts, max_abs_err=error)
