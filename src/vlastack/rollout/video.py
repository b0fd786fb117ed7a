"""Episode videos: camera frames side by side, upscaled, the instruction drawn on, written as mp4 (PyAV).

:class:`EpisodeRecorder` is an episode-loop observer that keeps the frames of the cameras it is
given; :func:`write_episode_video` captions them (instruction on top, step and outcome below)
and encodes H.264 (``libx264``, else ``h264``/``mpeg4``) in yuv420p.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vlastack.types import image_key

#: frames are upscaled (nearest) until they are at least this tall, so the caption stays legible
MIN_HEIGHT = 192
_CODECS = ("libx264", "h264", "mpeg4")


class EpisodeRecorder:
    """Observer for :func:`~.episode.run_episode`: keeps one side-by-side frame (H, W * K, 3) per step."""

    def __init__(self, cameras: Sequence[str]):
        """Record ``cameras`` (left to right)."""
        if not cameras:
            raise ValueError("EpisodeRecorder: no cameras to record")
        self.cameras = list(cameras)
        self.frames: list[np.ndarray] = []
        self.successes: list[bool] = []

    def __call__(self, step: int, obs: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Keep this step's frame."""
        missing = [c for c in self.cameras if image_key(c) not in obs]
        if missing:
            raise KeyError(f"EpisodeRecorder: observation lacks cameras {missing}")
        self.frames.append(np.concatenate([np.asarray(obs[image_key(c)], np.uint8) for c in self.cameras], axis=1))
        self.successes.append(bool(info.get("success", False)))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font, fixed size
        return ImageFont.load_default()


def caption_frames(frames: Sequence[np.ndarray], instruction: str, successes: Sequence[bool] | None = None,
                   min_height: int = MIN_HEIGHT) -> list[np.ndarray]:
    """Frames upscaled to at least ``min_height`` with the instruction above and step / outcome below.

    Returns uint8 (H', W', 3) frames with even sizes (what yuv420p needs).
    """
    from PIL import Image, ImageDraw

    if not len(frames):
        raise ValueError("caption_frames: no frames")
    h, w = np.asarray(frames[0]).shape[:2]
    scale = max(1, math.ceil(min_height / h))
    fw = w * scale
    font = _font(14)
    chars = max(12, int(fw / 7.5))
    lines = textwrap.wrap(instruction or "(no instruction)", chars)[:3]
    top, bottom = 8 + 17 * len(lines), 22
    out_h, out_w = h * scale + top + bottom, fw
    out_h += out_h % 2
    out_w += out_w % 2
    out: list[np.ndarray] = []
    ok_so_far = False
    for i, fr in enumerate(frames):
        fr = np.asarray(fr, np.uint8)
        if fr.shape[:2] != (h, w):
            raise ValueError(f"caption_frames: frame {i} is {fr.shape[:2]}, the first is {(h, w)}")
        big = fr.repeat(scale, 0).repeat(scale, 1)  # (h*s, w*s, 3)
        canvas = Image.new("RGB", (out_w, out_h), (20, 20, 20))
        canvas.paste(Image.fromarray(big), (0, top))
        d = ImageDraw.Draw(canvas)
        for j, line in enumerate(lines):
            d.text((6, 4 + 17 * j), line, fill=(255, 255, 255), font=font)
        if successes is not None and successes[i]:
            ok_so_far = True
        status = "success" if ok_so_far else ""
        d.text((6, top + h * scale + 3), f"step {i}", fill=(200, 200, 200), font=font)
        if status:
            d.text((out_w - 70, top + h * scale + 3), status, fill=(90, 230, 90), font=font)
        out.append(np.asarray(canvas))
    return out


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode uint8 RGB frames (H, W, 3), even H and W, as an mp4 at ``fps``; returns the path."""
    import av

    if not len(frames):
        raise ValueError("write_mp4: no frames")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4: frame size {h}x{w} must be even (yuv420p)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    rate = max(1, int(round(fps)))
    last_err: Exception | None = None
    for codec in _CODECS:
        try:
            with av.open(str(tmp), "w") as container:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if codec in ("libx264", "h264"):
                    stream.options = {"crf": "23", "preset": "veryfast"}
                for fr in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")))
                container.mux(stream.encode())
            os.replace(tmp, path)
            return path
        except Exception as e:  # noqa: BLE001 - try the next encoder
            last_err = e
            if tmp.exists():
                tmp.unlink()
    raise RuntimeError(f"write_mp4: no working encoder among {_CODECS} in this PyAV build ({last_err})")


def write_episode_video(path: str | os.PathLike, recorder: EpisodeRecorder, instruction: str, fps: float) -> Path:
    """Caption the recorded frames and write them to ``path`` (mp4)."""
    return write_mp4(path, caption_frames(recorder.frames, instruction, recorder.successes), fps)


def count_frames(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(number of decoded frames, (height, width)) of a video file."""
    import av

    with av.open(str(path)) as c:
        n, size = 0, (0, 0)
        for frame in c.decode(video=0):
            n += 1
            size = (frame.height, frame.width)
    return n, size
