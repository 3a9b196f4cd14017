"""Whether a teacher VAE fits a Turbo-VAED student: a student decodes only the latents of the teacher it was
distilled from, so the teacher must be of that family, with the student's latent channels and compression."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from effconv.artifacts import spec_beside, teacher_of
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import LoadedModel, load_model
from effconv.models.turbo_vaed.adapter import ReleasedTurboVAEDAdapter, TurboStudentAdapter
from effconv.spec import LoadedSpec, load_spec

STUDENT_CLASSES = (TurboStudentAdapter.class_name, ReleasedTurboVAEDAdapter.class_name)


def family(spec: LoadedSpec) -> str:
    """The diffusers class (or the factory) a spec builds."""
    return spec.spec.model.diffusers or spec.spec.model.factory


def is_student(spec: LoadedSpec) -> bool:
    """Whether a spec builds a Turbo-VAED student (effconv's, or one saved by the authors' code)."""
    return spec.spec.model.diffusers in STUDENT_CLASSES


def teacher_spec_of(student: LoadedSpec, teacher: Path | None) -> tuple[LoadedSpec, LoadedSpec | None]:
    """The teacher that encodes video for `student`'s latents: `teacher` (--teacher), else the one recorded beside the
    student's saved weights; and the recorded one, when there is one (a --teacher must match it in family)."""
    saved = student.pretrained_dir
    recorded = recorded_teacher(spec_beside(saved)) if saved is not None else None
    if teacher is not None:
        return load_spec(teacher), recorded
    if student.spec.model.diffusers == ReleasedTurboVAEDAdapter.class_name:
        raise EffconvError("a student saved by the Turbo-VAED authors' code (AutoencoderKLTurboVAED) records no teacher "
                           "to encode video with.", "pass --teacher TEACHER.yaml: the VAE it was distilled from (for "
                           "Turbo-VAED-LTX, LTX-Video's).")
    if saved is None:
        raise EffconvError("the artifact's student has no saved weights to find its teacher from.", "pass --teacher TEACHER.yaml.")
    return teacher_of(spec_beside(saved)), recorded


def recorded_teacher(student_spec: Path) -> LoadedSpec | None:
    """The teacher recorded beside a student spec, or None where none is (a student spec written by hand)."""
    try:
        return teacher_of(student_spec)
    except EffconvError:
        return None


def _compression_words(compression: Compression) -> str:
    return (f"{compression.latent_channels} latent channels, {compression.temporal}x temporal and "
            f"{compression.spatial}x spatial compression{'' if compression.causal else ', non-causal'}")


def check_teacher_fits(teacher: LoadedModel, student: str, compression: Compression,
                       distilled_from: LoadedSpec | None = None) -> None:
    """Refuse a teacher whose latents the student (named `student`, decoding `compression`) cannot decode, or whose
    family differs from the teacher recorded in the student's manifest (`distilled_from`, when known)."""
    teacher_family = family(teacher.spec)
    same_family = distilled_from is None or family(distilled_from) == teacher_family
    if teacher.compression == compression and same_family:
        return
    recorded = f"distilled from '{distilled_from.spec.name}', {family(distilled_from)}; " if distilled_from else ""
    raise EffconvError(
        f"teacher '{teacher.spec.spec.name}' ({teacher_family}: {_compression_words(teacher.compression)}) does not "
        f"match student '{student}' ({recorded}{_compression_words(compression)}): a student decodes only the "
        "latents of the teacher it was distilled from.",
        "pass the teacher the student was distilled from"
        + (f" ('{distilled_from.spec.name}')" if distilled_from else "")
        + ", or leave --teacher out to use the recorded one.",
    )


def teacher_for_student(teacher_spec: LoadedSpec, student: str, compression: Compression, clip: tuple[int, int, int],
                        distilled_from: LoadedSpec | None = None, allow_import: bool = False) -> LoadedModel:
    """The teacher, checked to fit the student, set to the student's clip (frames, height, width). It is built at its
    own clip first: the student's may not even fit a teacher of another family, and that mismatch, not the clip
    size, is what to report."""
    teacher = load_model(teacher_spec, allow_import=allow_import)
    check_teacher_fits(teacher, student, compression, distilled_from)
    # Same compression as the student, so the student's clip fits the teacher too.
    return dataclasses.replace(teacher, spec=teacher_spec.with_input(*clip))
