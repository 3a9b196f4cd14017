"""What `effconv run` works on: the recipe with its overrides applied, the teacher, the videos, and the
ordered list of stages with the settings that define each stage's result.

The first argument is a recipe (a packaged name or a YAML path) whose `teacher:` names the teacher, or a
teacher spec, which then uses `--recipe` (default `turbo-vaed`) for everything else.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from effconv.backends import registry
from effconv.backends.onnx.export import DEFAULT_OPSET
from effconv.errors import EffconvError
from effconv.host import cpu_model, default_threads
from effconv.legalize.lint import rule_table
from effconv.distill.trainer import resolve_device
from effconv.models.loader import load_model, pretrained_root
from effconv.models.teacher_fit import check_teacher_fits, is_student
from effconv.profile.device.profiles import load_device, profiles_dir
from effconv.profile.graph.targets import parse_resolution
from effconv.quantize.stage import WEIGHT_ONLY_STREAMS
from effconv.recipe import HOST_DEVICE, Recipe, load_recipe
from effconv.rewrite.stage import STUDENT_SUFFIX
from effconv.spec import SAFE_NAME, LoadedSpec, load_spec, read_yaml_mapping, spec_from_dict
from effconv.video.clips import expand_paths

DEFAULT_SPEC_RECIPE = "turbo-vaed"
DISTILL_STAGE, STUDENT_STAGE = "distill", "student"
PACKAGE_PREFIX = "effconv:"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunInputs:
    recipe: Recipe
    recipe_source: str
    teacher: LoadedSpec
    train_data: tuple[Path, ...]
    eval_data: tuple[Path, ...]
    devices: tuple[str, ...]
    allow_import: bool = False
    train_device: str = "auto"  # where distillation runs; not hashed: a run started on CPU may continue on a GPU
    workers: int | None = None
    trained_student: LoadedSpec | None = None  # the recipe's student trained already: imported, not distilled

    @property
    def student_name(self) -> str:
        return f"{self.teacher.spec.name}{STUDENT_SUFFIX}"

    @property
    def student_stage(self) -> str:
        """The stage that writes the student every later stage reads: its distillation, or its import."""
        return STUDENT_STAGE if self.trained_student is not None else DISTILL_STAGE

    @property
    def eval_is_train(self) -> bool:
        return bool(set(expand_paths(list(self.eval_data))) & set(expand_paths(list(self.train_data))))


@dataclass(frozen=True)
class Stage:
    """One step of the run. `after`: stages whose manifests it reads; `settings` and the content of
    `files` (with the upstream manifests) define its result, so they make up its hash. `optional`:
    upstream stages whose failed check does not stop this one (it reports their artifact as failed)."""

    name: str
    kind: str
    after: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    backend: str | None = None
    device: str | None = None
    note: str = ""  # what the plan shows beside the stage's reason: for a profile stage, the artifacts it costs and why


def _is_spec(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") and path.is_file() and "model" in read_yaml_mapping(path, "spec or recipe")


def video_path(entry: str, base_dir: Path) -> Path:
    """A recipe's video entry: relative to the recipe, or `effconv:PATH` inside the installed package."""
    if not entry.startswith(PACKAGE_PREFIX):
        path = Path(entry)
        return path if path.is_absolute() else base_dir / path
    inside = (PACKAGE_DIR / entry.removeprefix(PACKAGE_PREFIX)).resolve()
    if not inside.is_relative_to(PACKAGE_DIR):
        raise EffconvError(f"video '{entry}' points outside the effconv package.", "use effconv:assets/video or a normal path.")
    return inside


def _recipe_spec(entry: str | dict, source: Path, section: str) -> LoadedSpec:
    """A recipe's spec entry: inline, or a path relative to the recipe."""
    if isinstance(entry, dict):
        return spec_from_dict(entry, source.resolve().parent, source=f"recipe {source}: {section}")
    path = Path(entry)
    return load_spec(path if path.is_absolute() else source.resolve().parent / path)


def _recipe_teacher(recipe: Recipe, source: Path) -> LoadedSpec:
    if recipe.teacher is None:
        raise EffconvError(
            f"recipe '{source}' names no teacher.",
            f"add 'teacher:' (a spec path or an inline spec) to it, or pass a spec: effconv run SPEC --recipe {source}.",
        )
    return _recipe_spec(recipe.teacher, source, "teacher")


def _trained_student(recipe: Recipe, source: Path, teacher: LoadedSpec, steps: int | None) -> LoadedSpec | None:
    """The recipe's trained student, loaded (strictly) and checked to decode the teacher's latents."""
    if recipe.trained_student is None:
        recipe.require_student(str(source))
        return None
    if steps is not None:
        raise EffconvError(f"--steps sets a distillation's length, but recipe '{source}' ships a student trained already "
                           "(trained_student).", "drop --steps.")
    trained = _recipe_spec(recipe.trained_student, source, "trained_student")
    if not is_student(trained):
        raise EffconvError(f"recipe '{source}': trained_student builds a {trained.spec.model.diffusers or 'factory model'}, "
                           "not a Turbo-VAED student.", "point it at a spec of a TurboVAEDDecoder or an "
                           "AutoencoderKLTurboVAED (the Turbo-VAED authors' format).")
    check_teacher_fits(load_model(teacher), trained.spec.name, load_model(trained).compression)
    return trained


def _with_pretrained(teacher: LoadedSpec, pretrained: Path) -> LoadedSpec:
    pretrained_root(pretrained)
    model = teacher.spec.model.model_copy(update={"pretrained": pretrained.resolve()})
    return LoadedSpec(spec=teacher.spec.model_copy(update={"model": model}), base_dir=teacher.base_dir)


def _videos(given: list[Path] | None, entries: list[str], base_dir: Path, what: str, source: str) -> tuple[Path, ...]:
    paths = [Path(p) for p in given] if given else [video_path(entry, base_dir) for entry in entries]
    if not paths:
        raise EffconvError(f"recipe '{source}' names no {what} video.",
                           f"pass --data VIDEO (files or folders), e.g. --data {PACKAGE_DIR / 'assets' / 'video'}.")
    if not expand_paths(paths):
        raise EffconvError(f"no video files in {', '.join(map(str, paths))}.", "pass video files or folders holding them.")
    return tuple(paths)


def _check_devices(devices: list[str]) -> None:
    for device in devices:
        device_label(device)
        if device != HOST_DEVICE:
            load_device(device)


def resolve(target: str | Path, recipe_name: str | None = None, steps: int | None = None, pretrained: Path | None = None,
            data: list[Path] | None = None, eval_data: list[Path] | None = None, devices: list[str] | None = None,
            allow_import: bool = False, train_device: str = "auto", workers: int | None = None) -> RunInputs:
    """Validate everything a run needs before any stage starts; every problem is a one-line EffconvError."""
    path = Path(target)
    if _is_spec(path):
        teacher = load_spec(path)
        recipe, source = load_recipe(recipe_name or DEFAULT_SPEC_RECIPE)
    else:
        if recipe_name is not None:
            raise EffconvError("--recipe applies only when the first argument is a spec.",
                               f"drop --recipe, or pass a teacher spec instead of '{target}'.")
        recipe, source = load_recipe(target)
        teacher = _recipe_teacher(recipe, Path(source))
    resolve_device(train_device)  # an unusable device is refused before any stage starts
    if steps is not None:
        if steps < 1:
            raise EffconvError(f"--steps must be at least 1, got {steps}.", "pass a positive number of steps.")
        recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"steps": steps})})
    if pretrained is not None:
        teacher = _with_pretrained(teacher, Path(pretrained))
    if recipe.requires_pretrained and teacher.pretrained_dir is None:
        raise EffconvError(
            f"recipe '{source}' distills {teacher.spec.model.diffusers or 'its teacher'} and needs its trained weights.",
            "pass --pretrained DIR: a diffusers save_pretrained directory (config.json + safetensors), a pipeline "
            "directory with a vae/ subfolder, or a single .safetensors checkpoint.",
        )
    # Built as `effconv inspect` and the distill stage build it: weights that do not fit the class (missing or
    # unexpected keys, other shapes) are refused before any stage starts, also by --dry-run.
    load_model(teacher, allow_import=allow_import)
    if teacher.spec.part != "decoder":
        raise EffconvError(f"the teacher spec's part is '{teacher.spec.part}'; effconv run replaces a decoder.",
                           "set 'part: decoder' in the teacher spec.")
    trained = _trained_student(recipe, Path(source), teacher, steps)
    base_dir = Path(source).resolve().parent
    train = _videos(data, recipe.data.train, base_dir, "training", source)
    held_out = _videos(eval_data, recipe.data.eval, base_dir, "eval", source) if (eval_data or recipe.data.eval) else train
    if recipe.profile.resolution is not None:

        try:
            parse_resolution(recipe.profile.resolution)
        except EffconvError as bad:
            raise EffconvError(f"recipe '{source}': profile.resolution '{recipe.profile.resolution}' is not understood.",
                               bad.fix) from None
    chosen = list(devices) if devices else [
        str(base_dir / d) if is_device_file(d) and not Path(d).is_absolute() else d for d in recipe.profile.devices]
    _check_devices(chosen)
    return RunInputs(recipe=recipe, recipe_source=source, teacher=teacher, train_data=train, eval_data=held_out,
                     devices=tuple(dict.fromkeys([*chosen, HOST_DEVICE])), allow_import=allow_import,
                     train_device=train_device, workers=workers, trained_student=trained)


def _teacher_files(teacher: LoadedSpec) -> tuple[Path, ...]:
    return (pretrained_root(teacher.pretrained_dir),) if teacher.pretrained_dir is not None else ()


def _lint_device(backend: str, devices: tuple[str, ...]) -> str | None:
    """Lint for the first profiled target device with rules for this backend (else every compute unit of
    the backend); host-cpu, always profiled for the host measurement, is not a deployment target."""

    listed = rule_table(backend)["devices"]
    return next((device for device in devices if device in listed and device != HOST_DEVICE), None)


def quantized_backends(recipe: Recipe) -> list[str]:
    """The exported backends to quantize: the recipe's list, or by default every exported one (every registered
    backend has a quantizer)."""
    if recipe.quantize.backends is None:
        return [registry.get(b).name for b in recipe.export.backends]
    return [b for b in recipe.export.backends if b in recipe.quantize.backends]


def _int8_scheme(backend: str, scheme: str, devices: list[str]) -> str:
    """The recipe's Core ML scheme, auto resolved: W8A8 when a profiled device's Core ML unit computes int8 x int8
    (`DeviceProfile.coreml_scheme`), else W8A16. Other backends have one scheme (`auto`). host-cpu runs no Core ML
    (and loading it would measure this machine)."""
    if backend != "coreml" or scheme != "auto":
        return scheme
    return "w8a8" if any(load_device(d).coreml_scheme == "w8a8" for d in devices if d != HOST_DEVICE) else "w8a16"


def is_device_file(device: str) -> bool:
    return device.endswith((".yaml", ".yml")) or "/" in device or os.sep in device


def device_label(device: str) -> str:
    """A device for stage and folder names: a profile name, or a user profile file's stem."""
    label = Path(device).stem if is_device_file(device) else device
    if not re.fullmatch(SAFE_NAME, label) or label.startswith("."):
        raise EffconvError(f"device '{device}' cannot name a stage folder.",
                           "name device profile files with letters, digits, '.', '_' or '-'.")
    return label


def runs_on_this_machine(backend: str) -> bool:
    """Whether this machine runs the backend's artifact (host-cpu's rows are measured): Core ML predicts only on
    macOS (backends/coreml/export.py `load_all`); onnxruntime, LiteRT and ExecuTorch run on any host."""
    return backend != "coreml" or platform.system() == "Darwin"


def listed_backends(device: str) -> list[str]:
    """The backends a device's profile lists; host-cpu's read from its YAML, so planning does not measure the host."""
    if device != HOST_DEVICE:
        return load_device(device).backends
    with resources.as_file(profiles_dir() / f"{HOST_DEVICE}.yaml") as path:
        return read_yaml_mapping(path, "device profile")["backends"]


def device_backends(recipe: Recipe, device: str) -> tuple[list[str], str]:
    """The backends whose artifacts a device's rows cost, and why: the recipe's `profile.backends` entry, else the
    first exported backend the device's profile lists (what an app for it ships: Core ML on an iPhone, TFLite on
    Android), or on host-cpu every exported backend that runs here."""
    chosen = {device_label(name): backends for name, backends in (recipe.profile.backends or {}).items()}
    if device_label(device) in chosen:
        return list(chosen[device_label(device)]), "the recipe's profile.backends"
    listed = listed_backends(device)
    exported = [b for b in listed if b in recipe.export.backends]
    if device == HOST_DEVICE:
        why = f"the exported backends {device_label(device)}'s profile lists ({', '.join(listed)})"
        elsewhere = [b for b in exported if not runs_on_this_machine(b)]
        exported = [b for b in exported if runs_on_this_machine(b)]
        why += f" that run on this machine ({', '.join(elsewhere)} does not)" if elsewhere else " and this machine runs"
    else:
        why = f"the first exported backend {device_label(device)}'s profile lists ({', '.join(listed)}): what its apps ship"
        exported = exported[:1]
    if not exported:
        why += ": none is exported, so the student's spec is costed as ONNX"
    return exported, why


def _profile_stage(inputs: RunInputs, device: str, planned: set[str]) -> Stage:
    """Per mapped backend the float artifact and, when quantized, its int8; the streaming artifact of the first
    mapped backend; the teacher (exported from its spec) always. Quantized and streaming artifacts are optional:
    one that failed its check is reported as such, and the device's other rows are still costed."""
    recipe, host = inputs.recipe, device == HOST_DEVICE
    backends, why = device_backends(recipe, device)
    floats = [f"convert-{b}" for b in backends]
    int8 = [f"quantize-{b}" for b in backends if f"quantize-{b}" in planned]
    stream = [f"stream-{b}" for b in backends if f"stream-{b}" in planned][:1]
    settings = {"device": device, "resolution": None if host else recipe.profile.resolution, "backends": backends}
    if host:
        settings |= {"measure": True, "repeats": recipe.profile.host_repeats, "threads": default_threads(),
                     "cpu": cpu_model()}
    costed = [f"{b} (float{', int8' if f'quantize-{b}' in int8 else ''})" for b in backends] or ["student spec as ONNX"]
    note = f"costs teacher, {', '.join(costed)}{''.join(f', {s}' for s in stream)}: {why}"
    return Stage(f"profile-{device_label(device)}", "profile", after=(inputs.student_stage, *floats, *int8, *stream),
                 optional=(*int8, *stream), device=device, settings=settings,
                 files=(Path(device),) if is_device_file(device) else (), note=note)


def _student_stage(inputs: RunInputs) -> Stage:
    """Distill a student of the recipe's layout, or import the recipe's trained student."""
    teacher_files = _teacher_files(inputs.teacher)
    if inputs.trained_student is not None:
        return Stage(STUDENT_STAGE, "import", settings={"teacher": inputs.teacher.resolved(),
                                                        "trained_student": inputs.trained_student.resolved()},
                     files=teacher_files + _teacher_files(inputs.trained_student),
                     note=f"imports the trained student '{inputs.trained_student.spec.name}': no distillation")
    recipe = inputs.recipe
    return Stage(DISTILL_STAGE, "distill", settings={
        "teacher": inputs.teacher.resolved(), "student": recipe.student.model_dump(mode="json"),
        "distill": recipe.distill.model_dump(mode="json"),
    }, files=teacher_files + tuple(expand_paths(list(inputs.train_data))))


def stages(inputs: RunInputs) -> list[Stage]:
    """The stages in the order they run."""
    recipe, student = inputs.recipe, inputs.student_stage
    backends = recipe.export.backends
    plan = [
        _student_stage(inputs),
        Stage("eval", "eval", after=(student,), files=tuple(expand_paths(list(inputs.eval_data)))),
    ]
    plan += [Stage(f"convert-{b}", "convert", after=(student,), backend=b,
                   settings={"backend": b, "opset": DEFAULT_OPSET, "precision": "fp16"}) for b in backends]
    videos = tuple(dict.fromkeys(expand_paths([*inputs.train_data, *inputs.eval_data])))
    plan += [Stage(f"quantize-{b}", "quantize", after=(f"convert-{b}",), backend=b,
                   settings={"backend": b, "source": f"convert-{b}", **recipe.quantize.model_dump(mode="json", exclude={"backends"}),
                             "scheme": _int8_scheme(b, recipe.quantize.scheme, inputs.devices)},
                   files=videos) for b in quantized_backends(recipe)]
    plan += [Stage(f"stream-{b}", "stream", after=(student,), backend=b,
                   settings={"backend": b, "latent_frames_per_call": recipe.deploy.stream, "opset": DEFAULT_OPSET})
             for b in recipe.streamed_backends()]
    plan += [Stage(f"quantize-stream-{b}", "quantize", after=(f"stream-{b}",), backend=b,
                   settings={"backend": b, "source": f"stream-{b}", **recipe.quantize.model_dump(mode="json", exclude={"backends"}),
                             "scheme": WEIGHT_ONLY_STREAMS.get(b, "auto")},
                   files=videos, note="the streaming step, checked by its own chunk loop")
             for b in recipe.streamed_backends() if b in quantized_backends(recipe)]
    plan.append(Stage("lint", "lint", after=(student,),
                      settings={"backends": {b: _lint_device(b, inputs.devices) for b in backends}}))
    planned = {stage.name for stage in plan}
    plan += [_profile_stage(inputs, device, planned) for device in inputs.devices]
    names = [stage.name for stage in plan]
    if len(set(names)) != len(names):
        raise EffconvError(f"two stages would share a folder: {', '.join(sorted({n for n in names if names.count(n) > 1}))}.",
                           "give device profile files different names.")
    return plan
