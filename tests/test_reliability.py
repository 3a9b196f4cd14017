"""Hostile inputs to every command, one named case each: malformed or adversarial specs, recipes,
device profiles, videos, artifacts, manifests and checkpoints. Each must exit 2 with one line (or 0
where the input is in fact usable), write nothing outside --out and leave --out as it was.

Cases marked "regression" failed before the fix named in their docstring.
"""

from __future__ import annotations

import json
import os
import shutil

import av
import pytest
import torch
from torch import nn

from effconv.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from effconv.video.clips import BUNDLED_CLIP
from effconv.distill.targets import TargetCache, TeacherTargets
from effconv.errors import EffconvError
from effconv.host import default_threads
from effconv.models.limits import MAX_MODULES
from effconv.models.loader import load_model
from effconv.profile.device import host_cpu
from effconv.profile.device.profiles import HOST
from effconv.spec import MAX_YAML_BYTES, MAX_YAML_NODES, load_spec

from conftest import REPO, SPECS
from fuzzing import (  # noqa: F401 - capped_memory, onnx_artifact and sandbox are fixtures
    billion_laughs, capped_memory, copy_artifact, error_lines, onnx_artifact, sandbox,
)

TEACHER = SPECS / "hunyuan-tiny.yaml"
GOOD_SPEC = TEACHER.read_text()
DEMO_WEIGHTS = REPO / "effconv" / "assets" / "demo-teacher"
DEMO_SPEC = (SPECS / "demo-teacher.yaml").read_text().replace("../../effconv/assets/demo-teacher", "vae")
TINY_RECIPE = (REPO / "effconv" / "recipes" / "tiny.yaml").read_text()
DISTILL_RECIPE = REPO / "tests" / "data" / "distill-tiny.yaml"
SMALL_CLIP = "frames: 5, height: 32, width: 32"

pytestmark = pytest.mark.timeout(120)


def _one_line(err: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


def _spec(sandbox, text: str, name: str = "spec.yaml"):
    return sandbox.write(name, text)


# --- spec files that are not a spec -------------------------------------------------------------

NOT_A_SPEC = {
    "empty": ("", "must be a YAML mapping"),
    "list": ("- name: x\n- model: y\n", "must be a YAML mapping"),
    "scalar": ("42\n", "must be a YAML mapping"),
    "binary": (b"\x00\xff\xfe\x80garbage", "not UTF-8"),
    "nul-byte": ("name: x\x00\n", "malformed YAML"),
    "python-tag": ("!!python/object/apply:os.system ['touch pwned']\n", "malformed YAML"),
    "bad-date": ("name: 2024-02-30\n", "day is out of range"),  # regression: pyyaml's ValueError was exit 3
    "deep-nesting": ("[" * 100_000, "nested too deeply"),  # regression: RecursionError was exit 3
    "recursive-alias": ("a: &a [*a]\n", "refers to a node that contains it"),
    "billion-laughs": (billion_laughs(9), f"more than {MAX_YAML_NODES:,} values"),  # regression: walked by manifests
    "too-large": ("# " + "x" * MAX_YAML_BYTES + "\n", "larger than"),
}


@pytest.mark.parametrize("case", sorted(NOT_A_SPEC))
def test_not_a_spec_is_one_line_exit_2(case, sandbox):
    content, expected = NOT_A_SPEC[case]
    _, _, err = sandbox.run("inspect", _spec(sandbox, content), allowed=(2,))
    assert expected in _one_line(err)


def test_billion_laughs_inside_a_valid_spec_is_refused_before_any_model_is_built(sandbox):
    """regression: a bomb under model.config was accepted and expanded when a manifest dumped the spec."""
    text = GOOD_SPEC.replace("  config:\n", "  config:\n" + "".join(f"    {line}\n" for line in billion_laughs(9).splitlines()))
    _, _, err = sandbox.run("convert", _spec(sandbox, text), "--out", sandbox.out, allowed=(2,))
    assert "expands to more than" in _one_line(err)
    assert not sandbox.out.exists()


@pytest.mark.parametrize("target", ["directory", "symlink-loop", "dev-null", "proc-mem", "name-too-long"])
def test_spec_path_that_is_not_a_readable_file(target, sandbox):
    """regression (proc-mem, name-too-long): EIO and ENAMETOOLONG were exit 3."""
    paths = {
        "directory": sandbox.inputs,
        "symlink-loop": sandbox.inputs / "loop.yaml",
        "dev-null": "/dev/null",
        "proc-mem": "/proc/self/mem",
        "name-too-long": sandbox.inputs / ("x" * 300 + ".yaml"),
    }
    os.symlink(sandbox.inputs / "loop.yaml", sandbox.inputs / "loop.yaml")
    _, _, err = sandbox.run("inspect", paths[target], allowed=(2,))
    assert "spec" in _one_line(err)


# --- spec values ----------------------------------------------------------------------------------

BAD_VALUES = {
    "frames-10e12": ("frames: 9", "frames: 1000000000000", "'input.frames'"),
    "width-10e12": ("width: 48", "width: 1000000000000", "'input.width'"),
    "height-zero": ("height: 32", "height: 0", "'input.height'"),
    "frames-nan": ("frames: 9", "frames: .nan", "'input.frames'"),
    "width-inf": ("width: 48", "width: .inf", "'input.width'"),
    "name-absolute": ("name: hunyuan-tiny", "name: /abs", "'name'"),
    "name-dotdot": ("name: hunyuan-tiny", "name: '..'", "'name'"),
    "name-unicode": ("name: hunyuan-tiny", "name: hünyuan-名", "'name'"),
    "name-long": ("name: hunyuan-tiny", "name: " + "a" * 10_000, "'name'"),
    "name-list": ("name: hunyuan-tiny", "name: [a, b]", "'name'"),
    "part-int": ("part: decoder", "part: 3", "'part'"),
    "config-list": ("  config:\n", "  config: [1, 2]\n  extra:\n", "'model.config'"),
    "latent-channels-negative": ("latent_channels: 4", "latent_channels: -4", "cannot be built"),
    "groups-zero": ("norm_num_groups: 4", "norm_num_groups: 0", "cannot be built"),
    "layers-nan": ("layers_per_block: 1", "layers_per_block: .nan", "cannot be built"),
    # regression: these allocated until the machine ran out of memory (or the OOM killer struck)
    "channels-10e6": ("[8, 8, 16, 16]", "[8, 8, 16, 1000000]", "more than 2,000,000,000 parameters"),
    "layers-10e100": ("layers_per_block: 1", "layers_per_block: " + "1" + "0" * 100, f"more than {MAX_MODULES:,} modules"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_spec_value_is_one_line_exit_2(case, sandbox):
    old, new, expected = BAD_VALUES[case]
    assert old in GOOD_SPEC
    _, _, err = sandbox.run("convert", _spec(sandbox, GOOD_SPEC.replace(old, new, 1)), "--out", sandbox.out, allowed=(2,))
    assert expected in _one_line(err)
    assert not sandbox.out.exists()


# --- pretrained directories -------------------------------------------------------------------------

def _pretrained(sandbox, config=None, weights=None):
    """A copy of the demo teacher's weights dir at in/vae, with config.json / weights replaced if given."""
    target = sandbox.inputs / "vae"
    shutil.copytree(DEMO_WEIGHTS, target)
    if config is not None:
        (target / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights is not None:
        (target / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return _spec(sandbox, DEMO_SPEC)


def _demo_config() -> dict:
    return json.loads((DEMO_WEIGHTS / "config.json").read_text())


PRETRAINED_CASES = {
    "config-not-json": (lambda: "{{{", None, "is not valid JSON"),
    "config-json-list": (lambda: "[1, 2]", None, "not a JSON object"),  # regression: AttributeError, exit 3
    "config-json-string": (lambda: '"vae"', None, "not a JSON object"),  # regression: AttributeError, exit 3
    "config-other-class": (lambda: {**_demo_config(), "_class_name": "AutoencoderKLMochi"}, None, "holds a AutoencoderKLMochi"),
    "config-huge-channels": (lambda: {**_demo_config(), "base_dim": 10**6}, None, "far more than"),  # regression: allocation
    "weights-empty": (lambda: None, b"", "could not load"),
    "weights-truncated": (lambda: None, (DEMO_WEIGHTS / "diffusion_pytorch_model.safetensors").read_bytes()[:5000], "could not load"),
    "weights-header-lies": (lambda: None, (10**12).to_bytes(8, "little") + b"{}", "could not load"),
}


@pytest.mark.parametrize("case", sorted(PRETRAINED_CASES))
def test_corrupt_pretrained_dir_is_one_line_exit_2(case, sandbox):
    config, weights, expected = PRETRAINED_CASES[case]
    _, _, err = sandbox.run("inspect", _pretrained(sandbox, config(), weights), allowed=(2,))
    assert expected in _one_line(err)


@pytest.mark.parametrize("layout", ["symlink-loop", "a-file", "empty-dir", "config-is-a-dir", "config-symlink-loop"])
def test_pretrained_path_that_is_not_a_model_dir(layout, sandbox):
    vae = sandbox.inputs / "vae"
    if layout == "symlink-loop":
        os.symlink(vae, vae)
    elif layout == "a-file":
        vae.write_text("not a directory")
    else:
        vae.mkdir()
        if layout == "config-is-a-dir":
            (vae / "config.json").mkdir()
        elif layout == "config-symlink-loop":
            os.symlink(vae / "config.json", vae / "config.json")
    _, _, err = sandbox.run("inspect", _spec(sandbox, DEMO_SPEC), allowed=(2,))
    assert "pretrained" in _one_line(err)


def test_pretrained_dir_with_weights_in_a_vae_subfolder_loads(sandbox):
    shutil.copytree(DEMO_WEIGHTS, sandbox.inputs / "vae" / "vae")
    code, out, _ = sandbox.run("inspect", _spec(sandbox, DEMO_SPEC), "--json")
    assert code == 0 and json.loads(out)["params"] > 100_000


# --- recipes ---------------------------------------------------------------------------------------

BAD_RECIPES = {
    # regression: 65536-wide blocks allocated 23 GB before the OOM killer stopped them
    "widths-65536": ("widths: [16, 16, 8, 8, 16]", "widths: [65536, 65536, 8, 8, 8]", "far more than"),
    "widths-zero": ("widths: [16, 16, 8, 8, 16]", "widths: [0, 16, 8, 8, 8]", "widths must be between"),
    "layers-mismatch": ("layers: [1, 1, 1, 1, 1]", "layers: [1, 1]", "one entry per width"),
    "kernel-even": ("kernel_size: 5", "kernel_size: 4", "odd"),
    "no-upsampling": ("upsample: [false, true, true, true]", "upsample: [false, false, false, false]", "no up block upsample"),
    "width-scale-inf": ("kernel_size: 5", "kernel_size: 5\n  width_scale: .inf", "finite"),
    "init-list": ("init: random", "init: [random]", "'student.init'"),
    "betas-above-1": ("init: random", "init: random\ndistill:\n  betas: [2.0, 0.9]", "'distill.betas.0'"),  # regression: exit 3
    "weight-decay-inf": ("init: random", "init: random\ndistill:\n  weight_decay: .inf", "finite"),  # regression: NaN training
    "seed-2e64": ("init: random", "init: random\ndistill:\n  seed: 100000000000000000000", "'distill.seed'"),  # regression: exit 3
    "stream-zero": ("init: random", "init: random\ndeploy:\n  stream: 0", "'deploy.stream'"),
    "stream-symmetric": ("temporal_padding: causal\n  init: random",
                         "temporal_padding: symmetric\n  init: random\ndeploy:\n  stream: 2", "temporal_padding: causal"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_is_one_line_exit_2(case, sandbox):
    old, new, expected = BAD_RECIPES[case]
    assert old in TINY_RECIPE
    recipe = sandbox.write("recipe.yaml", TINY_RECIPE.replace(old, new))
    _, _, err = sandbox.run("rewrite", TEACHER, "--recipe", recipe, "--out", sandbox.out, allowed=(2,))
    assert expected in _one_line(err)
    assert not sandbox.out.exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/hostname", "no-such-recipe", ""])
def test_recipe_name_that_is_no_recipe(name, sandbox):
    _, _, err = sandbox.run("rewrite", TEACHER, "--recipe", name, "--out", sandbox.out, allowed=(2,))
    assert "recipe" in _one_line(err)


# --- device profiles and profile options -------------------------------------------------------------

DEVICE = (REPO / "effconv" / "device_profiles" / "rpi5.yaml").read_text()
BAD_DEVICES = {
    # regression: infinite or overflowing figures divided by zero or overflowed (exit 3)
    "peak-inf": ("value: 153.6", "value: .inf", "finite"),
    "peak-1e308": ("value: 153.6", "value: 1.0e+308", "less than or equal to"),
    "ram-inf": ("ram_gb: {value: 8", "ram_gb: {value: .inf", "finite"),
    "bandwidth-zero": ("bandwidth_gbps: {value: 17", "bandwidth_gbps: {value: 0", "greater than 0"),
    "overhead-1e308": ("run_overhead_ms: 0.5", "run_overhead_ms: 1.0e+308", "less than or equal to"),
    "no-units": ("\nunits:", "\nunits: {}\nold_units:", "at least 1 item"),
}


@pytest.mark.parametrize("case", sorted(BAD_DEVICES))
def test_bad_device_profile_is_one_line_exit_2(case, sandbox, onnx_artifact):
    old, new, expected = BAD_DEVICES[case]
    assert old in DEVICE, old
    device = sandbox.write("device.yaml", DEVICE.replace(old, new, 1))
    _, _, err = sandbox.run("profile", onnx_artifact, "--device", device, allowed=(2,))
    assert expected in _one_line(err)


BAD_PROFILE_OPTIONS = {
    "resolution-huge": (["--resolution", "99999x99999"], "less than or equal to 8192"),  # regression: exit 3
    "frames-negative": (["--frames", "-5"], "greater than or equal to 1"),  # regression: exit 3
    "threads-negative": (["--device", "host-cpu", "--threads", "-3"], "--threads must be between"),  # regression: exit 3
    "threads-zero": (["--device", "host-cpu", "--threads", "0"], "--threads must be between"),  # regression: silently all cores
    "threads-million": (["--device", "host-cpu", "--threads", "1000000"], "--threads must be between"),  # regression: OOM
    "fps-inf": (["--fps", "inf"], "positive finite"),  # regression: a budget of 0 ms, exit 1
    "budget-nan": (["--budget-ms", "nan"], "positive finite"),
    "device-traversal": (["--device", "../../etc/passwd"], "device profile"),
    "device-unknown": (["--device", "nokia3310"], "unknown device"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILE_OPTIONS))
def test_bad_profile_option_is_one_line_exit_2(case, sandbox):
    options, expected = BAD_PROFILE_OPTIONS[case]
    device = [] if "--device" in options else ["--device", "pixel9"]
    _, _, err = sandbox.run("profile", TEACHER, *device, *options, allowed=(2,))
    assert expected in _one_line(err)


@pytest.mark.parametrize("options", [["--threads", "0"], ["--repeats", "0"], ["--threads", "1000000"]])
def test_bad_calibrate_option_is_refused_before_measuring(options, sandbox):
    _, _, err = sandbox.run("calibrate", *options, allowed=(2,))
    assert "--threads" in _one_line(err)


def _host_key() -> str:
    return host_cpu.host_key(default_threads())


HOST_CACHE_DAMAGE = {
    "a-list": lambda: [1],
    "entry-a-list": lambda: {_host_key(): [1]},
    "measurement-wrong-types": lambda: {_host_key(): {"measurement": {"peak_fp32_gflops": "fast", "threads": "all"}}},
    "calibration-a-list": lambda: {_host_key(): {"calibration": [1]}},
    "peak-wrong-types": lambda: {_host_key(): {"measurement": {"peak_fp32_gflops": {"cpu": "fast", "xnnpack": -1},
                                                               "bandwidth_gbps": 1.0, "threads": 1, "method": "", "measured_at": ""}}},
    "calibration-of-a-unit-a-list": lambda: {_host_key(): {"calibration": {"xnnpack": [1]}}},
}


@pytest.mark.parametrize("case", sorted(HOST_CACHE_DAMAGE))
def test_damaged_host_cache_is_measured_again(case, sandbox):
    """regression: a damaged ~/.cache/effconv/host-cpu.json was AttributeError / TypeError (exit 3)."""
    cache = host_cpu.cache_dir() / host_cpu.CACHE_FILE
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps(HOST_CACHE_DAMAGE[case]()))
    _, out, _ = sandbox.run("devices", "--json", allowed=(0,))
    host = next(profile for profile in json.loads(out) if profile["name"] == HOST)
    assert host["units"]["cpu"]["peak_gops"]["fp32"]["value"] > 0
    assert json.loads(cache.read_text())[_host_key()]["measurement"]["peak_fp32_gflops"]["cpu"] > 0


# --- artifacts and manifests ---------------------------------------------------------------------------

def test_empty_onnx_file_is_not_profiled_as_an_empty_graph(sandbox, onnx_artifact):
    """regression: protobuf parses 0 bytes as an empty model; profile reported 0 ops and exit 0."""
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    artifact.write_bytes(b"")
    _, _, err = sandbox.run("profile", artifact, "--device", "pixel9", allowed=(2,))
    assert "holds no ONNX graph" in _one_line(err)


@pytest.mark.parametrize("cut", [10, 1000, 0.5, -10])
def test_truncated_onnx_is_one_line_exit_2(cut, sandbox, onnx_artifact):
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    data = artifact.read_bytes()
    artifact.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    _, _, err = sandbox.run("profile", artifact, "--device", "pixel9", allowed=(2,))
    assert "ONNX" in _one_line(err)


def test_garbage_tflite_is_not_profiled(sandbox, onnx_artifact):
    artifact = copy_artifact(onnx_artifact, sandbox.inputs).with_suffix(".tflite")
    artifact.write_bytes(os.urandom(2048))
    _, _, err = sandbox.run("profile", artifact, "--device", "pixel9", allowed=(2,))
    assert "describes a onnx artifact, not tflite" in _one_line(err)


def test_lint_of_a_missing_artifact_is_refused_even_with_its_manifest(sandbox, onnx_artifact):
    """regression: lint read only the manifest, so a deleted artifact linted fine (exit 0)."""
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    artifact.unlink()
    _, _, err = sandbox.run("lint", artifact, "--backend", "tflite", allowed=(2,))
    assert "does not exist" in _one_line(err)


BAD_MANIFESTS = {
    "not-json": ("{{{", "not a valid effconv manifest"),
    "json-list": ("[1, 2]", "not a valid effconv manifest"),
    "params-string": ({"params": "many"}, "not a valid effconv manifest"),
    "params-nan": ({"params": float("nan")}, "not a valid effconv manifest"),
    "inputs-dict": ({"inputs": {"a": 1}}, "not a valid effconv manifest"),
    "compression-list": ({"compression": [1, 2]}, "invalid 'compression'"),  # regression: TypeError when chunking
    "compression-causal-maybe": ({"compression": {"latent_channels": 4, "temporal": 4, "spatial": 8, "causal": "maybe"}},
                                 "invalid 'compression'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_beside_an_artifact_is_one_line_exit_2(case, sandbox, onnx_artifact):
    change, expected = BAD_MANIFESTS[case]
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    manifest = artifact.with_suffix(".json")
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | change) if isinstance(change, dict) else change)
    _, _, err = sandbox.run("profile", artifact, "--device", "pixel9", allowed=(2,))
    assert expected in _one_line(err)


@pytest.mark.parametrize("spec_change", [{"name": "../escape"}, {"model": {"factory": "os:system"}},
                                         {"input": {"frames": 9, "height": 32, "width": 10**9}}])
def test_manifest_spec_is_validated_before_re_export(spec_change, sandbox, onnx_artifact):
    artifact = copy_artifact(onnx_artifact, sandbox.inputs)
    manifest = artifact.with_suffix(".json")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(data | {"spec": data["spec"] | spec_change}))
    _, _, err = sandbox.run("profile", artifact, "--device", "pixel9", "--resolution", "64x96", allowed=(2,))
    assert "Fix:" in _one_line(err)


# --- convert options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    (["--atol", "nan"], "--atol must be a finite number"),  # regression: ran the export, then exit 1
    (["--atol", "-1"], "--atol must be a finite number"),  # regression: ran the export, then exit 1
    (["--opset", "99999"], "newer than onnx"),  # regression: onnxruntime's InvalidGraph, exit 3
    (["--opset", "12"], "too old"),
    (["--to", "../onnx"], "unknown backend"),
])
def test_bad_convert_option_is_refused_before_any_work(options, expected, sandbox):
    _, _, err = sandbox.run("convert", TEACHER, "--out", sandbox.out, *options, allowed=(2,))
    assert expected in _one_line(err)
    assert not sandbox.out.exists()


@pytest.mark.slow
def test_opset_onnxruntime_cannot_load_is_one_line_exit_2(sandbox):
    """regression: an opset the exporter mishandles (26-28 with torch 2.13 / onnxruntime 1.32) was
    onnxruntime's InvalidGraph, exit 3, after the whole export."""
    import onnx

    code, _, err = sandbox.run("convert", TEACHER, "--out", sandbox.out, "--opset", onnx.defs.onnx_opset_version())
    if code == 2:
        assert "onnxruntime cannot load the opset" in _one_line(err)
        assert not sandbox.out.exists()


# --- videos ------------------------------------------------------------------------------------------------

def _faststart_copy(path):
    """The bundled clip remuxed with its index first, so a truncated copy still holds decodable frames."""
    with av.open(str(BUNDLED_CLIP)) as source, av.open(str(path), "w", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    return path.read_bytes()


BAD_VIDEOS = {
    "zero-bytes": lambda: b"",
    "random-bytes": lambda: os.urandom(50_000),
    "text-renamed": lambda: b"this is a text file, not a video\n" * 100,
    "truncated-header": lambda: BUNDLED_CLIP.read_bytes()[:100],
    "truncated-half": lambda: BUNDLED_CLIP.read_bytes()[: BUNDLED_CLIP.stat().st_size // 2],
    "truncated-end": lambda: BUNDLED_CLIP.read_bytes()[:-1000],
}


@pytest.mark.parametrize("case", sorted(BAD_VIDEOS))
def test_unreadable_video_is_one_line_exit_2(case, sandbox):
    video = sandbox.write("clip.mp4", BAD_VIDEOS[case]())
    _, _, err = sandbox.run("eval", TEACHER, "--data", video, allowed=(2,))
    assert "no usable video clips" in _one_line(err) and "clip.mp4" in _one_line(err)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_faststart_mp4_decodes_what_is_there_or_says_why_not(fraction, sandbox):
    data = _faststart_copy(sandbox.root / "faststart.mp4")
    video = sandbox.write("clip.mp4", data[: int(len(data) * fraction)])
    code, out, err = sandbox.run("eval", TEACHER, "--data", video, "--json")
    if code == 0:
        assert json.loads(out)["videos"][0]["teacher_psnr_db"] > 0
    else:
        assert "clip.mp4" in _one_line(err)


@pytest.mark.parametrize("layout", ["empty-dir", "dir-of-text", "missing", "symlink-loop", "name-too-long"])
def test_data_path_without_videos(layout, sandbox):
    """regression (name-too-long): ENAMETOOLONG from pathlib was exit 3."""
    data = sandbox.inputs / "videos"
    if layout == "empty-dir":
        data.mkdir()
    elif layout == "dir-of-text":
        data.mkdir()
        (data / "notes.txt").write_text("no video here")
        (data / "fake.mp4").write_text("no video here either")
    elif layout == "symlink-loop":
        os.symlink(data, data)
    elif layout == "name-too-long":
        data = sandbox.inputs / ("v" * 5000)
    _, _, err = sandbox.run("eval", TEACHER, "--data", data, allowed=(2,))
    assert "Fix:" in _one_line(err)


# --- distill: recipes, checkpoints, latents cache ---------------------------------------------------------

def _small_teacher(sandbox):
    return _spec(sandbox, GOOD_SPEC.replace("frames: 9, height: 32, width: 48", SMALL_CLIP), "teacher.yaml")


def test_distill_align_to_a_missing_student_feature_writes_nothing(sandbox):
    """regression: KeyError (exit 3) after the teacher-latents cache was already written to --out."""
    recipe = sandbox.write("recipe.yaml", DISTILL_RECIPE.read_text() + "  align: {mid: no_such_block}\n")
    _, _, err = sandbox.run("distill", _small_teacher(sandbox), "--recipe", recipe, "--data", BUNDLED_CLIP,
                            "--out", sandbox.out, allowed=(2,))
    assert "no_such_block" in _one_line(err)
    assert not sandbox.out.exists()


@pytest.mark.parametrize("pointer", ["{{{", b"\xff\xfe", '{"path": "../../../etc"}', '{"path": "/etc"}', '{"path": 5}'])
def test_distill_resume_with_a_corrupt_pointer_leaves_out_as_it_was(pointer, sandbox):
    """regression: binary pointer was exit 3; '/etc' was read as a checkpoint; a failed resume wrote the
    teacher-latents cache into --out."""
    pointer_file = sandbox.out / "checkpoints" / "latest.json"
    pointer_file.parent.mkdir(parents=True)
    pointer_file.write_bytes(pointer if isinstance(pointer, bytes) else pointer.encode())
    _, _, err = sandbox.run("distill", _small_teacher(sandbox), "--recipe", DISTILL_RECIPE, "--data", BUNDLED_CLIP,
                            "--out", sandbox.out, "--resume", allowed=(2,))
    assert "latest.json' is corrupt" in _one_line(err)


def test_distill_resume_without_a_checkpoint_creates_nothing(sandbox):
    """regression: the failed --resume left out/cache/ behind."""
    _, _, err = sandbox.run("distill", _small_teacher(sandbox), "--recipe", DISTILL_RECIPE, "--data", BUNDLED_CLIP,
                            "--out", sandbox.out, "--resume", allowed=(2,))
    assert "no checkpoint" in _one_line(err)
    assert not sandbox.out.exists()


def _training_state():
    torch.manual_seed(0)
    modules = {"student": nn.Linear(4, 4), "ema": nn.Linear(4, 4)}
    optimizer = torch.optim.AdamW(modules["student"].parameters())
    modules["student"](torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return modules, optimizer


def _saved_checkpoint(tmp_path, step: int = 2):
    modules, optimizer = _training_state()
    return save_checkpoint(tmp_path / "checkpoints", step, modules, optimizer, {"metrics": {"history": [{"step": step}]}}, keep=3)


def _state_with(path, **changes):
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(state | changes))


CHECKPOINT_DAMAGE = {
    "weights-truncated": lambda p: (p / "weights.safetensors").write_bytes((p / "weights.safetensors").read_bytes()[:100]),
    "weights-missing": lambda p: (p / "weights.safetensors").unlink(),
    "optimizer-garbage": lambda p: (p / "optimizer.safetensors").write_bytes(b"garbage" * 10),
    "state-not-json": lambda p: (p / "state.json").write_text("{{"),
    # regression: each of these was exit 3 (TypeError / ValueError / AttributeError / RuntimeError)
    "rng-wrong-size": lambda p: (p / "rng.safetensors").write_bytes((p / "optimizer.safetensors").read_bytes()),
    "state-a-list": lambda p: (p / "state.json").write_text("[1]"),
    "state-step-text": lambda p: _state_with(p, step="abc"),
    "state-step-negative": lambda p: _state_with(p, step=-5),
    "state-groups-text": lambda p: _state_with(p, param_groups="x"),
    "state-metrics-text": lambda p: _state_with(p, metrics="x"),
    "state-history-number": lambda p: _state_with(p, metrics={"history": 5}),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_an_effconv_error(case, tmp_path):
    CHECKPOINT_DAMAGE[case](_saved_checkpoint(tmp_path))
    modules, optimizer = _training_state()
    with pytest.raises(EffconvError, match="cannot be loaded") as raised:
        load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"), modules, optimizer)
    assert "--resume" in raised.value.fix


def test_missing_pointer_falls_back_to_the_newest_checkpoint(tmp_path):
    """regression: the corrupt-pointer error says 'delete it to resume from the newest step-*', but
    without a pointer resuming found nothing."""
    _saved_checkpoint(tmp_path, step=2)
    newest = _saved_checkpoint(tmp_path, step=10)
    (tmp_path / "checkpoints" / "latest.json").unlink()
    assert latest_checkpoint(tmp_path / "checkpoints") == newest
    shutil.rmtree(newest)  # "delete that checkpoint to fall back to an older one"
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-0000002"


def test_cached_targets_of_another_shape_or_damaged_are_not_used(tmp_path):
    """regression: a stale or damaged cache entry was used as is (RuntimeError in torch.cat, exit 3)."""
    teacher = load_model(load_spec(TEACHER).with_input(5, 32, 32))
    cache = TargetCache(tmp_path, "key", TeacherTargets(teacher, {}).keys, teacher.clip_shape[1:], teacher.latent_shape[1:])
    clip = torch.rand(3, 5, 32, 32) * 2 - 1
    cache.save(0, {"clip": clip, "latent": torch.zeros(1, 2, 3)})
    (cache.directory / "clip-00000001.safetensors").write_bytes(b"not safetensors")
    cache.save(2, {"clip": clip, "latent": torch.zeros(teacher.latent_shape[1:])})
    assert cache.load(0) is None and cache.load(1) is None and cache.load(3) is None
    assert torch.equal(cache.load(2)["clip"], clip)


# --- the command line itself ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["inspect"], "Missing argument"),  # regression (all of these): Typer's vendored click errors were exit 3
    (["convert", "x.yaml", "--out", "o", "--opset", "abc"], "Invalid value for '--opset'"),
    (["no-such-command"], "No such command"),
    (["--no-such-option"], "No such option"),
    (["distill", "x.yaml", "--recipe", "r", "--data", "d", "--out", "o", "--steps", "0"], "--steps"),
    (["lint", "x.yaml", "--backend"], "requires an argument"),
])
def test_usage_error_is_one_line_exit_2(args, expected, sandbox):
    _, _, err = sandbox.run(*args, allowed=(2,))
    assert expected in _one_line(err) and "--help`" in _one_line(err)


def test_bare_effconv_prints_the_help(sandbox):
    """regression: `effconv` alone raised NoArgsIsHelpError as an internal error (exit 3)."""
    _, out, _ = sandbox.run(allowed=(0,))
    assert "Usage" in out and "convert" in out


def test_help_lists_the_commands_in_pipeline_order():
    """The command modules register in effconv/cli/__init__.py's import order, the order `effconv --help` shows."""
    from effconv.cli import app

    assert [c.name or c.callback.__name__ for c in app.registered_commands] == [
        "convert", "inspect", "devices", "profile", "calibrate", "lint", "rewrite", "distill", "eval", "run", "quantize", "decode"]
