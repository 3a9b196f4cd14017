"""`effconv run` keeps trained work, hashes each input file once, keys what it reuses by the code that made it, and
says how long a CPU run takes in units a person reads."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import effconv
from effconv.distill.checkpoint import latest_checkpoint, save_checkpoint
from effconv.distill.targets import cache_key
from effconv.errors import EffconvError
from effconv.models.loader import load_model
from effconv import provenance
from effconv.pipeline import hashing
from effconv.pipeline.durations import duration_text
from effconv.pipeline.plan import resolve
from effconv.pipeline.runner import plan, run_stage
from effconv.pipeline.stages import PRODUCERS
from effconv.spec import load_spec
from effconv.video.clips import BUNDLED_CLIP, probe_videos

from conftest import REPO, SPECS

PIPELINE_RECIPE = REPO / "tests" / "data" / "pipeline-tiny.yaml"
BIG_INPUT_BYTES = 64 << 20


@pytest.fixture
def light_recipe(tmp_path) -> Path:
    """pipeline-tiny distilling 2 steps with a checkpoint each, exporting and quantizing ONNX only."""
    recipe = yaml.safe_load(PIPELINE_RECIPE.read_text())
    recipe["distill"] |= {"steps": 2, "checkpoint_every": 1}
    recipe["export"] = {"backends": ["onnx"]}
    recipe["quantize"] |= {"backends": ["onnx"]}
    recipe["profile"] = {"devices": ["host-cpu"], "host_repeats": 1}
    recipe.pop("deploy")
    path = tmp_path / "light.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _distilled(recipe: Path, out: Path, **overrides):
    """Only the distill stage of a run, as execute() runs it."""
    inputs = resolve(recipe, **overrides)
    decision = plan(inputs, out)[0]
    return run_stage(inputs, decision, out)


def _tree_digest(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_fewer_steps_than_a_finished_distillation_are_refused_and_it_stays(light_recipe, tmp_path, cli):
    out = tmp_path / "run"
    assert _distilled(light_recipe, out).action == "run"
    before = _tree_digest(out / "distill")
    assert "checkpoints/step-0000002/weights.safetensors" in before
    for dry in ([], ["--dry-run"]):
        code, stdout, err = cli("run", light_recipe, "--out", out, "--steps", "1", *dry)
        assert code == 2 and len(err.strip().splitlines()) == 1 and stdout == ""
        assert "asks for 1 steps, below the 2 the run in" in err and "--steps 2 or more" in err
        assert _tree_digest(out / "distill") == before


def test_fewer_steps_than_an_interrupted_distillation_are_refused(light_recipe, tmp_path):
    out = tmp_path / "run"
    inputs = resolve(light_recipe, steps=3)
    decision = plan(inputs, out)[0]

    def interrupt(record, _elapsed):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(inputs, decision, out, on_step=interrupt)
    assert latest_checkpoint(out / "distill" / "checkpoints").name == "step-0000002"
    with pytest.raises(EffconvError, match="asks for 1 steps, below the 2 the run"):
        plan(resolve(light_recipe, steps=1), out)
    assert plan(resolve(light_recipe, steps=3), out)[0].reason == "resumes from step 2"
    assert latest_checkpoint(out / "distill" / "checkpoints").name == "step-0000002"


def test_a_distillation_with_other_inputs_says_which_checkpoints_it_replaces(light_recipe, tmp_path):
    out = tmp_path / "run"
    _distilled(light_recipe, out)
    other = tmp_path / "videos"
    other.mkdir()
    shutil.copy(BUNDLED_CLIP, other / "other.mp4")
    decision = plan(resolve(light_recipe, data=[other]), out)[0]
    assert decision.action == "run"
    assert decision.reason == "files changed; replaces the other run there (checkpoints up to step 2)"


def test_checkpoints_are_pruned_by_step_number_not_by_name(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (9_999_998, 9_999_999, 10_000_000):
        save_checkpoint(tmp_path, step, {"model": model}, optimizer, {}, keep=2)
    # as strings, step-10000000 sorts first: the newest checkpoint would be the one pruned
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-10000000", "step-9999999"]
    assert latest_checkpoint(tmp_path).name == "step-10000000"


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc/self/io, rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts reads with Linux /proc/self/io")
def test_each_input_file_is_read_once_until_it_changes(light_recipe, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(BUNDLED_CLIP, videos / "clip.mp4")
    big = videos / "big.mp4"  # hashed, never decoded by a plan
    with open(big, "wb") as handle:
        handle.truncate(BIG_INPUT_BYTES)
    inputs = resolve(light_recipe, data=[videos])
    out = tmp_path / "run"
    progress: list[str] = []

    def planned() -> tuple[int, str]:
        start = _bytes_read()
        decisions = plan(inputs, out, on_progress=progress.append)
        return _bytes_read() - start, decisions[0].hash

    # the training videos are the eval and quantize videos too: before, distill, eval and quantize-onnx each read them
    first, first_hash = planned()
    assert BIG_INPUT_BYTES <= first < 1.5 * BIG_INPUT_BYTES
    again, again_hash = planned()
    assert again < (1 << 20) and again_hash == first_hash
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 1_000_000_000))
    touched, touched_hash = planned()
    assert touched >= BIG_INPUT_BYTES and touched_hash == first_hash  # read again; the content is the same
    mtime = big.stat().st_mtime_ns
    with open(big, "r+b") as handle:
        handle.write(b"\1")
    os.utime(big, ns=(mtime, mtime))  # same size and modification time: the change time still differs
    changed, changed_hash = planned()
    assert changed >= BIG_INPUT_BYTES and changed_hash != first_hash


def test_slow_hashing_reports_its_progress(light_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "PROGRESS_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(hashing, "PROGRESS_EVERY_SECONDS", 0.0)
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(BUNDLED_CLIP, videos / "clip.mp4")
    progress: list[str] = []
    plan(resolve(light_recipe, data=[videos]), tmp_path / "run", on_progress=progress.append)
    size_mb = BUNDLED_CLIP.stat().st_size / 1e6
    assert progress and progress[0].startswith("hashing the inputs of distill: 0 file(s) done, ")
    assert f"{size_mb:.0f} MB read" in progress[-1]


@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    """effconv's sources copied, so a test can edit them: provenance reads the copy."""
    copy = Path(shutil.copytree(provenance.PACKAGE_DIR, tmp_path / "effconv",
                                ignore=shutil.ignore_patterns("assets", "__pycache__", "*.pyc")))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)
    provenance.source_digest.cache_clear()
    yield copy
    provenance.source_digest.cache_clear()


def _edited(copy: Path, module: str) -> None:
    path = copy / module
    path.write_text(path.read_text() + "\n# edited\n")
    provenance.source_digest.cache_clear()


def test_the_teacher_cache_is_keyed_by_the_code_and_version_that_fill_it(package_copy, monkeypatch):
    teacher = load_model(load_spec(SPECS / "hunyuan-tiny.yaml").with_input(5, 32, 32))
    videos = probe_videos([BUNDLED_CLIP], 5, 32, 32).videos
    key = cache_key(teacher, {}, videos, seed=0)
    _edited(package_copy, "profile/plot.py")  # draws plots: fills no cache
    assert cache_key(teacher, {}, videos, seed=0) == key
    _edited(package_copy, "video/clips.py")  # crops and samples the clips
    sampled = cache_key(teacher, {}, videos, seed=0)
    assert sampled != key
    _edited(package_copy, "distill/features.py")  # taps the teacher's features
    assert cache_key(teacher, {}, videos, seed=0) not in (key, sampled)
    monkeypatch.setattr(effconv, "__version__", "99.0")
    assert cache_key(teacher, {}, videos, seed=0) not in (key, sampled)


def test_a_stage_hash_covers_the_code_that_makes_its_outputs(package_copy):
    before = {kind: provenance.produced_by(module) for kind, module in PRODUCERS.items()}
    _edited(package_copy, "quantize/stage.py")
    after = {kind: provenance.produced_by(module) for kind, module in PRODUCERS.items()}
    assert {kind for kind in PRODUCERS if after[kind] != before[kind]} == {"quantize"}
    _edited(package_copy, "video/clips.py")
    changed = {kind for kind in PRODUCERS if provenance.produced_by(PRODUCERS[kind]) != after[kind]}
    assert {"distill", "eval", "quantize"} <= changed and "lint" not in changed


def test_durations_read_in_minutes_hours_and_days():
    assert [duration_text(s) for s in (42, 258, 7.5 * 3600, 35_423_322)] == ["42 s", "4.3 min", "7.5 h", "410 days"]


def test_a_long_cpu_distillation_points_at_steps_and_a_gpu(cli, tmp_path):
    weights = tmp_path / "weights"
    load_model(load_spec(SPECS / "wan21-tiny.yaml")).model.save_pretrained(weights)
    code, out, err = cli("run", "turbo-vaed-wan", "--pretrained", weights, "--data", BUNDLED_CLIP, "--out",
                         tmp_path / "out", "--dry-run", "--train-device", "cpu")
    assert code == 0, err
    text = " ".join(out.split())
    assert " days in all (an estimate)" in text and " min in all" not in text
    assert "distilling to step 10000 on this CPU takes about " in text
    assert "pass --steps N for a shorter run (--steps " in text and "--train-device cuda" in text
    code, out, err = cli("run", "turbo-vaed-wan", "--pretrained", weights, "--data", BUNDLED_CLIP, "--out",
                         tmp_path / "out", "--dry-run", "--train-device", "cpu", "--steps", "1")
    assert code == 0, err
    assert "--train-device cuda" not in " ".join(out.split())  # one step is not a long run
