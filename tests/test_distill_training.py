"""Distillation at scale without a GPU: every tensor on the training device, the LR schedule, the teacher-latent
cache key, the throughput record; and on CUDA when a GPU is present."""

import json
import shutil

import pytest
import torch

from effconv.distill.stage import distill
from effconv.distill.targets import cache_key
from effconv.distill.trainer import Distiller, World, learning_rate_factor, resolve_device
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.decoder import build_student
from effconv.recipe import DistillRecipe, load_recipe
from effconv.spec import load_spec
from effconv.video.clips import BUNDLED_CLIP, ClipSampler, probe_videos

from conftest import REPO, SPECS

TEACHER = SPECS / "hunyuan-tiny.yaml"
RECIPE = REPO / "tests" / "data" / "distill-tiny.yaml"
META = torch.device("meta")  # a second device CPU-only torch has: a CPU tensor meeting a meta module raises


def _distiller(tmp_path, device: torch.device) -> Distiller:
    recipe, _ = load_recipe(RECIPE)
    teacher = load_model(load_spec(TEACHER).with_input(5, 32, 32))
    sampler = ClipSampler(probe_videos([BUNDLED_CLIP], 5, 32, 32), 5, 32, 32, seed=recipe.distill.seed)
    student = build_student(teacher, recipe.student, seed=0)
    return Distiller(teacher, student, recipe.distill, sampler, World(device=device), cache_root=tmp_path / "cache",
                     workers=0)


def test_every_tensor_reaches_the_model_on_the_training_device(tmp_path):
    on_cpu = _distiller(tmp_path, torch.device("cpu"))
    batches = on_cpu.batches(2)
    for _ in range(2):
        on_cpu.train_step(batches)  # fills the clip pool's cache (3 clips) on the CPU
    on_meta = _distiller(tmp_path, META)
    assert on_meta.cache.directory == on_cpu.cache.directory
    terms = on_meta.train_step(on_meta.batches(1))  # cached targets come back from disk: they must move too
    assert {value.device for value in terms.values()} == {META}
    assert {p.device for p in on_meta.trainable.parameters()} == {META}
    assert {p.device for p in on_meta.ema_student.parameters()} == {META}
    clip = on_meta.sampler.clip(0)
    assert on_meta.eval_psnr([(BUNDLED_CLIP, clip)]).device == META  # the EMA is evaluated where it lives


def test_a_retrained_teacher_of_the_same_shape_gets_a_new_cache(tmp_path):
    teacher = load_model(load_spec(TEACHER).with_input(5, 32, 32))
    videos = probe_videos([BUNDLED_CLIP], 5, 32, 32).videos
    key = cache_key(teacher, {}, videos, seed=0)
    assert cache_key(teacher, {}, videos, seed=1) != key
    shutil.copy(BUNDLED_CLIP, tmp_path / "copy.mp4")
    assert cache_key(teacher, {}, probe_videos([tmp_path], 5, 32, 32).videos, seed=0) != key
    with torch.no_grad():
        next(teacher.model.parameters()).add_(1e-3)
    assert cache_key(teacher, {}, videos, seed=0) != key


def test_learning_rate_warms_up_then_follows_its_schedule_whatever_the_step_count():
    constant = learning_rate_factor(DistillRecipe(lr=1e-3, warmup_steps=4))
    assert [constant(k) for k in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cosine = learning_rate_factor(DistillRecipe(lr=1e-3, warmup_steps=2, lr_schedule="cosine", cosine_steps=10,
                                                min_lr=1e-4))
    assert cosine(2) == pytest.approx(1.0)
    assert cosine(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine(12) == pytest.approx(0.1) and cosine(1000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="cosine_steps"):
        DistillRecipe(lr_schedule="cosine")


def test_a_training_device_torch_cannot_see_is_one_line_exit_2(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = cli("distill", TEACHER, "--recipe", RECIPE, "--data", BUNDLED_CLIP, "--out", tmp_path / "out",
                       "--device", "cuda")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sees no CUDA GPU" in err
    with pytest.raises(EffconvError, match="not a device effconv can run torch on"):
        resolve_device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distills_on_cuda(tmp_path):
    result = distill(load_spec(TEACHER).with_input(5, 32, 32), RECIPE, [BUNDLED_CLIP], tmp_path, steps=4,
                     eval_data=[BUNDLED_CLIP], device="cuda")
    run = result.manifest.run
    assert run["device"].startswith("cuda") and run["peak_device_memory_mb"] > 0
    assert result.manifest.verify["eval_psnr_db"] > 5.0
    assert json.loads((tmp_path / "distill.json").read_text())["run"]["steps"] == 4
