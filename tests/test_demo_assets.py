"""The shipped demo teacher is a real trained VAE of the right size, and the demo recipe fits it."""

import json

import numpy as np
import torch

from effconv.video.clips import BUNDLED_CLIP, center_crop
from effconv.video.reader import VideoReader, probe
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
    video = probe(BUNDLED_CLIP, 64)
    reader = VideoReader()
    starts = np.linspace(96, video.frames - 17, num=2).round().astype(int)  # windows in frames 96+, which it never saw
    clips = [center_crop(reader.window(video, int(start), 17), 64, 64) for start in starts]
    with torch.no_grad():
        scores = [psnr(teacher.model.decode(teacher.model.encode(c[None]).latent_dist.mode()).sample, c[None]) for c in clips]
    recorded = json.loads((TEACHER_DIR / "training.json").read_text())["held_out_psnr_db"]
    assert abs(sum(scores) / len(scores) - recorded) < 0.05


def test_demo_student_is_at_most_a_fifth_of_the_teacher_decoder():
    teacher = load_model(load_spec(SPECS / "demo-teacher.yaml"))
    recipe, _ = load_recipe("demo")
    student = build_student(teacher, recipe.student)
    assert sum(p.numel() for p in student.parameters()) <= 0.2 * teacher.num_params()
