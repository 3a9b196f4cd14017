"""Artifacts and their manifests: staged writes that never leave partial files, and JSON manifests
that later commands read instead of guessing."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

import effconv
from effconv.errors import EffconvError
from effconv.spec import LoadedSpec, spec_from_dict

STAGING_PREFIX = ".effconv-staging-"


class TensorInfo(BaseModel):
    name: str
    shape: list[int]
    dtype: str


class Manifest(BaseModel):
    """What an artifact is and how it was checked. Stages add their own sections (extra keys)."""

    model_config = ConfigDict(extra="allow")

    name: str
    backend: str
    artifact: str
    spec: dict[str, Any]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    params: int
    verify: dict[str, Any]
    effconv_version: str = effconv.__version__
    created: str = ""

    def model_spec(self) -> LoadedSpec:
        """The spec the artifact was exported from, as the manifest records it (its paths already resolved)."""
        return spec_from_dict(self.spec, Path("."), source="spec in the artifact's manifest")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False)


def manifest_path(artifact: Path) -> Path:
    # Only the artifact's own suffix goes: spec names may contain dots (wan2.1-small.onnx -> wan2.1-small.json).
    return Path(artifact).with_suffix(".json")


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    if not manifest.created:
        manifest.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = directory / f"{manifest.name}.json"
    path.write_text(manifest.to_json() + "\n", encoding="utf-8")
    return path


def replace_json(path: Path, data: dict) -> Path:
    """Write JSON beside its final name and rename it into place: a reader never sees half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EffconvError(f"manifest '{path}' not found.", "pass an artifact produced by effconv (its .json sits beside it).") from None
    except (ValidationError, UnicodeDecodeError, ValueError):
        raise EffconvError(f"manifest '{path}' is not a valid effconv manifest.", "re-create the artifact with effconv.") from None


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse an --out that could not be created or written, before any work and without creating anything."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EffconvError(f"--out '{out_dir}' exists and is not a directory.", "choose a directory path for --out.")
    nearest = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    if not nearest.is_dir():
        raise EffconvError(f"cannot create output directory '{out_dir}': '{nearest}' is a file.", "choose a writable --out.")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise EffconvError(f"output directory '{nearest}' is not writable.", "choose a writable --out.")


def _prepare_out_dir(out_dir: Path) -> Path | None:
    """Create out_dir if needed; return the topmost directory this call created (to undo on failure)."""
    check_out_dir(out_dir)
    missing = [p for p in [out_dir, *out_dir.parents] if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EffconvError(f"cannot create output directory '{out_dir}': {exc.strerror}.", "choose a writable --out.") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise EffconvError(f"output directory '{out_dir}' is not writable.", "choose a writable --out.")
    return missing[-1] if missing else None


def ensure_out_dir(out_dir: Path) -> Path | None:
    """Create a writable output directory (one-line errors); return the topmost directory created, if any."""
    return _prepare_out_dir(Path(out_dir))


@contextlib.contextmanager
def staged_output(out_dir: str | Path):
    """Yield a private staging directory inside out_dir; move its files into out_dir only on success.

    Files are moved in name order with manifests (*.json) last, so a manifest never points at an
    artifact that is not in place. On any failure nothing is left behind, and a directory this
    call created is removed again.
    """
    out_dir = Path(out_dir)
    created = _prepare_out_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    committed = False
    try:
        yield staging
        items = sorted(staging.iterdir(), key=lambda p: (p.suffix == ".json", p.name))
        for item in items:
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        committed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not committed and created is not None:
            shutil.rmtree(created, ignore_errors=True)


def spec_beside(directory: Path) -> Path:
    """The spec `rewrite` and `distill` write beside a saved model directory: NAME/ -> NAME.yaml. The whole name is
    kept (with_suffix would turn `wan2.1-small-student` into `wan2.yaml`)."""
    directory = Path(directory)
    return directory.parent / f"{directory.name}.yaml"


def teacher_of(student_spec_path: Path) -> LoadedSpec:
    """A student written by `effconv rewrite`/`distill` has a manifest beside it naming its teacher."""
    for manifest in (student_spec_path.with_suffix(".json"), student_spec_path.parent / "distill.json"):
        if manifest.is_file():
            try:
                teacher = json.loads(manifest.read_text())["teacher"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                continue
            return spec_from_dict(teacher, student_spec_path.parent, source=f"teacher in {manifest}")
    raise EffconvError(
        f"cannot find the teacher of student spec '{student_spec_path}'.",
        "pass --teacher TEACHER_SPEC (or keep the manifest written beside the student).",
    )
