"""`factory:` specs import user code only with --allow-import."""

import json
import textwrap

FACTORY_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyDecoder(nn.Module):
        latent_channels = 4
        spatial_compression_ratio = 4
        temporal_compression_ratio = 2

        def __init__(self, width=8):
            super().__init__()
            self.conv = nn.Conv3d(4, width, 1)
            self.head = nn.Conv3d(width, 3, 1)

        def forward(self, z):
            x = self.head(torch.relu(self.conv(z)))
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
            return x.repeat_interleave(4, dim=3).repeat_interleave(4, dim=4)


    def build(width=8):
        return TinyDecoder(width)
    """
)


def _factory_spec(tmp_path):
    (tmp_path / "userdecoder.py").write_text(FACTORY_MODULE)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: custom\nmodel:\n  factory: userdecoder:build\n  config: {width: 6}\ninput: {frames: 5, height: 16, width: 24}\n"
    )
    return spec


def test_factory_needs_allow_import(cli, tmp_path):
    code, _, err = cli("convert", _factory_spec(tmp_path), "--out", tmp_path / "out")
    assert code == 2
    assert "--allow-import" in err
    assert not (tmp_path / "out").exists()


def test_factory_module_exports_with_allow_import(cli, tmp_path):
    code, out, err = cli("convert", _factory_spec(tmp_path), "--out", tmp_path / "out", "--allow-import", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["inputs"][0]["shape"] == [1, 4, 3, 4, 6]
    assert manifest["outputs"][0]["shape"] == [1, 3, 5, 16, 24]
    assert manifest["params"] == 4 * 6 + 6 + 6 * 3 + 3
    assert manifest["verify"]["max_abs_err"] < 1e-5
