"""The shipped demo teacher is a real trained VAE of the right size, and the demo recipe fits it."""

import json

import torch

from effconv.video.clips import BUNDLED_CLIP, center_clips, probe_videos
from effconv.video.metrics import psnr
from effconv.models.loader import load_model
from effconv.recipe import load_recipe
from effconv.models.turbo_vaed.decoder import build_student
from effconv.spec import load_spec

from conftest import REPO, SPECS

TEACHER_DIR = REPO / "effconv" / "assets" / "demo-teacher"


def test_demo_teacher_weights_are_small_and_documented():
    weights = TEACHER_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    training = json.loads((TEACHER_DIR / "training.json").read_text())
    assert training["steps"] > 0 and training["held_out_psnr_db"] > 0


def test_demo_teacher_reconstructs_held_out_frames_as_recorded():
    teacher = load_model(load_spec(SPECS / "demo-teacher.yaml").with_input(17, 64, 64))
    held_out = probe_videos([BUNDLED_CLIP], 17, 64, 64)
    held_out.videos[0].frames = held_out.videos[0].frames[96:]
    clips = center_clips(held_out, 17, 64, 64, per_video=2)
    with torch.no_grad():
        scores = [psnr(teacher.model.decode(teacher.model.encode(c[None]).latent_dist.mode()).sample, c[None]) for _, c in clips]
    recorded = json.loads((TEACHER_DIR / "training.json").read_text())["held_out_psnr_db"]
    assert abs(sum(scores) / len(scores) - recorded) < 0.05


def test_demo_student_is_at_most_a_fifth_of_the_teacher_decoder():
    teacher = load_model(load_spec(SPECS / "demo-teacher.yaml"))
    recipe, _ = load_recipe("demo")
    student = build_student(teacher, recipe.student)
    assert sum(p.numel() for p in student.parameters()) <= 0.2 * teacher.num_params()
