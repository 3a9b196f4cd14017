"""Whether a teacher VAE fits a Turbo-VAED student: a student decodes only the latents of the teacher it was
distilled from, so the teacher must be of that family, with the student's latent channels and compression."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from effconv.artifacts import teacher_of
from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.models.loader import LoadedModel, load_model
from effconv.spec import LoadedSpec


def family(spec: LoadedSpec) -> str:
    """The diffusers class (or the factory) a spec builds."""
    return spec.spec.model.diffusers or spec.spec.model.factory


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
