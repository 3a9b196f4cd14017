"""Native libraries' log lines stay off the CLI's stderr: LiteRT's converter logs absl's InitializeLog warning
and TensorFlow's "oneDNN custom operations are on" from C++ as it loads, past TF_CPP_MIN_LOG_LEVEL; `--debug`
shows them again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

pytest.importorskip("litert_torch")

# A one-conv decoder: the test is about what the conversion prints, which a big graph only makes slower
FACTORY = textwrap.dedent('''
    from torch import nn


    class OneConvDecoder(nn.Module):
        latent_channels = 4
        spatial_compression_ratio = 1
        temporal_compression_ratio = 1

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 3, 1)

        def forward(self, latent):
            return self.conv(latent[:, :, 0])[:, :, None]


    def build():
        return OneConvDecoder()
''')
SPEC = "name: one-conv\nmodel:\n  factory: 'one_conv:build'\npart: decoder\ninput: {frames: 1, height: 8, width: 8}\n"
PROGRESS_LINE = re.compile(r"\[\s*\d+ s\] Converting one-conv \(decoder\) to tflite: .+ \(\d+\.\d s\)")
NATIVE_LINE = "absl::InitializeLog"  # the first of them


def _effconv(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    return subprocess.run([sys.executable, "-m", "effconv", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_a_tflite_convert_writes_only_its_progress_to_stderr(tmp_path):
    """regression: every TFLite convert printed the absl warning and the oneDNN notice."""
    (tmp_path / "one_conv.py").write_text(FACTORY)
    (tmp_path / "spec.yaml").write_text(SPEC)
    result = _effconv("convert", str(tmp_path / "spec.yaml"), "--to", "tflite", "--allow-import", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if not PROGRESS_LINE.fullmatch(line)] == []
    assert (tmp_path / "out" / "one-conv.tflite").is_file()


def test_debug_still_shows_the_native_lines():
    code = ("from effconv.quiet import set_debug; set_debug(True); "
            "from effconv.backends.tflite.export import _litert_torch; _litert_torch()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert NATIVE_LINE in result.stderr
