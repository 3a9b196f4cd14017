"""Stage hashes: what a stage's result depends on, reduced to one sha256.

A stage's hash covers its settings, the content of its input files (videos, teacher weights), the
manifests of the stages it reads (so a redone upstream stage redoes everything after it), and the
effconv and torch versions. Files are identified by content and base name, not by where they live.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import effconv

CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in name order)."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file_digest(file).encode())
    return digest.hexdigest()


def stage_inputs(name: str, settings: dict, files: tuple[Path, ...], upstream: dict[str, str]) -> dict:
    """Everything the hash covers, as recorded in the stage's manifest (so a changed input can be named)."""
    return {
        "stage": name,
        "settings": settings,
        "files": [[Path(f).name, content_digest(f)] for f in files],
        "upstream": upstream,
        "versions": {"effconv": effconv.__version__, "torch": torch.__version__},
    }


def inputs_hash(inputs: dict) -> str:
    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
