"""Run the stages in order: skip what is unchanged, resume an interrupted distillation, redo the rest.

Each stage's manifest gets a `stage` record: the hash of its inputs, the inputs themselves (settings,
file digests, upstream manifest digests, versions), its outputs, how long it took and whether its check
passed. A stage is skipped when its hash matches and its outputs exist; otherwise it and every stage
after it that reads it runs again. A distillation resumes from its last checkpoint when its inputs match
the ones it started with except for a raised step count: killed mid-way, or finished and asked for more steps.
Fewer steps than that run trained are refused (starting over would delete its student and checkpoints); a
distillation with other inputs starts over, and the plan says which checkpoints that replaces.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from effconv.artifacts import STAGING_PREFIX, ensure_out_dir, replace_json
from effconv.distill.checkpoint import checkpoint_step, latest_checkpoint
from effconv.errors import EffconvError, VerificationFailed
from effconv.pipeline.durations import StageDuration, DurationEstimator, duration_text, shorter_run_advice
from effconv.pipeline.hashing import Progress, file_digest, inputs_hash, stage_inputs
from effconv.pipeline.plan import RunInputs, Stage, stages
from effconv.pipeline.report import write_report
from effconv.pipeline.stages import PRODUCERS, RUNNERS, StageContext, manifest_name

STARTED = "stage-started.json"
SCRATCH = {"checkpoints", "cache", STARTED}
RUNS = ("run", "resume")
SHOWN_VALUE_CHARS = 20


class StageFailed(EffconvError):
    """A stage raised: the message names the stage; the exit code is the stage's own (3 for a bug)."""

    def __init__(self, stage: str, cause: Exception):
        if isinstance(cause, EffconvError):
            super().__init__(f"stage {stage} failed: {cause.message}", cause.fix)
            self.exit_code = cause.exit_code
        else:
            detail = " ".join(str(cause).split())[:300]
            super().__init__(f"stage {stage} failed: internal error: {type(cause).__name__}: {detail}",
                             "rerun with --debug for the traceback; the earlier stages' outputs are kept.")
            self.exit_code = 3


@dataclass
class Decision:
    stage: Stage
    action: str  # skip | run | resume | blocked
    reason: str
    estimate: StageDuration | None = None
    inputs: dict | None = None
    steps_done: int = 0
    failed_before: bool = False  # skipped, and its recorded check failed

    @property
    def hash(self) -> str | None:
        return inputs_hash(self.inputs) if self.inputs is not None else None

    def as_dict(self) -> dict:
        """The plan entry `effconv run --json` prints."""
        return {"stage": self.stage.name, "action": self.action, "reason": self.reason, "hash": self.hash,
                "estimate_seconds": round(self.estimate.seconds, 1) if self.estimate else None,
                "estimate_basis": self.estimate.basis if self.estimate else None, "note": self.stage.note or None}


@dataclass
class Outcome:
    stage: str
    action: str
    seconds: float
    passed: bool | None
    message: str | None = None


@dataclass
class RunResult:
    out_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    report: Path | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.passed is False]

    def check(self) -> None:
        """Exit 1 (after everything was written) when a stage's artifact failed its check."""
        if self.failed:
            first = self.failed[0]
            names = ", ".join(o.stage for o in self.failed)
            raise VerificationFailed(f"stage {names} failed verification: {first.message}",
                                     f"see {self.report or self.out_dir} and the stage's manifest.")


def stage_manifest_path(inputs: RunInputs, stage: Stage, out_dir: Path) -> Path:
    return Path(out_dir) / stage.name / manifest_name(inputs, stage.kind)


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def _first_difference(old, new, where: str = "") -> str | None:
    """The first input that differs, as `settings.distill.steps: 300 -> 600` or `files changed`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if old == new:
        return None
    short = all(not isinstance(v, (list, dict)) and len(str(v)) <= SHOWN_VALUE_CHARS for v in (old, new))
    return f"{where}: {old} -> {new}" if short else f"{where} changed"


def _without_steps(inputs: dict | None) -> dict | None:
    """A distill stage's inputs minus its step count: the schedule does not depend on it, so more steps continue."""
    if not isinstance(inputs, dict) or not isinstance(inputs.get("settings", {}).get("distill"), dict):
        return None
    settings = inputs["settings"] | {"distill": {k: v for k, v in inputs["settings"]["distill"].items() if k != "steps"}}
    return inputs | {"settings": settings}


def _started_continuation(directory: Path) -> str | None:
    try:
        return json.loads((directory / STARTED).read_text(encoding="utf-8"))["continuation"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trained(directory: Path, record: dict | None, hashed: dict) -> tuple[Path | None, int]:
    """The latest checkpoint and the steps trained of the distillation in `directory` when it is this one but for the
    step count (interrupted, or finished with other steps); (None, 0) when it is another run or there is none."""
    continuation = _without_steps(hashed)
    finished = record is not None and _without_steps(record.get("inputs")) == continuation
    if not finished and _started_continuation(directory) != inputs_hash(continuation):
        return None, 0
    checkpoint = latest_checkpoint(directory / "checkpoints")
    steps = [checkpoint_step(checkpoint)] if checkpoint is not None else []
    finished_steps = record["inputs"]["settings"]["distill"].get("steps") if finished else None
    if isinstance(finished_steps, int):
        steps.append(finished_steps)
    return checkpoint, max(steps, default=0)


def _refuse_fewer_steps(directory: Path, trained: int, asked: int) -> None:
    """Fewer steps than a run already trained would start over and delete its student and checkpoints: refused."""
    if trained > asked:
        raise EffconvError(
            f"the distillation asks for {asked} steps, below the {trained} the run in '{directory}' already trained; "
            "running it would start over and delete that run's student and checkpoints.",
            f"pass --steps {trained} or more to keep it (more steps continue it), or choose another --out for a "
            f"{asked}-step run.")


def _distill_decision(stage: Stage, directory: Path, record: dict | None, hashed: dict) -> Decision | None:
    """Resume when the run in `directory` is this one with fewer steps done; refuse to undo steps it trained."""
    checkpoint, trained = _trained(directory, record, hashed)
    _refuse_fewer_steps(directory, trained, hashed["settings"]["distill"]["steps"])
    if checkpoint is None:
        return None
    step = checkpoint_step(checkpoint)
    return Decision(stage, "resume", f"resumes from step {step}", inputs=hashed, steps_done=step)


def _discarded_training(directory: Path) -> str:
    """What rerunning a distillation from scratch deletes, for its reason in the plan."""
    checkpoint = latest_checkpoint(directory / "checkpoints")
    return f"; replaces the other run there (checkpoints up to step {checkpoint_step(checkpoint)})" if checkpoint else ""


def decide(inputs: RunInputs, stage: Stage, out_dir: Path, rerun: set[str], blocked: set[str],
           on_progress: Progress | None = None) -> Decision:
    """Skip, run, resume, or blocked (a stage it needs failed its check). `rerun`: stages that will run before it.
    `on_progress` hears how hashing the stage's input files goes, when that takes more than a moment."""
    upstream_rerun = [name for name in stage.after if name in rerun]
    if upstream_rerun:
        return Decision(stage, "run", f"{upstream_rerun[0]} reruns")
    needed_failed = [name for name in stage.after if name in blocked and name not in stage.optional]
    if needed_failed:
        return Decision(stage, "blocked", f"{needed_failed[0]} failed its check")
    by_name = {s.name: s for s in stages(inputs)}
    upstream = {name: file_digest(stage_manifest_path(inputs, by_name[name], out_dir)) for name in stage.after}
    hashed = stage_inputs(stage.name, stage.settings, stage.files, upstream, PRODUCERS[stage.kind], on_progress)
    new_hash = inputs_hash(hashed)
    directory = Path(out_dir) / stage.name
    record = read_record(stage_manifest_path(inputs, stage, out_dir))
    if record and record.get("hash") == new_hash and all((directory / name).exists() for name in record.get("outputs", [])):
        failed = record.get("passed") is False
        return Decision(stage, "skip", "unchanged" + (" (failed its check)" if failed else ""), inputs=hashed,
                        failed_before=failed)
    if stage.kind == "distill":
        resumed = _distill_decision(stage, directory, record, hashed)
        if resumed is not None:
            return resumed
    discarded = _discarded_training(directory) if stage.kind == "distill" else ""
    if record is None:
        return Decision(stage, "run", "no finished run in --out" + discarded, inputs=hashed)
    changed = _first_difference(record.get("inputs"), hashed) or "outputs missing"
    return Decision(stage, "run", changed + discarded, inputs=hashed)


def plan(inputs: RunInputs, out_dir: Path, on_progress: Progress | None = None) -> list[Decision]:
    """What a run would do now, stage by stage, with an estimated time for each stage that runs. Each input file is
    read once per process (hashing.INPUT_DIGESTS), so `execute` after `plan` hashes nothing again."""
    decisions, rerun, blocked = [], set(), set()
    estimator = DurationEstimator(inputs, out_dir)
    for stage in stages(inputs):
        decision = decide(inputs, stage, out_dir, rerun, blocked, on_progress)
        if decision.action in RUNS:
            rerun.add(stage.name)
            decision.estimate = estimator(stage, decision.steps_done)
        if decision.action == "blocked" or decision.failed_before:
            blocked.add(stage.name)
        decisions.append(decision)
    return decisions


def plan_caption(decisions: list[Decision], train_device: str) -> str:
    """The plan's total estimated time, and how to shorten a distillation that would take long on the CPU."""
    total = sum(d.estimate.seconds for d in decisions if d.estimate)
    caption = f"about {duration_text(total)} in all (an estimate)"
    distill = next((d for d in decisions if d.stage.kind == "distill" and d.estimate), None)
    advice = distill and shorter_run_advice(distill.estimate.seconds, distill.stage.settings["distill"]["steps"],
                                            distill.steps_done, train_device)
    return f"{caption}\n{advice}" if advice else caption


def _prepare(directory: Path, resume: bool) -> None:
    if directory.exists() and not resume:
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _discard_failed(directory: Path) -> None:
    """A failed stage leaves nothing but resumable training state."""
    if latest_checkpoint(directory / "checkpoints") is None:
        shutil.rmtree(directory, ignore_errors=True)


def tree_bytes(path: Path) -> int:
    """Size of a file, or of every file under a directory (an .mlpackage, a student directory)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _record(path: Path, decision: Decision, seconds: float, passed: bool, message: str | None) -> None:
    directory = path.parent
    manifest = json.loads(path.read_text(encoding="utf-8"))
    outputs = sorted(p for p in directory.iterdir() if p.name not in SCRATCH and not p.name.startswith("."))
    manifest["stage"] = {
        "name": decision.stage.name,
        "hash": decision.hash,
        "inputs": decision.inputs,
        "outputs": [p.name for p in outputs],
        "output_bytes": {p.name: tree_bytes(p) for p in outputs},
        "action": decision.action,
        "seconds": round(seconds, 2),
        "passed": passed,
        "message": message,
    }
    replace_json(path, manifest)


def run_stage(inputs: RunInputs, decision: Decision, out_dir: Path, on_step=None, on_warning=None,
              on_progress=None) -> Outcome:
    stage = decision.stage
    directory = Path(out_dir) / stage.name
    _prepare(directory, resume=decision.action == "resume")
    started_record = {"hash": decision.hash}
    if stage.kind == "distill":
        started_record["continuation"] = inputs_hash(_without_steps(decision.inputs))
    replace_json(directory / STARTED, started_record)
    context = StageContext(inputs, stage, Path(out_dir), resume=decision.action == "resume", on_step=on_step,
                           on_warning=on_warning, on_progress=on_progress)
    started = time.perf_counter()
    passed, message = True, None
    try:
        RUNNERS[stage.kind](context)
    except VerificationFailed as failure:
        if not stage_manifest_path(inputs, stage, out_dir).is_file():
            _discard_failed(directory)
            raise StageFailed(stage.name, failure) from failure
        passed, message = False, failure.one_line()
    except BaseException as failure:
        _discard_failed(directory)
        if isinstance(failure, (KeyboardInterrupt, SystemExit)):
            raise
        raise StageFailed(stage.name, failure) from failure
    seconds = time.perf_counter() - started
    _record(stage_manifest_path(inputs, stage, out_dir), decision, seconds, passed, message)
    (directory / STARTED).unlink()
    return Outcome(stage.name, decision.action, seconds, passed, message)


def execute(inputs: RunInputs, out_dir: Path, on_event: Callable[[str, Decision, dict], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> RunResult:
    """Run every stage that is not up to date, then write the report (DIR/report.md and report.html)."""
    out_dir = Path(out_dir)
    created = ensure_out_dir(out_dir)
    result = RunResult(out_dir=out_dir)
    blocked: set[str] = set()
    notify = on_event or (lambda kind, decision, info: None)
    estimator = DurationEstimator(inputs, out_dir)
    for stage in stages(inputs):
        decision = decide(inputs, stage, out_dir, set(), blocked)
        if decision.action in RUNS:
            decision.estimate = estimator(stage, decision.steps_done)
        notify("start", decision, {})
        if decision.action in RUNS:
            try:
                outcome = run_stage(inputs, decision, out_dir, on_step=lambda record, elapsed: notify(
                    "step", decision, {"record": record, "elapsed": elapsed}), on_warning=on_warning,
                    on_progress=lambda message: notify("progress", decision, {"message": message}))
            except BaseException:
                if created is not None and not any(out_dir.iterdir()):
                    shutil.rmtree(created, ignore_errors=True)
                raise
        else:
            record = read_record(stage_manifest_path(inputs, stage, out_dir)) or {}
            outcome = Outcome(stage.name, decision.action, 0.0, record.get("passed") if record else None,
                              record.get("message"))
        if outcome.passed is False or decision.action == "blocked":
            blocked.add(stage.name)
        result.outcomes.append(outcome)
        notify("done", decision, {"outcome": outcome})
    result.report = write_report(inputs, out_dir, result)
    return result
