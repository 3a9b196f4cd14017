"""Hostile inputs for the reliability suite: seeded YAML, JSON-tree and byte mutations, a sandbox that
checks what every bad input must leave behind (exit 0 or a one-line exit 2, nothing written outside
--out, --out untouched unless the command succeeded), and a cap on memory while those tests run."""

from __future__ import annotations

import copy
import math
import random
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from effconv.artifacts import STAGING_PREFIX
from effconv.profile.device import host_cpu

from conftest import SPECS

HUGE_NUMBERS = [10**12, 2**63, 10**100, -(10**12), 1e308]
EDGE_NUMBERS = [0, -1, -0.5, 0.5, 1e-300, math.nan, math.inf, -math.inf, True]
HOSTILE_STRINGS = [
    "", " ", "../x", "/abs", "../../etc/passwd", "a/../../b", "~/x", ".", "..", "-rf", "--help",
    "héllo-ünïcode", "名前", "🙂", "\u202eevil", "a\u200bb", "x" * 100_000, "a\nb", "%s%n", "${HOME}", "*",
]
TYPE_SWAPS = [None, [], {}, [1, 2], {"a": 1}, "text", 3, 2.5, False, [[[]]], {"nested": {"deep": [None]}}]
MUTATIONS_PER_CASE = (1, 3)


def _paths(tree, prefix=()):
    """Every address (tuple of keys / indices) of a node in a parsed YAML tree, the root included."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _paths(value, prefix + (index,))


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _replacement(rng: random.Random, current):
    pool = rng.choice([HUGE_NUMBERS, EDGE_NUMBERS, HOSTILE_STRINGS, TYPE_SWAPS])
    value = copy.deepcopy(rng.choice(pool))
    if isinstance(current, (int, float)) and not isinstance(current, bool) and rng.random() < 0.3:
        value = rng.choice([-current, current * 10**9, 0])
    return value


def mutate_tree(tree, rng: random.Random, focus: tuple = ()):
    """One structural mutation: replace a value, delete or rename a key, duplicate a list item, or
    wrap the node in a list, somewhere below `focus` (a path prefix) when that node exists. The root
    itself may be replaced (a list, a scalar, None)."""
    tree = copy.deepcopy(tree)
    paths = list(_paths(tree))
    focused = [path for path in paths if len(path) > len(focus) and path[: len(focus)] == focus]
    path = rng.choice(focused or paths)
    if not path:
        return rng.choice([[tree], "just a scalar", 42, None, []])
    parent, key = _get(tree, path[:-1]), path[-1]
    action = rng.choice(["replace", "replace", "replace", "delete", "rename", "duplicate", "wrap"])
    if action == "replace":
        parent[key] = _replacement(rng, parent[key])
    elif action == "delete":
        del parent[key]
    elif action == "rename" and isinstance(parent, dict):
        parent[rng.choice(HOSTILE_STRINGS[:12]) or "unknown_key"] = parent.pop(key)
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    else:
        parent[key] = [parent[key]]
    return tree


def mutate_text(text: str, rng: random.Random) -> str:
    """One textual mutation: YAML the parser may reject (truncation, stray bytes, broken indentation,
    duplicated keys, anchors)."""
    lines = text.splitlines()
    action = rng.choice(["truncate", "insert", "dup-line", "drop-line", "indent", "anchor-bomb", "tab"])
    if action == "truncate":
        return text[: rng.randrange(len(text) + 1)]
    if action == "insert":
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(["{", "[", ":", "- ", "&a ", "*a", "!!python/object:os.system ", "'", '"', "\x00", "\ufeff"]) + text[at:]
    if action == "dup-line" and lines:
        at = rng.randrange(len(lines))
        lines.insert(at, lines[at])
    elif action == "drop-line" and lines:
        del lines[rng.randrange(len(lines))]
    elif action == "indent" and lines:
        at = rng.randrange(len(lines))
        lines[at] = " " * rng.choice([1, 3, 7]) + lines[at]
    elif action == "anchor-bomb":
        return billion_laughs(depth=rng.choice([6, 9])) + text
    else:
        at = rng.randrange(len(lines) or 1)
        lines[at:at] = ["\t" + (lines[at] if lines else "x")]
    return "\n".join(lines) + "\n"


def billion_laughs(depth: int = 9, key: str = "lol") -> str:
    """YAML whose aliases expand to 9**depth leaves if anything walks it as a tree."""
    rows = [f"{key}0: &{key}0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"{key}{i}: &{key}{i} [" + ", ".join([f"*{key}{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "\n".join(rows) + "\n"


def mutated_yaml(source: Path, seed: str, focus: tuple = ()) -> str:
    """A seeded hostile variant of a YAML file: structural mutations (1-3, below `focus` if given),
    sometimes then a textual one."""
    rng = random.Random(seed)
    text = source.read_text(encoding="utf-8")
    tree = yaml.safe_load(text)
    for _ in range(rng.randint(*MUTATIONS_PER_CASE)):
        tree = mutate_tree(tree, rng, focus)
    out = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=1 << 20)
    if rng.random() < 0.25:
        out = mutate_text(out, rng)
    return out


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Relative path -> (kind, size, mtime) for everything under root except `skip` (the --out dir)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        info = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        state[str(path.relative_to(root))] = (kind, info.st_size if kind == "file" else 0, info.st_mtime_ns)
    return state


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_clean_outcome(code: int, err: str, allowed=(0, 2)) -> None:
    """Exit 0 (the mutation happened to be valid) or exit 2 with exactly one 'error: ... Fix: ...' line."""
    assert code in allowed, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    if code == 2:
        lines = error_lines(err)
        assert len(lines) == 1, err[-2000:]
        assert lines[0].startswith("error: ") and "Fix:" in lines[0], lines[0]
        # exit 2 because an allocation failed means effconv's size guards let a memory bomb through
        assert "allocate memory" not in lines[0], lines[0]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One binary mutation: truncate, flip a few bytes, zero a run, or splice in random bytes."""
    action = rng.choice(["truncate", "flip", "zero", "splice"])
    at = rng.randrange(len(data) + 1)
    if action == "truncate":
        return data[:at]
    if action == "zero":
        return data[:at] + bytes(min(4096, len(data) - at)) + data[at + 4096:]
    if action == "splice":
        return data[:at] + rng.randbytes(rng.choice([1, 16, 4096])) + data[at:]
    flipped = bytearray(data)
    for _ in range(rng.choice([1, 8, 64])):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped)


@dataclass
class Sandbox:
    """A tmp dir with inputs in `in/`, the working directory `cwd/` and the --out dir `out/`: `run`
    checks that a command changed nothing outside out/, and out/ not at all unless it exited 0."""

    root: Path
    cli: object

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def run(self, *args, allowed=(0, 2)) -> tuple[int, str, str]:
        outside, inside = snapshot(self.root, skip=self.out), snapshot(self.out) if self.out.exists() else None
        code, stdout, err = self.cli(*args)
        assert_clean_outcome(code, err, allowed)
        assert snapshot(self.root, skip=self.out) == outside, "a file outside --out changed"
        if code != 0:
            assert (snapshot(self.out) if self.out.exists() else None) == inside, "a failed command changed --out"
        if self.out.exists():
            assert not list(self.out.glob(STAGING_PREFIX + "*")), "a staging directory was left in --out"
        return code, stdout, err


@pytest.fixture
def sandbox(tmp_path, monkeypatch, cli) -> Sandbox:
    for name in ("in", "cwd"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv(host_cpu.CACHE_ENV, str(tmp_path.parent / f"{tmp_path.name}-cache"))
    return Sandbox(tmp_path, cli)


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory) -> Path:
    """hunyuan-tiny exported by `effconv convert` (the .onnx with its manifest), built once per module."""
    from effconv.convert.stage import convert
    from effconv.spec import load_spec

    out = tmp_path_factory.mktemp("artifact")
    manifest = convert(load_spec(SPECS / "hunyuan-tiny.yaml"), "onnx", out)
    return out / manifest.artifact


@pytest.fixture(scope="module")
def student_spec(tmp_path_factory) -> Path:
    """The hunyuan-tiny student as `effconv rewrite --recipe tiny` writes it (spec, weights, manifest), built once per module."""
    from effconv.rewrite.stage import rewrite
    from effconv.spec import load_spec

    out = tmp_path_factory.mktemp("student")
    manifest = rewrite(load_spec(SPECS / "hunyuan-tiny.yaml"), "tiny", out)
    return out / f"{manifest.name}.yaml"


def copy_student(spec: Path, directory: Path) -> Path:
    """The student's spec, manifest and weights directory, copied so a test may damage them."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in (spec, spec.with_suffix(".json")):
        shutil.copy(path, directory / path.name)
    shutil.copytree(spec.with_suffix(""), directory / spec.stem)
    return directory / spec.name


def copy_artifact(artifact: Path, directory: Path) -> Path:
    """The artifact and its manifest, copied so a test may damage them."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in (artifact, artifact.with_suffix(".json")):
        shutil.copy(path, directory / path.name)
    return directory / artifact.name


# Room above what the process already maps: a memory bomb that slips past effconv's guards then
# fails with an allocation error (which assert_clean_outcome rejects) instead of exhausting a shared machine.
ADDRESS_SPACE_HEADROOM = 6 << 30


@pytest.fixture(autouse=True, scope="module")
def capped_memory():
    with AddressSpaceCap(ADDRESS_SPACE_HEADROOM):
        yield


class AddressSpaceCap:
    """Caps this process's address space for a block, so a memory bomb that slips past effconv's
    guards fails with an allocation error instead of waking the OOM killer on a shared machine."""

    def __init__(self, extra_bytes: int):
        self.extra_bytes = extra_bytes

    def __enter__(self):
        self.previous = resource.getrlimit(resource.RLIMIT_AS)
        vm_bytes = _virtual_memory_bytes()
        if vm_bytes is not None:
            cap = vm_bytes + self.extra_bytes
            hard = self.previous[1]
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.previous)


def _virtual_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
