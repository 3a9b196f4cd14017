"""Shared fixtures: the shipped tiny specs, a seeded RNG, a CLI runner that calls `main()` as a user would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "examples" / "specs"
FAMILY_SPECS = sorted(SPECS.glob("*-tiny.yaml"))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_host_probe(monkeypatch):
    """Profiling on host-cpu would run the minute-long host probe in whichever test first costs an ONNX model there
    (and in each test with a private cache): tests/test_probe.py turns it back on where it is what is tested."""
    from effconv.profile.fit.probe import PROBE_ENV

    monkeypatch.setenv(PROBE_ENV, "off")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `effconv ARGS...` in-process; returns (exit_code, stdout, stderr)."""
    from effconv.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["effconv", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def wide_student(tmp_path_factory):
    """`get(backend)` -> (artifact, manifest) of the wide test student (tests/quantize_cases.py) converted to that
    backend, once per backend for the session: the quantize tests and the backend registry test share them."""
    from quantize_cases import converted_student

    made = {}

    def get(backend: str):
        if backend not in made:
            made[backend] = converted_student(tmp_path_factory.mktemp(f"wide-{backend}"), backend)
        return made[backend]

    return get
