"""Bad input: one line on stderr, exit code 2, no traceback, nothing left in --out."""

import os
from pathlib import Path

import pytest

from conftest import SPECS

TINY = SPECS / "hunyuan-tiny.yaml"
GOOD = TINY.read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


BAD_SPECS = {
    "malformed-yaml": ("name: x\nmodel: {diffusers: [\n", "malformed YAML"),
    "not-a-mapping": ("- just\n- a list\n", "must be a YAML mapping"),
    "unknown-key": (GOOD + "colour: blue\n", "unknown key 'colour'"),
    "unknown-nested-key": (GOOD.replace("part: decoder", "part: decoder\ninput2: 1"), "unknown key 'input2'"),
    "unknown-class": (GOOD.replace("AutoencoderKLHunyuanVideo", "AutoencoderKLNope"), "unknown model class"),
    "bad-config-key": (GOOD.replace("layers_per_block: 1", "layers_per_block: 1\n    wings: 2"), "does not take config key(s) wings"),
    "missing-pretrained": (GOOD.replace("  config:", "  pretrained: nowhere\n  config:"), "does not exist"),
    "bad-frames": (GOOD.replace("frames: 9", "frames: 10"), "use frames 9 or 13"),
    "bad-height": (GOOD.replace("height: 32", "height: 30"), "use height 24 or 32"),
    "bad-part": (GOOD.replace("part: decoder", "part: middle"), "'part'"),
    "path-in-name": (GOOD.replace("name: hunyuan-tiny", "name: ../escape"), "'name'"),
    "negative-width": (GOOD.replace("width: 48", "width: -48"), "'input.width'"),
    "both-sources": (GOOD.replace("  config:", "  factory: pkg.mod:fn\n  config:"), "exactly one of"),
    "factory-without-allow": (GOOD.replace("diffusers: AutoencoderKLHunyuanVideo", "factory: mymod:build"), "--allow-import"),
    "bad-config-value": (GOOD.replace("norm_num_groups: 4", "norm_num_groups: 3"), "cannot be built"),
}


def assert_one_line_error(code, out, err, expected):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Fix:" in lines[0]


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_gives_one_line_exit_2_and_no_output(case, cli, tmp_path):
    text, expected = BAD_SPECS[case]
    out_dir = tmp_path / "out"
    code, out, err = cli("convert", _write(tmp_path, text), "--out", out_dir)
    assert_one_line_error(code, out, err, expected)
    assert not out_dir.exists()


def test_pretrained_dir_without_weights(cli, tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKLHunyuanVideo"}')
    spec = _write(tmp_path, GOOD.replace("  config:", "  pretrained: vae\n  config:"))
    code, out, err = cli("convert", spec, "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, "has no weights")
    assert not (tmp_path / "out").exists()


def test_pretrained_with_truncated_weights(cli, tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKLHunyuanVideo"}')
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    spec = _write(tmp_path, GOOD.replace("  config:", "  pretrained: vae\n  config:"))
    code, out, err = cli("convert", spec, "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, "could not load")


def test_missing_spec_file(cli, tmp_path):
    code, out, err = cli("convert", tmp_path / "absent.yaml", "--out", tmp_path / "out")
    assert_one_line_error(code, out, err, "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_as_user(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, out, err = cli("convert", TINY, "--out", locked / "sub")
    assert_one_line_error(code, out, err, "cannot create output directory")


def test_out_is_a_file(cli, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, out, err = cli("convert", TINY, "--out", target)
    assert_one_line_error(code, out, err, "not a directory")
    assert target.read_text() == "x"


def test_out_under_a_file(cli, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, out, err = cli("convert", TINY, "--out", target / "sub")
    assert_one_line_error(code, out, err, "cannot create output directory")


def test_old_opset_rejected_before_any_work(cli, tmp_path):
    code, out, err = cli("convert", TINY, "--out", tmp_path / "out", "--opset", "13")
    assert_one_line_error(code, out, err, "opset 13")
    assert not (tmp_path / "out").exists()


def test_unknown_backend(cli, tmp_path):
    code, out, err = cli("convert", TINY, "--out", tmp_path / "out", "--to", "tensorrt")
    assert_one_line_error(code, out, err, "unknown backend 'tensorrt'")


def test_failed_export_leaves_existing_out_dir_untouched(cli, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    code, _, _ = cli("convert", _write(tmp_path, GOOD.replace("frames: 9", "frames: 10")), "--out", out_dir)
    assert code == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]


@pytest.fixture
def debug_flag_restored(monkeypatch):
    """--debug sets effconv.quiet's process-wide flags; put them back for the tests that follow."""
    import effconv.quiet

    monkeypatch.setattr(effconv.quiet, "_debug", effconv.quiet._debug)
    monkeypatch.setattr(effconv.quiet, "_cli_quiet", effconv.quiet._cli_quiet)


def test_debug_keeps_exit_2_for_bad_input_and_adds_the_traceback(cli, tmp_path, debug_flag_restored):
    """regression: --debug re-raised the error, so Python exited 1 for bad input."""
    spec = _write(tmp_path, GOOD.replace("frames: 9", "frames: 10"))
    code, _, err = cli("--debug", "inspect", spec)
    assert code == 2
    assert "Traceback" in err and "EffconvError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: input.frames 10")


def test_debug_keeps_exit_3_for_an_internal_error_and_adds_the_traceback(cli, monkeypatch, debug_flag_restored):
    """regression: --debug re-raised the error, so Python exited 1 for an internal error too."""
    import effconv.models.loader

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(effconv.models.loader, "load_model", broken)
    code, _, err = cli("--debug", "inspect", TINY)
    assert code == 3
    assert "Traceback" in err and "in broken" in err
    assert err.rstrip().splitlines()[-1] == "error: internal error: ZeroDivisionError: a bug"
    code, _, err = cli("inspect", TINY)
    assert code == 3 and "Traceback" not in err and "rerun with --debug" in err
