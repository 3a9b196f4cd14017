"""Write a decoded video chunk by chunk, so that nothing holds the whole clip: a float32 .npy of the decoder's raw
output (1, 3, F, H, W), or an H.264 .mp4 (PyAV) of it mapped from [-1, 1] to 8-bit RGB."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np


class VideoWriter(abc.ABC):
    @staticmethod
    def for_path(path: Path, shape: tuple[int, ...], fps: float) -> VideoWriter:
        return NpyWriter(path, shape) if Path(path).suffix == ".npy" else Mp4Writer(path, shape, fps)

    @abc.abstractmethod
    def write(self, frames: np.ndarray) -> None:
        """Append (1, 3, t, H, W) frames."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish the file."""

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class NpyWriter(VideoWriter):
    """Writes each chunk's frames at their place in the file: a memory map would keep every written page resident."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.shape = shape
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                         "fortran_order": False, "shape": tuple(shape)})
        self.data_offset = self.file.tell()
        self.file.truncate(self.data_offset + int(np.prod(shape)) * 4)
        self.written = 0

    def write(self, frames: np.ndarray) -> None:
        # C order puts channels outside frames: each channel's new frames are one contiguous run of the file.
        _, channels, total, height, width = self.shape
        frame_bytes = height * width * 4
        for channel in range(channels):
            self.file.seek(self.data_offset + (channel * total + self.written) * frame_bytes)
            self.file.write(np.ascontiguousarray(frames[0, channel], dtype=np.float32).tobytes())
        self.written += frames.shape[2]

    def close(self) -> None:
        self.file.close()
        if self.written != self.shape[2]:
            raise RuntimeError(f"wrote {self.written} of {self.shape[2]} frames")


class Mp4Writer(VideoWriter):
    def __init__(self, path: Path, shape: tuple[int, ...], fps: float):
        import av
        from fractions import Fraction

        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.height, self.stream.width = shape[3], shape[4]
        self.stream.pix_fmt = "yuv420p"
        self.av = av

    def write(self, frames: np.ndarray) -> None:
        pixels = ((np.clip(frames[0], -1, 1) + 1) * 127.5).round().astype(np.uint8)  # (3, T, H, W)
        for frame in pixels.transpose(1, 2, 3, 0):
            for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
