"""Every measured figure in README.md and docs/*.md is tied to the results file it comes from.

A figure is followed by a marker, `1.74x<!--= distill_quality_300.json ort_speedup -->`, naming a JSON
file (a bare name is in benchmarks/results/, a name with a slash is relative to the repository) and
either a path into it (keys and list indices separated by `/`) or an expression over such paths in
braces, `{retention} * 100`, with `*` in a path for every item and min/max/abs/round to combine them.
The quoted figure must be the value rounded to the digits the text shows, and the file must be named
in the visible text of the same paragraph, list item or table (with the paragraph before it), so a
remeasurement that changes a number fails here until the text follows.

In the measured sections listed in MEASURED_SECTIONS, a number with a unit (ms, s, x, %, dB, MB, ...)
without a marker fails: a new figure cannot slip in unchecked. A number there that is a goal or a
setting rather than a measurement says so with `<!--=const-->` right after it.
"""

from __future__ import annotations

import ast
import json
import math
import re
from functools import cache
from pathlib import Path

import pytest

from doc_tables import TABLE_MARKER, TABLES, cells

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

MARKER = re.compile(r"<!--=\s*(?P<file>[^\s>]+\.json)\s+(?P<expr>.*?)\s*-->", re.S)
CONST = re.compile(r"<!--=const\s*-->")
ANY_MARKER = re.compile(r"<!--=.*?-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
# The figure a marker checks: the last number before it, with at most a unit and emphasis in between.
# A '-' right after a digit is a range ("0.59-4.70x"), not a sign.
FIGURE = re.compile(r"(?P<num>(?:(?<![\w.])-)?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?)(?P<tail>[^\d<>]{0,16})$")
# A number with a measurement unit, in the sections that must mark every figure.
UNITS = r"(?:ms|s|min|minutes?|seconds?|hours?|x|%|dB|MB|GB|KB|kB|GiB|MiB|M|k|GFLOP/s|steps/s|us|ns)(?![\w/])"
NUMBER = r"(?<![\w.#/])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?"
# A number with a unit, or the first number of a range or comparison whose second one has the unit ("1.47 vs 1.05 steps/s").
UNIT_FIGURE = re.compile(rf"{NUMBER}(?:\s?{UNITS}|(?=(?:-| to | vs )\d[\d,.]*\s?{UNITS}))\**\)?")

# Headings whose whole section (to the next heading of the same or a higher level) must mark every figure.
MEASURED_SECTIONS = {
    "README.md": ["## Set up and run (two commands)", "## Test", "## Measured (this repository, 2-core CPU)"],
    "docs/streaming.md": ["## Measured (`benchmarks/streaming.py`, `benchmarks/results/streaming_256x256.json`)"],
    "docs/backends.md": ["## Legalizing rewrites", "## `effconv convert --to coreml`", "## `effconv convert --to executorch`",
                         "## Apple Core AI (not a backend yet)"],
    "docs/distill.md": ["## Throughput"],
    "docs/profile.md": ["## `effconv calibrate` and the estimator's error on host-cpu"],
    "docs/quantize.md": ["## ONNX: onnxruntime static QDQ, chosen for the device it will run on", "## Core ML: W8A16",
                         "## TFLite: static int8 (W8A8) with ai-edge-quantizer"],
    "docs/student.md": ["## `--init from-teacher`", "## Benchmark: teacher vs student in onnxruntime fp32"],
}

# Figures quoted without a results file, each with the reason it is allowed. The test time and count are
# written from the final CI run of a change (`.ci/run`), which keeps no results file.
UNCHECKED = {
    "README.md": ["Runs the default suite (slow tests excluded;"],
}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def results_file(name: str, results: Path = RESULTS):
    path = ROOT / name if "/" in name else results / name
    if not path.is_file():
        raise AssertionError(f"results file {name} not found")
    return json.loads(path.read_text())


def lookup(data, path: str):
    """The value at a `/`-separated path; `*` collects every item of a list or dict into a list, a slice
    `start:stop:step` the items of a list it selects."""
    values = [data]
    wildcard = False
    for key in path.strip("/").split("/"):
        found = []
        for value in values:
            if key == "*":
                wildcard = True
                found.extend(value.values() if isinstance(value, dict) else value)
            elif ":" in key and isinstance(value, list):  # a slice of a list, `1:36:2`, collects like `*`
                wildcard = True
                found.extend(value[slice(*(int(part) if part else None for part in key.split(":")))])
            elif isinstance(value, list):
                found.append(value[int(key)])
            elif key in value:
                found.append(value[key])
            elif not wildcard:  # after a `*`, items without the key are left out (fp32 rows have no int8 fields)
                raise AssertionError(f"no key {key!r} on the path {path!r}")
        values = found
    return values if wildcard else values[0]


FUNCTIONS = {"min": min, "max": max, "abs": abs, "round": round, "sum": sum, "len": len}
OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
             ast.Div: lambda a, b: a / b}


def elementwise(operator, left, right):
    """Arithmetic on two numbers, or item by item when a side is a list (`{a/*/x} / {a/*/y}`: ratios per item)."""
    if not isinstance(left, list) and not isinstance(right, list):
        return operator(left, right)
    lefts = left if isinstance(left, list) else [left] * len(right)
    rights = right if isinstance(right, list) else [right] * len(left)
    assert len(lefts) == len(rights), f"lists of {len(lefts)} and {len(rights)} items in one marker"
    return [operator(a, b) for a, b in zip(lefts, rights)]


def evaluate(node, names):
    """Arithmetic on numbers and the paths' values; nothing else is allowed in a marker."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body, names)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return elementwise(OPERATORS[type(node.op)], evaluate(node.left, names), evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -evaluate(node.operand, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        args = [evaluate(arg, names) for arg in node.args]
        return FUNCTIONS[node.func.id](*args)
    if isinstance(node, ast.List):
        return [evaluate(item, names) for item in node.elts]
    raise AssertionError(f"not allowed in a figure marker: {ast.dump(node)}")


def marker_value(file: str, expr: str, results: Path = RESULTS) -> float:
    data = results_file(file, results)
    if "{" not in expr:
        value = lookup(data, expr)
    else:
        names = {}

        def bind(match):
            name = f"v{len(names)}"
            names[name] = lookup(data, match.group(1))
            return name

        value = evaluate(ast.parse(re.sub(r"\{([^{}]+)\}", bind, expr), mode="eval"), names)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AssertionError(f"{file} {expr} is {value!r}, not a number")
    return float(value)


def quoted_number(text: str) -> tuple[float, float]:
    """The number as written and half a unit of its last digit (how far rounding may have moved it)."""
    mantissa, _, exponent = text.replace(",", "").partition("e")
    decimals = len(mantissa.partition(".")[2])
    scale = 10.0 ** int(exponent) if exponent else 1.0
    return float(mantissa) * scale, 0.5 * 10.0 ** -decimals * scale


def blocks(text: str):
    """(start, end) of each paragraph, top-level list item (with its sub-items) and table (with the
    paragraph before it): the place where a figure's results file must be named."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    start = 0
    for i, line in enumerate(lines):
        blank = not line.strip()
        new_item = line.startswith(("- ", "* ")) or re.match(r"\d+\. ", line)
        table_starts = line.startswith("|") and i > 0 and not lines[i - 1].startswith("|") and lines[i - 1].strip()
        if blank or (new_item and i > 0 and offsets[i] > offsets[start]):
            if not table_starts:
                yield offsets[start], offsets[i]
                start = i + 1 if blank else i
    yield offsets[start], offsets[-1]


def block_around(text: str, position: int) -> str:
    for start, end in blocks(text):
        if start <= position < end:
            block = text[start:end]
            if block.lstrip().startswith("|"):
                before = text[:start].rstrip("\n")
                block = before[before.rfind("\n\n") + 2:] + "\n" + block
            return block
    raise AssertionError("position outside the document")


def markers(pattern: re.Pattern = MARKER):
    """One test parameter per match of `pattern` in the docs, named by document and line."""
    for doc in DOCS:
        text = doc.read_text()
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield pytest.param(text, match, id=f"{relative(doc)}:{line}")


def check_marker(text: str, match: re.Match, results: Path = RESULTS) -> None:
    before = COMMENT.sub("", text[max(0, match.start() - 4000): match.start()]).rpartition("-->")[2]
    figure = FIGURE.search(before)
    assert figure, f"no figure right before the marker {match.group(0)}"
    quoted, half_unit = quoted_number(figure.group("num"))
    value = marker_value(match.group("file"), match.group("expr"), results)
    assert math.isclose(quoted, value, abs_tol=half_unit * (1 + 1e-9)), (
        f"the text says {figure.group('num')}, {match.group('file')} {match.group('expr')} gives {value:.6g}"
    )
    name = Path(match.group("file")).name
    visible = COMMENT.sub("", block_around(text, match.start()))
    assert name in visible, f"{name} is not named in the text beside the figure {figure.group('num')}"


@pytest.mark.parametrize(("text", "match"), list(markers()))
def test_marked_figure_equals_its_results_file(text, match):
    check_marker(text, match)


def table_after(text: str, match: re.Match) -> list[str]:
    """The table on the lines right after a table marker."""
    lines = text[match.end():].lstrip(" ").removeprefix("\n").splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table, f"no table right after {match.group(0)}"
    return table


def check_table(text: str, match: re.Match, results: Path = RESULTS) -> None:
    names = match.group("files").split()
    assert match.group("name") in TABLES, f"no table {match.group('name')!r} in tests/doc_tables.py"
    expected = TABLES[match.group("name")](*(results_file(name, results) for name in names))
    written = table_after(text, match)
    unbold = lambda line: [cell.replace("**", "") for cell in cells(line)]  # noqa: E731 - emphasis is not a figure
    for number, (want, have) in enumerate(zip(expected, written), start=1):
        assert unbold(have) == unbold(want), f"table row {number}: the text has\n{have}\nthe results give\n{want}"
    assert len(written) == len(expected), f"the table has {len(written)} lines, the results give {len(expected)}"
    visible = COMMENT.sub("", block_around(text, match.start()))
    for name in names:
        assert Path(name).name in visible, f"{Path(name).name} is not named in the text beside the table"


@pytest.mark.parametrize(("text", "match"), list(markers(TABLE_MARKER)))
def test_table_equals_its_results_file_row_by_row(text, match):
    check_table(text, match)


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    level = heading.split(" ")[0]
    following = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading):], re.M)
    return text[start: start + len(heading) + following.start()] if following else text[start:]


@pytest.mark.parametrize(("name", "heading"), [(n, h) for n, hs in MEASURED_SECTIONS.items() for h in hs])
def test_measured_section_marks_every_figure(name, heading):
    text = (ROOT / name).read_text()
    assert heading + "\n" in text, f"{name} has no section {heading!r} any more"
    body = section(text, heading)
    for allowed in UNCHECKED.get(name, []):
        if allowed in body:
            paragraph_end = body.find("\n\n", body.index(allowed))
            body = body.replace(body[body.index(allowed): paragraph_end], "")
    unmarked = unmarked_figures(body)
    assert not unmarked, f"figures without a results-file marker in {name} {heading!r}: {unmarked}"


def unmarked_figures(body: str) -> list[str]:
    body = re.sub(r"```.*?```", "", body, flags=re.S)
    body = re.sub(TABLE_MARKER.pattern + r"[ \t]*\n(?:\|.*(?:\n|$))+", "", body)  # checked whole by check_table
    return [figure.group(0).strip() for figure in UNIT_FIGURE.finditer(body)
            if not ANY_MARKER.match(body[figure.end():])]


def test_unmarked_figures_are_found_with_their_units_and_in_ranges():
    text = ("ran 1.74x<!--= x.json a --> faster, in 39.6 ms, 2.45-2.55 GB, **99.5%** kept, goal 1.2x<!--=const-->, "
            "-0.01 dB, 17 frames, ai-edge-litert 2.3.0")
    assert unmarked_figures(text) == ["39.6 ms", "2.45", "2.55 GB", "99.5%**", "0.01 dB"]


def test_unchecked_figures_are_still_where_the_exemption_says():
    for name, passages in UNCHECKED.items():
        text = (ROOT / name).read_text()
        for passage in passages:
            assert passage in text, f"{name} no longer has {passage!r}: update UNCHECKED"


@pytest.mark.parametrize(("value", "passes"), [(1.744, True), (1.736, True), (1.75, False), (1.32, False)])
def test_a_remeasured_value_fails_until_the_text_follows(tmp_path, value, passes):
    (tmp_path / "x.json").write_text(json.dumps({"run": {"ort_speedup": value}}))
    text = "ONNX ran **1.74x**<!--= x.json run/ort_speedup --> faster (`x.json`).\n"
    match = MARKER.search(text)
    if passes:
        check_marker(text, match, tmp_path)
    else:
        with pytest.raises(AssertionError, match="the text says 1.74"):
            check_marker(text, match, tmp_path)


def test_a_figure_whose_file_is_not_named_beside_it_fails(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"ms": [39.61, 52.47]}))
    text = "The student ran 39.6 ms<!--= x.json {ms/0} --> (y.json).\n\nSource: `x.json`.\n"
    with pytest.raises(AssertionError, match="x.json is not named"):
        check_marker(text, MARKER.search(text), tmp_path)


def test_markers_combine_paths_with_arithmetic(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"rows": [{"mb": 2449.6}, {"mb": 2553.0}], "share": 0.9949}))
    assert marker_value("x.json", "max({rows/*/mb}) / {rows/0/mb}", tmp_path) == pytest.approx(2553.0 / 2449.6)
    assert marker_value("x.json", "{share} * 100", tmp_path) == pytest.approx(99.49)
    assert marker_value("x.json", "min({rows/*/mb} / {rows/0:2/mb} * 2)", tmp_path) == pytest.approx(2.0)
    assert marker_value("x.json", "max({rows/1:/mb}) - 1", tmp_path) == pytest.approx(2552.0)
    with pytest.raises(AssertionError, match="not allowed"):
        marker_value("x.json", "{share} + __import__('os')", tmp_path)


def test_a_table_row_that_differs_from_its_results_file_fails(tmp_path):
    rows = {"onnx": [{"name": "a-tiny", "held_out": True, "backend": "onnx", "dtype": "fp32", "measured_ms": 18.04,
                      "predicted_ms": 17.9, "rel_error": -0.0078}]}
    data = {"runtimes": {"onnx": {"after": {"rows": rows["onnx"]}, "fresh": {"rows": []}}},
            "models": [{"name": "a-tiny", "backend": "onnx", "dtype": "fp32", "gflops": 0.354}]}
    (tmp_path / "x.json").write_text(json.dumps(data))
    table = ("From `x.json`:\n<!--=table x.json estimator_per_model -->\n"
             "| model | set | GFLOP | onnxruntime fp32 ms: measured / calibrated (error) | int8 | LiteRT fp32 | int8 |\n"
             "|---|---|---|---|---|---|---|\n| a-tiny | held-out | 0.35 | {} | - | - | - |\n")
    check_table(table.format("18.0 / 17.9 (-1%)"), TABLE_MARKER.search(table), tmp_path)
    with pytest.raises(AssertionError, match="table row 3"):
        check_table(table.format("18.1 / 17.9 (-1%)"), TABLE_MARKER.search(table), tmp_path)
    unnamed = table.replace("From `x.json`", "From the run")
    with pytest.raises(AssertionError, match="x.json is not named"):
        check_table(unnamed.format("18.0 / 17.9 (-1%)"), TABLE_MARKER.search(unnamed), tmp_path)


def test_a_checked_table_is_left_out_of_the_unmarked_scan_and_an_unchecked_one_is_not():
    table = "| run | ms |\n|---|---|\n| a | 39.6 ms |\n"
    assert unmarked_figures("<!--=table x.json estimator_summary -->\n" + table) == []
    assert unmarked_figures("<!-- a comment -->\n" + table) == ["39.6 ms"]
