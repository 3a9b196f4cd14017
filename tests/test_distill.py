"""Distillation on the bundled real clip: data, resume exactness, checkpoints, DDP, eval."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from effconv.cli.student import step_rate
from effconv.distill.checkpoint import latest_checkpoint
from effconv.video.clips import BUNDLED_CLIP, ClipSampler, probe_videos
from effconv.distill.stage import distill
from effconv.errors import EffconvError
from effconv.spec import load_spec

from conftest import REPO, SPECS

TEACHER = SPECS / "hunyuan-tiny.yaml"
RECIPE = REPO / "tests" / "data" / "distill-tiny.yaml"
VIDEO = BUNDLED_CLIP.parent


def _teacher():
    return load_spec(TEACHER).with_input(5, 32, 32)


def test_clips_are_seeded_scaled_and_shaped():
    videos = probe_videos([VIDEO], 5, 32, 32)
    sampler = ClipSampler(videos, 5, 32, 32, seed=3)
    clip = sampler.clip(7)
    assert clip.shape == (3, 5, 32, 32)
    assert -1.0 <= clip.min() and clip.max() <= 1.0
    assert clip.std() > 0.05  # real frames, not a constant
    assert torch.equal(clip, ClipSampler(videos, 5, 32, 32, seed=3).clip(7))
    assert not torch.equal(clip, sampler.clip(8))


def test_corrupt_and_short_videos_are_skipped_with_reasons(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(BUNDLED_CLIP.read_bytes()[:4000])
    (tmp_path / "text.mkv").write_text("not a video")
    videos = probe_videos([tmp_path, BUNDLED_CLIP], 5, 32, 32)
    assert [v.path for v in videos.videos] == [BUNDLED_CLIP]
    assert {p.name for p, _ in videos.skipped} == {"broken.mp4", "text.mkv"}
    too_long = probe_videos([BUNDLED_CLIP, tmp_path], 5, 32, 32)
    assert len(too_long.videos) == 1


def test_zero_usable_clips_is_an_error(tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(EffconvError, match="no usable video clips"):
        probe_videos([tmp_path], 5, 32, 32)
    with pytest.raises(EffconvError, match="no usable video clips"):
        probe_videos([BUNDLED_CLIP], 1000, 32, 32)


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(out / "checkpoints") / "weights.safetensors")


def test_resume_with_more_steps_reproduces_the_uninterrupted_run(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    # batches of 2 from a pool of 3 clips: step 1 has one clip from the cache and one through the teacher
    recipe["distill"] |= {"warmup_steps": 2, "lr_schedule": "cosine", "cosine_steps": 3, "min_lr": 1e-4, "grad_clip": 0.5,
                          "batch_size": 2, "grad_accum": 1}
    scheduled = tmp_path / "scheduled.yaml"
    scheduled.write_text(yaml.safe_dump(recipe))
    straight = distill(_teacher(), scheduled, [VIDEO], tmp_path / "straight", steps=4, workers=0)
    resumed = tmp_path / "resumed"
    distill(_teacher(), scheduled, [VIDEO], resumed, steps=2, workers=1)
    result = distill(_teacher(), scheduled, [VIDEO], resumed, steps=4, resume=True, workers=1)
    assert result.manifest.run["steps_this_run"] == 2
    expected, actual = _final_weights(tmp_path / "straight"), _final_weights(resumed)
    assert expected.keys() == actual.keys()
    worst = max((expected[k] - actual[k]).abs().max().item() for k in expected)
    assert worst < 1e-6
    assert [r["total"] for r in result.manifest.history] == pytest.approx([r["total"] for r in straight.manifest.history],
                                                                         rel=1e-6)
    assert all(r["grad_norm"] > 0 for r in straight.manifest.history)
    # the student actually trained: its weights moved from the random init
    first = load_file(sorted(resumed.glob("checkpoints/step-*"))[0] / "weights.safetensors")
    assert any(not torch.equal(first[k], actual[k]) for k in actual if k.startswith("student."))
    run = straight.manifest.run  # where the time went
    assert set(run["phase_seconds"]) == {"data", "teacher", "student", "optimizer", "other"}
    assert sum(run["phase_seconds"].values()) == pytest.approx(run["wall_seconds"], abs=0.05)
    assert run["phase_seconds"]["student"] > 0 and run["peak_host_rss_mb"] > 100
    assert run["device"] == "cpu" and run["world_size"] == 1 and run["data_workers"] == 0
    with pytest.raises(EffconvError, match="below the 4 steps already trained"):
        distill(_teacher(), scheduled, [VIDEO], resumed, steps=3, resume=True)


def test_training_lowers_the_loss_and_writes_a_convertible_student(tmp_path, cli):
    result = distill(_teacher(), RECIPE, [VIDEO], tmp_path / "run", steps=12, eval_data=[VIDEO])
    history = result.manifest.history
    assert history[-1]["total"] < history[0]["total"]
    assert result.manifest.verify["eval_psnr_db"] > 5.0
    spec = tmp_path / "run" / f"{result.manifest.artifact}.yaml"
    code, out, err = cli("convert", spec, "--to", "onnx", "--out", tmp_path / "onnx", "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["shape"] == [1, 3, 5, 32, 32]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-0000010", "step-0000012"]


def test_manifest_records_what_from_teacher_init_copied(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["student"]["init"] = "from-teacher"
    recipe_path = tmp_path / "from-teacher.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    init = distill(_teacher(), recipe_path, [VIDEO], tmp_path / "run", steps=1).manifest.init
    assert init["mode"] == "from-teacher"
    assert init["tensors"]["conv_in"] == "copied"  # tiny Hunyuan decoder and student both start 16 wide
    assert init["tensors"]["mid_block.0.conv1"].startswith("separable fit, relative error")


def test_existing_run_needs_resume(tmp_path):
    distill(_teacher(), RECIPE, [VIDEO], tmp_path, steps=2)
    with pytest.raises(EffconvError, match="already holds a run") as raised:
        distill(_teacher(), RECIPE, [VIDEO], tmp_path, steps=2)
    assert "--resume" in raised.value.fix


def test_two_process_ddp_keeps_ranks_in_sync(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "effconv",
               "distill", str(TEACHER), "--recipe", str(RECIPE), "--data", str(VIDEO), "--out", str(tmp_path), "--steps", "2",
               "--json"]
    spec_override = tmp_path.parent / "ddp-teacher.yaml"
    spec_override.write_text(TEACHER.read_text().replace("frames: 9, height: 32, width: 48", "frames: 5, height: 32, width: 32"))
    command[command.index(str(TEACHER))] = str(spec_override)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads(done.stdout)
    assert manifest["run"]["world_size"] == 2
    assert manifest["run"]["ranks_in_sync_max_abs_diff"] == 0.0


def test_eval_reports_retention_and_writes_strips(tmp_path, cli):
    distill(_teacher(), RECIPE, [VIDEO], tmp_path / "run", steps=2)
    spec = next((tmp_path / "run").glob("*-student.yaml"))
    code, out, err = cli("eval", spec, "--data", VIDEO, "--save-frames", tmp_path / "frames", "--json")
    assert code == 0, err
    summary = json.loads(out)
    row = summary["videos"][0]
    assert summary["retention"] == pytest.approx(row["student_psnr_db"] / row["teacher_psnr_db"], abs=1e-3)
    assert 0 < row["teacher_ssim"] <= 1 and 0 < row["student_ssim"] <= 1
    strip = tmp_path / "frames" / "bigbuckbunny-strip.png"
    assert strip.is_file()
    import matplotlib.pyplot as plt

    assert plt.imread(strip).shape[:2] == (3 * 32, 4 * 32)  # 3 rows (truth/teacher/student) x 4 frames


def test_cli_distill_on_a_corrupt_video_is_one_line_exit_2(cli, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(BUNDLED_CLIP.read_bytes()[:3000])
    code, _, err = cli("distill", TEACHER, "--recipe", RECIPE, "--data", broken, "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and "no usable video clips" in lines[0] and "broken.mp4" in lines[0]
    assert not (tmp_path / "out").exists()


def test_distill_rate_counts_only_this_runs_steps():
    resumed = step_rate()
    assert resumed(101, 2.0) == pytest.approx(0.5)  # resumed at step 100: one step in 2 s, not 101
    assert resumed(110, 10.0) == pytest.approx(1.0)
    fresh = step_rate()
    assert fresh(1, 0.0) == 0.0
    assert fresh(4, 2.0) == pytest.approx(2.0)


def test_nproc_relaunches_the_same_command_under_torchrun():
    from effconv.distill.launch import torchrun_command

    argv = ["distill", "t.yaml", "--nproc", "2", "--steps", "3", "--nproc=4", "--json"]
    assert torchrun_command(2, argv) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node=2", "-m", "effconv", "distill", "t.yaml", "--steps", "3", "--json"]
