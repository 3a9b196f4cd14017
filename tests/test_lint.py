"""`effconv lint`: per-op backend legality from the rule tables, the rewrite that fixes each
problem, nothing blocking after the rewrites, and convert failing early when something remains."""

from __future__ import annotations

import textwrap

import pytest

from backend_cases import spec_path
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.legalize import lint
from effconv.legalize.lint import RULE_BACKENDS, device_units, lint_model, rule_table
from effconv.legalize.rewrites import REWRITES
from effconv.spec import load_spec


@pytest.fixture(scope="module")
def wan_coreml():
    return lint_model(load_model(load_spec(spec_path("wan21"))), "coreml", "iphone16pro")


def test_unrewritten_wan_on_coreml_names_blocking_ops_and_their_rewrites(wan_coreml):
    blocking = {row.op: row for row in wan_coreml.before.blocking}
    assert {"_upsample_nearest_exact2d", "stack", "reshape"} <= set(blocking)
    assert "upsample-nearest" in blocking["_upsample_nearest_exact2d"].fix
    assert "stack-as-permute" in blocking["stack"].fix
    assert "legalize-rank5" in blocking["reshape"].fix
    assert blocking["_upsample_nearest_exact2d"].illegal == {"ane": 9, "gpu": 9, "cpu": 9}
    for row in blocking.values():
        assert row.why and row.sources and "none" not in row.fix


def test_rewritten_wan_on_coreml_has_nothing_blocking(wan_coreml):
    assert wan_coreml.after.blocking == []
    assert wan_coreml.rewrites["upsample-nearest"] == 9


def test_ltx_on_tflite_pow_blocks_and_conv3d_falls_back_until_rewritten():
    result = lint_model(load_model(load_spec(spec_path("ltx"))), "tflite", "pixel9")
    rows = {row.op: row for row in result.before.rows}
    assert rows["pow"].blocking == rows["pow"].count == 11 and rows["pow"].fix == ["pow-as-mul"]
    assert rows["pow"].why[0].startswith("pow: ")  # the rule's id, which `effconv profile` notes cite too
    conv = rows["conv3d"]
    assert conv.illegal == {"npu": 14, "gpu": 14, "xnnpack": 14, "builtin": 0} and conv.blocking == 0
    assert conv.fix == ["conv3d-as-conv2d"]
    assert result.after.blocking == [] and result.after.problems == []


def test_cli_lint_explains_each_decision(cli):
    code, out, _ = cli("lint", spec_path("hunyuan"), "--backend", "coreml", "--device", "iphone16pro")
    assert code == 0
    for text in ("upsample_nearest3d", "upsample-nearest", "group_norm", "groupnorm-rank3",
                 "GroupNorm", "nothing blocks coreml"):
        assert text in " ".join(out.split()), text


def test_device_selects_compute_units():
    assert device_units("coreml", "iphone16pro") == ["ane", "gpu", "cpu"]
    assert device_units("tflite", "rpi5") == ["xnnpack", "builtin"]
    with pytest.raises(EffconvError, match="no coreml rules"):
        device_units("coreml", "pixel9")


def test_unknown_device_is_a_one_line_error(cli):
    code, _, err = cli("lint", spec_path("ltx"), "--backend", "tflite", "--device", "nokia3310")
    assert code == 2 and "nokia3310" in err and len(err.strip().splitlines()) == 1


def test_every_rule_has_a_source_and_known_fixes():
    for backend in RULE_BACKENDS:
        table = rule_table(backend)
        for rule in table["rules"]:
            assert rule["source"].strip(), rule["id"]
            assert set(rule["illegal_on"]) <= set(table["units"]), rule["id"]
            assert set(rule.get("fix") or []) <= set(REWRITES), rule["id"]
        for units in table["devices"].values():
            assert set(units) <= set(table["units"])


def test_a_rule_that_rules_out_a_unit_must_say_how_the_estimate_sees_it(tmp_path, monkeypatch):
    text = (lint.RULES_DIR / "tflite.yaml").read_text()
    (tmp_path / "tflite.yaml").write_text(text.replace("    cost_nodes: [{kinds: [Pow]}]\n", ""))
    monkeypatch.setattr(lint, "RULES_DIR", tmp_path)
    lint.rule_table.cache_clear()
    try:
        with pytest.raises(EffconvError, match="rule 'pow' needs exactly one of cost_nodes and cost_unseen"):
            lint.rule_table("tflite")
    finally:
        lint.rule_table.cache_clear()


def test_lint_of_an_artifact_uses_its_manifest(cli, tmp_path):
    code, _, _ = cli("convert", spec_path("ltx"), "--to", "onnx", "--out", tmp_path)
    assert code == 0
    code, out, _ = cli("lint", tmp_path / "ltx-tiny.onnx", "--backend", "tflite", "--json")
    assert code == 0
    import json

    report = json.loads(out)
    assert report["before_rewrites"]["blocking"] == ["pow"]
    assert report["after_rewrites"]["blocking"] == []


def test_convert_fails_early_with_the_table_when_no_rewrite_applies(cli, tmp_path):
    (tmp_path / "cube_decoder.py").write_text(textwrap.dedent('''
        from torch import nn

        class CubeDecoder(nn.Module):
            latent_channels, spatial_compression_ratio, temporal_compression_ratio, causal = 4, 1, 1, False

            def __init__(self):
                super().__init__()
                self.conv = nn.Conv3d(4, 3, 1)

            def forward(self, z):
                return self.conv(z).pow(3)

        def build():
            return CubeDecoder()
    '''))
    spec = tmp_path / "cube.yaml"
    spec.write_text("name: cube\nmodel: {factory: 'cube_decoder:build'}\npart: decoder\n"
                    "input: {frames: 2, height: 8, width: 8}\n")
    code, out, err = cli("convert", spec, "--to", "tflite", "--out", tmp_path / "out", "--allow-import")
    assert code == 1
    assert "pow" in out and "none" in out
    assert "tflite cannot run pow" in err
    assert not (tmp_path / "out").exists()
