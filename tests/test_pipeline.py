"""`effconv run`: plan, skip / rerun by stage hash, failures named by stage, resume after a kill, the report."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from effconv.errors import EffconvError
from effconv.video.clips import BUNDLED_CLIP
from effconv.pipeline.plan import quantized_backends, resolve, stages
from effconv.pipeline.report import number, share, size, write_report
from effconv.pipeline.runner import execute, plan
from effconv.recipe import load_recipe

from conftest import REPO, SPECS

RECIPE = REPO / "tests" / "data" / "pipeline-tiny.yaml"
STAGES = ["distill", "eval", "convert-onnx", "convert-coreml", "quantize-onnx", "quantize-coreml", "stream-onnx",
          "stream-coreml", "quantize-stream-onnx", "quantize-stream-coreml", "lint", "profile-iphone16pro", "profile-host-cpu"]
STUDENT = "tiny-teacher-student"
# why each stage after distill reruns when distill does: the first stage it reads that reruns
RERUN_REASONS = [f"{s.removeprefix('quantize-') if s.startswith('quantize-stream-') else 'convert-' + s.removeprefix('quantize-') if s.startswith('quantize-') else 'distill'} reruns"
                 for s in STAGES[1:]]
FAMILIES = {"wan": "AutoencoderKLWan", "hunyuan": "AutoencoderKLHunyuanVideo", "cogvideox": "AutoencoderKLCogVideoX",
            "ltx": "AutoencoderKLLTXVideo", "mochi": "AutoencoderKLMochi"}


def _manifest(run_dir: Path, stage: str, name: str) -> dict:
    return json.loads((run_dir / stage / name).read_text())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One complete tiny run, shared: tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = execute(resolve(RECIPE), out)
    assert [o.action for o in result.outcomes] == ["run"] * len(STAGES)
    assert not result.failed
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def test_dry_run_plans_every_stage_with_an_estimate_and_writes_nothing(cli, tmp_path):
    code, out, err = cli("run", RECIPE, "--out", tmp_path / "never", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)["plan"]
    assert [p["stage"] for p in planned] == STAGES
    assert all(p["action"] == "run" for p in planned)
    assert [p["reason"] for p in planned] == ["no finished run in --out"] + RERUN_REASONS
    assert all(p["estimate_seconds"] > 0 and p["estimate_basis"].startswith("modelled") for p in planned)
    assert "4 steps" in planned[0]["estimate_basis"]
    assert not (tmp_path / "never").exists()


def test_every_stage_writes_a_manifest_with_its_input_hash(finished_run):
    for stage, name in [("distill", "distill.json"), ("eval", "eval.json"), ("convert-onnx", f"{STUDENT}.json"),
                        ("lint", "lint.json"), ("profile-iphone16pro", "profile.json"), ("profile-host-cpu", "profile.json")]:
        record = _manifest(finished_run, stage, name)["stage"]
        assert record["name"] == stage and len(record["hash"]) == 64 and record["passed"] is True
        assert all((finished_run / stage / output).exists() for output in record["outputs"])
        assert record["inputs"]["versions"]["effconv"]
    convert = _manifest(finished_run, "convert-onnx", f"{STUDENT}.json")["stage"]["inputs"]
    assert set(convert["upstream"]) == {"distill"}
    assert not (finished_run / "distill" / "stage-started.json").exists()


def test_second_run_skips_every_stage(finished_run, cli):
    code, out, err = cli("run", RECIPE, "--out", finished_run, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert [s["action"] for s in summary["stages"]] == ["skip"] * len(STAGES)
    assert all(p["reason"] == "unchanged" for p in summary["plan"])


def test_more_steps_continue_the_distillation_and_fewer_are_refused(finished_run):
    # the plan is what execute() follows (the first run and the resume test execute plans); running it again costs a minute
    more = plan(resolve(RECIPE, steps=6), finished_run)
    assert [d.action for d in more] == ["resume"] + ["run"] * (len(STAGES) - 1)
    assert more[0].reason == "resumes from step 4" and more[0].steps_done == 4
    assert [d.reason for d in more[1:]] == RERUN_REASONS
    with pytest.raises(EffconvError, match="asks for 3 steps, below the 4 the run in .* already trained") as refused:
        plan(resolve(RECIPE, steps=3), finished_run)
    assert "--steps 4 or more" in refused.value.fix


def test_a_renamed_eval_video_reruns_eval_and_what_measures_on_it(finished_run, tmp_path):
    renamed = tmp_path / "other.mp4"
    shutil.copy(BUNDLED_CLIP, renamed)
    decisions = plan(resolve(RECIPE, eval_data=[renamed]), finished_run)
    # quantize measures int8 quality on the eval videos; each device's profile costs its backend's int8 artifact
    reruns = {"eval", "quantize-onnx", "quantize-coreml", "quantize-stream-onnx", "quantize-stream-coreml",
              "profile-iphone16pro", "profile-host-cpu"}
    assert {d.stage.name: d.action for d in decisions} == {s: "run" if s in reruns else "skip" for s in STAGES}
    assert decisions[1].reason == "files changed"


def test_failed_stage_is_named_exit_2_and_earlier_outputs_stay(finished_run, tmp_path, cli):
    run_dir = _copy(finished_run, tmp_path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(BUNDLED_CLIP.read_bytes()[:3000])
    distilled = (run_dir / "distill" / "distill.json").read_text()
    code, _, err = cli("run", RECIPE, "--out", run_dir, "--eval-data", broken)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: stage eval failed: ")
    assert "Traceback" not in err
    assert (run_dir / "distill" / "distill.json").read_text() == distilled
    assert (run_dir / "distill" / f"{STUDENT}.yaml").is_file()
    assert not (run_dir / "eval").exists()


def test_failure_in_the_first_stage_leaves_no_output_folder(tmp_path, cli):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(BUNDLED_CLIP.read_bytes()[:3000])
    code, _, err = cli("run", RECIPE, "--data", broken, "--out", tmp_path / "new" / "out")
    assert code == 2 and "error: stage distill failed: " in err
    assert not (tmp_path / "new").exists()


def _report_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_report_numbers_equal_the_manifests(finished_run):
    text = (finished_run / "report.md").read_text()
    rows = _report_rows(text)
    distill = _manifest(finished_run, "distill", "distill.json")
    evaluated = _manifest(finished_run, "eval", "eval.json")["eval"]
    convert = _manifest(finished_run, "convert-onnx", f"{STUDENT}.json")
    host = _manifest(finished_run, "profile-host-cpu", "profile.json")["models"]
    phone = _manifest(finished_run, "profile-iphone16pro", "profile.json")["models"]

    assert rows["decoder params"] == [f"{distill['teacher_params']:,}", f"{distill['params']:,}",
                                      f"{distill['params'] / distill['teacher_params']:.1%}"]
    onnx_bytes = (finished_run / "convert-onnx" / convert["artifact"]).stat().st_size
    assert rows["onnx artifact size"][1] == size(onnx_bytes)
    assert rows["PSNR on the eval clip (dB)"][:2] == [f"{evaluated['mean_teacher_psnr_db']:.2f}",
                                                      f"{evaluated['mean_student_psnr_db']:.2f}"]
    assert rows["SSIM on the eval clip"][:2] == [f"{evaluated['mean_teacher_ssim']:.4f}", f"{evaluated['mean_student_ssim']:.4f}"]
    host_row = next(v for k, v in rows.items() if k.startswith("host latency, measured"))
    assert host_row[:2] == [f"{host['teacher']['measured']['median_ms']:.2f} ms",
                            f"{host['student-onnx']['measured']['median_ms']:.2f} ms"]
    latency = phone["student-coreml"]["latency_ms"]
    assert rows["iphone16pro latency, estimated (band)"][1] == (
        f"{latency['estimate']:.2f} ms ({latency['low']:.2f} - {latency['high']:.2f})")
    assert rows["iphone16pro FPS, estimated (band)"][1].startswith(f"{phone['student-coreml']['fps']['estimate']:.1f} ")
    assert rows["onnx"][1] == f"{convert['verify']['max_abs_err']:.3g}"
    assert rows["onnx"][2] == number(convert["verify"]["psnr_db"], 1)
    assert share(evaluated["mean_student_psnr_db"], evaluated["mean_teacher_psnr_db"]) in rows["PSNR on the eval clip (dB)"]
    assert "![student on iphone16pro" in text and "(eval/frames/bigbuckbunny-strip.png)" in text
    html = (finished_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and f"{distill['params']:,}" in html


def test_deploy_stream_exports_a_verified_streaming_artifact_profiled_per_call(finished_run):
    streamed = _manifest(finished_run, "stream-onnx", f"{STUDENT}.json")
    assert streamed["verify"]["passed"] and streamed["verify"]["max_abs_err"] <= 1e-4
    assert streamed["stream"]["latent_frames_per_call"] == 1 and streamed["stream"]["caches"]
    host = _manifest(finished_run, "profile-host-cpu", "profile.json")["models"]
    per_call = host["student-stream"]
    assert per_call["target"] == f"stream-onnx/{streamed['artifact']}"
    assert per_call["frames"] == streamed["stream"]["video_frames_per_call"] < host["student-onnx"]["frames"]
    assert per_call["measured"]["median_ms"] > 0
    rows = _report_rows((finished_run / "report.md").read_text())
    row = rows["onnx, streaming"]
    assert row[0].startswith(streamed["artifact"]) and row[3] == f"{streamed['verify']['max_abs_err']:.3g}"
    phone = _manifest(finished_run, "profile-iphone16pro", "profile.json")["models"]["student-stream"]
    assert phone["target"].startswith("stream-coreml/") and phone["backend"] == "coreml"
    assert rows["host-cpu (stream-onnx/tiny-teacher-student.onnx)"][1] == f"{per_call['measured']['median_ms']:.2f} ms"
    assert rows["host-cpu (stream-onnx/tiny-teacher-student.onnx)"][3].startswith(f"{per_call['memory']['total_mb']:.0f} MB (whole clip: ")


def test_deploy_stream_quantizes_the_streaming_step_checked_by_its_own_chunk_loop(finished_run):
    """ONNX: calibrated on the chunk loop's inputs, checked by its own chunk loop and for drift; Core ML: W8A16 (the
    recipe's W8A8 for the iPhone is whole-clip only), checked on the whole-clip decoder with the program's weights."""
    int8 = _manifest(finished_run, "quantize-stream-onnx", f"{STUDENT}-int8.json")
    q = int8["quantize"]
    assert q["gate"]["passed"] and q["quality"]["psnr_vs_float_db"] >= 30
    assert q["stream"]["calls"] == q["stream"]["latent_frames"] > 2 * q["stream"]["window_latent_frames"] - 1
    assert q["stream"]["fall_db"] <= 1.5  # drift lowers the last window; content alone moves it either way
    coreml = _manifest(finished_run, "quantize-stream-coreml", f"{STUDENT}-int8.json")["quantize"]
    assert coreml["scheme"].startswith("W8A16") and coreml["gate"]["passed"] and coreml["simulation_check"]["passed"]
    assert "calls" not in coreml["stream"]
    rows = _report_rows((finished_run / "report.md").read_text())
    row = rows["onnx, int8 streaming"]
    assert row[0] == f"{int8['artifact']} ({size(q['size_bytes']['quantized'])})"
    assert row[1] == number(q["quality"]["psnr_vs_float_db"])


def _recipe_with(tmp_path: Path, **sections) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text()) | sections
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _profile_stages(recipe: Path) -> dict:
    return {s.device: s for s in stages(resolve(recipe)) if s.kind == "profile"}


def test_each_device_costs_what_its_apps_ship(tmp_path, cli):
    recipe = _recipe_with(tmp_path, export={"backends": ["onnx", "coreml", "tflite"]},
                          profile={"devices": ["iphone16pro", "pixel9"]})
    profiled = _profile_stages(recipe)
    assert {device: stage.settings["backends"] for device, stage in profiled.items()} == {
        "iphone16pro": ["coreml"], "pixel9": ["tflite"],  # pixel9.yaml: backends [tflite, onnx, executorch]
        "host-cpu": ["onnx", "tflite"]}  # host-cpu.yaml lists coreml too, but a .mlpackage predicts only on macOS
    # the fixture quantizes onnx and coreml only
    assert profiled["pixel9"].after == ("distill", "convert-tflite", "stream-tflite")
    assert profiled["pixel9"].optional == ("stream-tflite",)
    assert "tflite (float), stream-tflite" in profiled["pixel9"].note
    assert "convert-coreml" not in profiled["pixel9"].after and "convert-tflite" not in profiled["iphone16pro"].after
    code, out, err = cli("run", recipe, "--out", tmp_path / "out", "--dry-run", "--json")
    assert code == 0, err
    notes = {p["stage"]: p["note"] for p in json.loads(out)["plan"]}
    assert notes["profile-iphone16pro"] == ("costs teacher, coreml (float, int8), stream-coreml: the first exported backend "
                                            "iphone16pro's profile lists (coreml, executorch): what its apps ship")
    assert notes["profile-host-cpu"].startswith("costs teacher, onnx (float, int8), tflite (float), stream-onnx: ")
    assert notes["lint"] is None
    code, out, err = cli("run", recipe, "--out", tmp_path / "out", "--dry-run")
    assert code == 0 and "costs teacher, coreml (float, int8)" in " ".join(out.split())


def test_recipe_profile_backends_override_the_mapping_and_bad_ones_exit_2(tmp_path, cli):
    export = {"backends": ["onnx", "coreml", "tflite"]}
    recipe = _recipe_with(tmp_path, export=export, profile={"devices": ["iphone16pro", "pixel9"], "backends": {
        "iphone16pro": ["onnx"], "pixel9": ["tflite"]}})
    profiled = _profile_stages(recipe)
    assert [profiled[d].settings["backends"] for d in ("iphone16pro", "pixel9", "host-cpu")] == [
        ["onnx"], ["tflite"], ["onnx", "tflite"]]
    assert "the recipe's profile.backends" in profiled["pixel9"].note
    for backends, message in [({"pixel9": ["caffe"]}, "profile.backends.pixel9.0"),
                              ({"pixel9": ["executorch"]}, "must also be in export.backends"),
                              ({"galaxy-s24": ["tflite"]}, "profile.devices does not list")]:
        bad = _recipe_with(tmp_path, export=export, profile={"devices": ["pixel9"], "backends": backends})
        code, _, err = cli("run", bad, "--out", tmp_path / "out", "--dry-run")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _section_rows(text: str, title: str) -> list[list[str]]:
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| device |")]


def _band(result: dict) -> str:
    latency = result["latency_ms"]
    return f"{latency['estimate']:.2f} ms ({latency['low']:.2f} - {latency['high']:.2f})"


def _disagrees(float_result: dict, int8_result: dict) -> bool:
    outside = any(not r["latency_ms"]["low"] <= r["measured"]["median_ms"] <= r["latency_ms"]["high"]
                  for r in (float_result, int8_result))
    estimated = float_result["latency_ms"]["estimate"] / int8_result["latency_ms"]["estimate"]
    measured = float_result["measured"]["median_ms"] / int8_result["measured"]["median_ms"]
    return outside or (estimated > 1) != (measured > 1)


def test_device_rows_name_the_costed_artifacts_with_float_and_int8_side_by_side(finished_run):
    text = (finished_run / "report.md").read_text()
    rows = _section_rows(text, "Devices: the artifact each row costs")
    host = _manifest(finished_run, "profile-host-cpu", "profile.json")["models"]
    phone = _manifest(finished_run, "profile-iphone16pro", "profile.json")["models"]
    by_artifact = {(row[0], row[1].split(":")[0]): row for row in rows}
    assert set(by_artifact) == {("host-cpu", "onnx"), ("host-cpu", "teacher"), ("iphone16pro", "coreml"),
                                ("iphone16pro", "teacher")}

    onnx, onnx_int8 = host["student-onnx"], host["student-onnx-int8"]
    row = by_artifact[("host-cpu", "onnx")]
    onnx_scheme = _manifest(finished_run, "quantize-onnx", f"{STUDENT}-int8.json")["quantize"]["scheme"].split(":")[0]
    assert row[1].startswith(f"onnx: convert-onnx/{STUDENT}.onnx ({onnx['dtype']}) / quantize-onnx/{STUDENT}-int8.onnx "
                             f"({onnx_scheme}, {onnx_int8['dtype']}")
    assert "int8" in row[1].split(" / ")[1]  # int8 compute, or int8 weights where the quantizer fell back to weight-only
    assert row[2] == f"{_band(onnx)}; measured {onnx['measured']['median_ms']:.2f} ms"
    assert row[4] == f"{_band(onnx_int8)}; measured {onnx_int8['measured']['median_ms']:.2f} ms"
    assert row[6] == (f"{onnx['latency_ms']['estimate'] / onnx_int8['latency_ms']['estimate']:.2f}x; measured "
                      f"{onnx['measured']['median_ms'] / onnx_int8['measured']['median_ms']:.2f}x")
    assert bool(row[7]) == _disagrees(onnx, onnx_int8)  # a note exactly where measurement and estimate disagree

    coreml, coreml_int8 = phone["student-coreml"], phone["student-coreml-int8"]
    row = by_artifact[("iphone16pro", "coreml")]
    # the iPhone 16 Pro's Neural Engine computes int8 x int8 (its profile cites Apple), so the recipe's `scheme: auto` is W8A8
    assert row[1].startswith(f"coreml: convert-coreml/{STUDENT}.mlpackage (fp16) / quantize-coreml/{STUDENT}-int8.mlpackage "
                             "(W8A8, fp16 (")
    assert coreml_int8["dtypes"]["int8"]["ops"] > 0 and coreml_int8["latency_ms"]["estimate"] < coreml["latency_ms"]["estimate"]
    assert coreml["source"].endswith("costed on its own ML program (fp16)") and coreml["backend"] == "coreml"
    assert row[2] == _band(coreml) and row[4] == _band(coreml_int8)  # estimates only: nothing measured off the host
    assert row[6] == f"{coreml['latency_ms']['estimate'] / coreml_int8['latency_ms']['estimate']:.2f}x"
    assert by_artifact[("iphone16pro", "teacher")][1] == "teacher: spec as ONNX (fp32)"
    assert "Each row costs the artifact named in it" in text


def test_a_measurement_against_its_estimate_gets_an_explanation_from_the_manifests(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    path = run_dir / "profile-host-cpu" / "profile.json"
    profile = json.loads(path.read_text())
    onnx, onnx_int8 = profile["models"]["student-onnx"], profile["models"]["student-onnx-int8"]
    estimated_faster = onnx["latency_ms"]["estimate"] > onnx_int8["latency_ms"]["estimate"]
    # the measurement says the opposite of the estimate: int8 twice as slow (or twice as fast)
    onnx_int8["measured"]["median_ms"] = onnx["measured"]["median_ms"] * (2 if estimated_faster else 0.5)
    path.write_text(json.dumps(profile))
    write_report(resolve(RECIPE), run_dir)
    rows = _section_rows((run_dir / "report.md").read_text(), "Devices: the artifact each row costs")
    note = next(row[7] for row in rows if row[0] == "host-cpu" and row[1].startswith("onnx:"))
    measured = onnx["measured"]["median_ms"] / onnx_int8["measured"]["median_ms"]
    estimated = onnx["latency_ms"]["estimate"] / onnx_int8["latency_ms"]["estimate"]
    direction = ("faster", "slower") if estimated_faster else ("slower", "faster")
    assert (f"int8 estimated {direction[0]} ({estimated:.2f}x) but measured {direction[1]} ({measured:.2f}x)") in note
    quantized = _manifest(run_dir, "quantize-onnx", f"{STUDENT}-int8.json")["quantize"]
    # which facts apply depends on what the quantizer chose on this CPU; each one it recorded is in the note
    if quantized.get("int8_kernels", {}).get("reduce_range"):  # x86 without VNNI: 7-bit weights
        assert f"this CPU's int8 kernels: {quantized['int8_kernels']['why']}" in note
    if quantized["scheme"].startswith("weight-only"):  # int8 compute was slower here: the quantizer kept float compute
        assert "the int8 artifact is weight-only: int8 weights, float compute" in note
    if quantized["float_nodes"]:
        assert f"{len(quantized['float_nodes'])} quantizable nodes compute in float: " in note
    assert f"host-cpu profile: {onnx_int8['validation'].split('. ')[0].rstrip('.')}" in note
    shares = onnx_int8["dtypes"]
    assert "costed FLOPs by dtype: " + ", ".join(f"{d} {v['flop_share']:.0%}" for d, v in shares.items()) in note
    assert "\n" not in note


def test_a_failed_int8_blocks_only_its_devices_int8_row(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    path = run_dir / "quantize-coreml" / f"{STUDENT}-int8.json"
    manifest = json.loads(path.read_text())
    manifest["stage"] |= {"passed": False, "message": "int8 lost 2 dB"}
    path.write_text(json.dumps(manifest))
    decisions = {d.stage.name: d for d in plan(resolve(RECIPE), run_dir)}
    assert decisions["quantize-coreml"].failed_before
    assert decisions["profile-iphone16pro"].action == "run"  # optional: its float rows are still costed
    assert decisions["profile-host-cpu"].action == "skip"  # it costs no Core ML artifact
    result = execute(resolve(RECIPE), run_dir)
    assert [o.stage for o in result.outcomes if o.action == "run"] == ["profile-iphone16pro"]
    phone = _manifest(run_dir, "profile-iphone16pro", "profile.json")
    assert "student-coreml-int8" not in phone["models"] and "student-coreml" in phone["models"]
    rows = _section_rows((run_dir / "report.md").read_text(), "Devices: the artifact each row costs")
    row = next(row for row in rows if row[0] == "iphone16pro" and row[1].startswith("coreml:"))
    assert row[4:7] == ["—"] * 3 and row[7] == phone["not_costed"]["student-coreml-int8"]
    assert row[7].startswith("quantize-coreml failed its check")


def test_report_says_eval_is_in_domain_when_it_reuses_the_training_video(finished_run):
    assert "also used for training" in (finished_run / "report.md").read_text()


def _student_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "distill" / STUDENT / "diffusion_pytorch_model.safetensors")


def _numbers(run_dir: Path) -> dict:
    evaluated = _manifest(run_dir, "eval", "eval.json")["eval"]
    convert = _manifest(run_dir, "convert-onnx", f"{STUDENT}.json")["verify"]
    phone = _manifest(run_dir, "profile-iphone16pro", "profile.json")["models"]["student-coreml"]
    return {"psnr": evaluated["mean_student_psnr_db"], "ssim": evaluated["mean_student_ssim"],
            "max_abs_err": convert["max_abs_err"], "phone_ms": phone["latency_ms"]["estimate"]}


@pytest.mark.slow
def test_run_killed_during_distill_resumes_to_the_uninterrupted_result(tmp_path):
    steps = "24"
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "effconv", "run", str(RECIPE), "--out", str(killed), "--steps", steps]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=os.environ | {"PYTHONPATH": str(REPO)})
    latest = killed / "distill" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest.is_file(), "no checkpoint before the deadline"
    assert not (killed / "distill" / "distill.json").exists(), "distillation finished before the kill"
    stopped_at = json.loads(latest.read_text())["step"]
    assert 0 < stopped_at < int(steps)

    inputs = resolve(RECIPE, steps=int(steps))
    assert plan(inputs, killed)[0].action == "resume"
    resumed = execute(inputs, killed)
    assert resumed.outcomes[0].action == "resume"
    assert _manifest(killed, "distill", "distill.json")["run"]["steps_this_run"] < int(steps)
    straight = tmp_path / "straight"
    execute(inputs, straight)

    expected, actual = _student_weights(straight), _student_weights(killed)
    assert expected.keys() == actual.keys()
    assert max((expected[k] - actual[k]).abs().max().item() for k in expected) < 1e-6
    assert _numbers(killed) == pytest.approx(_numbers(straight), rel=1e-5, abs=1e-6)


def test_spec_argument_uses_the_recipe_option_and_keeps_the_spec_name(cli, tmp_path):
    code, out, err = cli("run", SPECS / "hunyuan-tiny.yaml", "--recipe", RECIPE, "--out", tmp_path, "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["plan"][0]["stage"] == "distill"
    inputs = resolve(SPECS / "hunyuan-tiny.yaml", recipe_name=str(RECIPE))
    assert inputs.student_name == "hunyuan-tiny-student"
    code, _, err = cli("run", RECIPE, "--recipe", "tiny", "--out", tmp_path, "--dry-run")
    assert code == 2 and "--recipe applies only when the first argument is a spec" in err


def test_bad_pipeline_section_is_one_line_exit_2(cli, tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["export"] = {"backends": ["onnx", "caffe"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    code, _, err = cli("run", bad, "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and "export.backends.1" in err and len(err.strip().splitlines()) == 1
    recipe["export"] = {"backends": ["onnx"]}
    recipe["quantize"] = {"backends": ["tflite"]}
    bad.write_text(yaml.safe_dump(recipe))
    code, _, err = cli("run", bad, "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and "must also be in export.backends" in err


def test_device_file_names_cannot_escape_the_run_folder(cli, tmp_path):
    device = tmp_path / "..yaml"
    device.write_text("name: x\n")
    code, _, err = cli("run", RECIPE, "--device", device, "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and "cannot name a stage folder" in err


def test_video_outside_the_package_is_refused(cli, tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data"] = {"train": ["effconv:../../etc"]}
    bad = tmp_path / "escape.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    code, _, err = cli("run", bad, "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and "outside the effconv package" in err


def test_demo_recipe_teacher_is_the_shipped_demo_spec():
    recipe, source = load_recipe("demo")
    inputs = resolve("demo")
    shipped = yaml.safe_load((SPECS / "demo-teacher.yaml").read_text())
    assert inputs.teacher.resolved()["model"]["pretrained"] == str((REPO / "effconv" / "assets" / "demo-teacher").resolve())
    assert {k: v for k, v in recipe.teacher.items() if k != "model"} == {k: v for k, v in shipped.items() if k != "model"}
    assert inputs.train_data == (REPO / "effconv" / "assets" / "video",) == inputs.eval_data


def test_older_commands_accept_pipeline_recipes(cli, tmp_path):
    code, out, err = cli("rewrite", SPECS / "demo-teacher.yaml", "--recipe", "demo", "--out", tmp_path, "--json")
    assert code == 0, err
    assert json.loads(out)["recipe"]["student"]["widths"] == [48, 48, 16, 12, 8]


TINY_SPECS = {"wan": "wan21-tiny", "hunyuan": "hunyuan-tiny", "cogvideox": "cogvideox-tiny", "ltx": "ltx-tiny",
              "mochi": "mochi-tiny"}


def _placeholder_weights(directory: Path, class_name: str) -> Path:
    """A pretrained directory with the class's published (default) config and one placeholder tensor."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"_class_name": class_name}))
    import torch

    save_file({"placeholder": torch.zeros(1)}, directory / "diffusion_pytorch_model.safetensors")
    return directory


def _saved_tiny_teacher(directory: Path, family: str) -> Path:
    """The family's tiny teacher as a save_pretrained directory: weights that fit their config.json."""
    from effconv.models.loader import load_model
    from effconv.spec import load_spec

    load_model(load_spec(SPECS / f"{TINY_SPECS[family]}.yaml")).model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_real_family_recipe_plans_with_local_weights(family, cli, tmp_path):
    recipe = f"turbo-vaed-{family}"
    code, _, err = cli("run", recipe, "--data", BUNDLED_CLIP, "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and "--pretrained DIR" in err and len(err.strip().splitlines()) == 1
    weights = _saved_tiny_teacher(tmp_path / "weights", family)
    code, out, err = cli("run", recipe, "--pretrained", weights, "--data", BUNDLED_CLIP, "--out", tmp_path / "out",
                         "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)["plan"]
    quantized = [f"quantize-{b}" for b in quantized_backends(load_recipe(recipe)[0])]
    assert "quantize-onnx" in quantized
    assert [p["stage"] for p in planned] == ["distill", "eval", "convert-onnx", "convert-coreml", "convert-tflite",
                                             *quantized, "lint", "profile-iphone16pro", "profile-host-cpu"]
    assert re.match(r"modelled: 10000 steps x [0-9.e+-]+ s/step", planned[0]["estimate_basis"])
    assert planned[0]["estimate_seconds"] > 3600  # a paper-size student does not distill in an hour on a CPU


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_dry_run_refuses_the_weights_inspect_refuses(family, cli, tmp_path):
    weights = _placeholder_weights(tmp_path / "weights", FAMILIES[family])
    teacher = load_recipe(f"turbo-vaed-{family}")[0].teacher
    spec = tmp_path / "teacher.yaml"
    spec.write_text(yaml.safe_dump({**teacher, "model": {**teacher["model"], "pretrained": str(weights)}}))
    code, _, inspected = cli("inspect", spec)
    assert code == 2 and "1 unexpected (placeholder)" in inspected
    code, out, err = cli("run", f"turbo-vaed-{family}", "--pretrained", weights, "--data", BUNDLED_CLIP, "--out",
                         tmp_path / "out", "--dry-run")
    assert code == 2 and err == inspected and len(err.strip().splitlines()) == 1
    assert out == "" and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_on_every_backend(cli, tmp_path):
    code, _, err = cli("run", "demo", "--out", tmp_path, "--steps", "4")
    assert code == 0, err
    text = (tmp_path / "report.md").read_text()
    for backend in ("onnx", "coreml", "tflite"):
        assert f"{backend} artifact size" in text
