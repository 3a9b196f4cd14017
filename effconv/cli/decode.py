"""`effconv decode`: the host reference loop for a streaming artifact."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from effconv.cli.app import JsonFlag, app
from effconv.cli.render import err, out


@app.command()
def decode(
    artifact: Path = typer.Argument(..., help="A streaming .onnx, .tflite or .pte (`effconv convert STUDENT --stream K`); .mlpackage needs macOS.", show_default=False),
    out_path: Path = typer.Option(..., "--out", help="OUT.npy (float32 (1, 3, F, H, W), the decoder's raw output) or OUT.mp4.", show_default=False),
    latents: Path | None = typer.Option(None, "--latents", help="Float32 latents (1, C, T, h, w) as .npy, any length T.", show_default=False),
    video: Path | None = typer.Option(None, "--video", help="A real clip instead: read and encoded by the student's teacher one chunk at a time as the decoder needs it (each chunk a separate encode with one frame of context, as diffusers' temporal tiles: the latent is not a one-shot encode's of the whole clip; docs/streaming.md).", show_default=False),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher spec for --video [default: the one recorded beside the student]."),
    frames: int | None = typer.Option(None, "--frames", help="--video: encode at most this many frames, >= 1, rounded down to what the teacher's temporal compression takes (1 + 4k for 4x; the frames used are printed) [default: all]."),
    threads: int | None = typer.Option(None, "--threads", help="Runtime threads [default: the runtime's]."),
    fps: float | None = typer.Option(None, "--fps", help="Frame rate written into an .mp4 [default: the --video's, else 24]."),
    as_json: bool = JsonFlag,
) -> None:
    """Decode a latent of any length through a streaming artifact, chunk by chunk, in its own runtime.

    Each call decodes the artifact's K latent frames and hands its temporal caches to the next call, as an app
    on a phone would (the loop is in the artifact's manifest); frames are written as they come, and --video is read
    and encoded chunk by chunk as they are needed, so peak memory does not grow with the clip. The output equals the
    whole-clip decode of the latent.

    Example: `effconv decode out/student.onnx --latents latent.npy --out video.npy`

    Example: `effconv decode out/student.tflite --video clip.mp4 --out decoded.mp4`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from effconv.decode.stage import decode as run_decode

    columns = (TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("decode", total=None)
        result = run_decode(artifact, out_path, latents=latents, video=video, teacher=teacher, frames=frames,
                            threads=threads, fps=fps, progress=lambda done, total: progress.update(task, completed=done, total=total))
    summary = {"out": str(result.out), "latent_frames": result.latent_frames, "video_frames": result.video_frames,
               "chunks": result.chunks, "runtime": result.runtime, "latents": result.latent_source, "fps": result.fps,
               "frames_note": result.frames_note}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if result.frames_note:
        out.print(f"{result.frames_note}.")
    out.print(f"{result.out}: {result.video_frames} frames from {result.latent_frames} latent frames "
              f"({result.latent_source}) in {result.chunks} calls, {result.runtime}")
