import pytest

from effconv.errors import EffconvError
from effconv.models.base import Compression
from effconv.spec import load_spec, spec_from_dict

from conftest import SPECS


def test_relative_pretrained_resolves_against_the_spec_file(tmp_path):
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "s.yaml"
    path.write_text("name: s\nmodel: {diffusers: AutoencoderKLWan, pretrained: ../weights}\ninput: {frames: 1, height: 8, width: 8}\n")
    loaded = load_spec(path)
    assert loaded.pretrained_dir.resolve() == (tmp_path / "weights").resolve()
    assert loaded.resolved()["model"]["pretrained"] == str((tmp_path / "weights").resolve())


def test_part_defaults_to_decoder():
    loaded = spec_from_dict({"name": "x", "model": {"diffusers": "AutoencoderKLWan"}, "input": {"frames": 1, "height": 8, "width": 8}}, SPECS)
    assert loaded.spec.part == "decoder"


def test_huge_sizes_are_rejected():
    with pytest.raises(EffconvError, match="input.height"):
        spec_from_dict({"name": "x", "model": {"diffusers": "AutoencoderKLWan"}, "input": {"frames": 1, "height": 10**9, "width": 8}}, SPECS)


@pytest.mark.parametrize(
    "compression, frames, expected_latent, nearest",
    [
        (Compression(16, 4, 8), 17, 5, [17]),
        (Compression(16, 4, 8), 18, 5, [17, 21]),
        (Compression(12, 6, 8), 13, 3, [13]),
        (Compression(12, 6, 8, causal=False), 12, 2, [12]),
        (Compression(12, 6, 8, causal=False), 13, 2, [12, 18]),
    ],
)
def test_frame_rules(compression, frames, expected_latent, nearest):
    assert compression.latent_frames(frames) == expected_latent
    assert compression.nearest_frames(frames) == nearest
    if compression.frames_valid(frames):
        assert compression.pixel_frames(expected_latent) == frames
