"""Stage hashes: what a stage's result depends on, reduced to one sha256.

A stage's hash covers its settings, the content of its input files (videos, teacher weights), the
manifests of the stages it reads (so a redone upstream stage redoes everything after it), the effconv
version with a digest of the source of the code that makes the stage's outputs, and the torch version.
Files are identified by content and base name, not by where they live.

Input files are read once per process: a digest is kept for as long as the file stays as it was (same device,
inode, size, modification and change time), so the plan, the run that follows it, and every stage naming the same
videos share one read of each.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch

from effconv.provenance import produced_by

CHUNK = 1 << 20
PROGRESS_AFTER_SECONDS = 1.0  # a stage whose hashing takes longer reports its progress
PROGRESS_EVERY_SECONDS = 1.0

Progress = Callable[[str], None]


def file_digest(path: Path, on_read: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, read in full; `on_read` hears the size of each block read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            if on_read is not None:
                on_read(len(block))
    return digest.hexdigest()


class HashProgress:
    """Tells `on_progress` how much one stage's hashing has read, once it takes more than a moment."""

    def __init__(self, stage: str, on_progress: Progress | None):
        self.stage, self.on_progress = stage, on_progress
        self.started = self.reported = time.monotonic()
        self.files = self.bytes = 0

    def read(self, size: int) -> None:
        self.bytes += size
        now = time.monotonic()
        due = now - self.started > PROGRESS_AFTER_SECONDS and now - self.reported > PROGRESS_EVERY_SECONDS
        if self.on_progress is not None and due:
            self.on_progress(f"hashing the inputs of {self.stage}: {self.files} file(s) done, "
                             f"{self.bytes / 1e6:.0f} MB read in {now - self.started:.0f} s")
            self.reported = now


def _file_state(path: Path) -> tuple:
    """What changes when a file's content may have: a rewrite, a copy over it, or touching it changes one of these."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class InputDigests:
    """sha256 of input files, each read once while it stays as it was."""

    def __init__(self):
        self._known: dict[tuple, str] = {}

    def file(self, path: Path, progress: HashProgress | None = None) -> str:
        state = _file_state(path)
        if state not in self._known:
            self._known[state] = file_digest(path, progress.read if progress is not None else None)
            if progress is not None:
                progress.files += 1
        return self._known[state]

    def content(self, path: Path, progress: HashProgress | None = None) -> str:
        """sha256 of a file, or of a directory's files (relative names and contents, in name order)."""
        path = Path(path)
        if not path.is_dir():
            return self.file(path, progress)
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + self.file(file, progress).encode())
        return digest.hexdigest()


INPUT_DIGESTS = InputDigests()


def stage_inputs(name: str, settings: dict, files: tuple[Path, ...], upstream: dict[str, str], producer: str,
                 on_progress: Progress | None = None) -> dict:
    """Everything the hash covers, as recorded in the stage's manifest (so a changed input can be named). `producer`:
    the module whose code makes the stage's outputs."""
    progress = HashProgress(name, on_progress)
    return {
        "stage": name,
        "settings": settings,
        "files": [[Path(f).name, INPUT_DIGESTS.content(f, progress)] for f in files],
        "upstream": upstream,
        "versions": produced_by(producer) | {"torch": torch.__version__},
    }


def inputs_hash(inputs: dict) -> str:
    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
