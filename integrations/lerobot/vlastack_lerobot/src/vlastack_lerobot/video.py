"""Video decoding for LeRobotDataset where LeRobot's own backends cannot run.

LeRobot 0.4.4 decodes with torchcodec, or with "pyav" through ``torchvision.io.VideoReader``.
Beside torch 2.14 neither exists: torchcodec has no build for it and torchvision 0.29 removed
``VideoReader``. :func:`install` then routes LeRobotDataset's video reads through
:func:`decode_video_frames_pyav` (the same algorithm with PyAV directly); where a LeRobot backend
works it changes nothing. Imports only the standard library, numpy, torch, av and lerobot.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np


def decode_video_frames_pyav(video_path, timestamps: list[float], tolerance_s: float,
                             backend: str | None = None, log_loaded_timestamps: bool = False):
    """Frames of ``video_path`` closest to ``timestamps`` (seconds): float32 (N, 3, H, W) in [0, 1].

    Same algorithm as LeRobot 0.4.4's torchvision "pyav" backend: seek to the key frame before
    the first timestamp, decode forward to the last one, take the closest frame within the tolerance.
    """
    import av
    import torch

    first_ts, last_ts = min(timestamps), max(timestamps)
    frames, loaded_ts = [], []
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        container.seek(int(first_ts / tb), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            ts = float(frame.pts * tb)
            frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
            loaded_ts.append(ts)
            if ts >= last_ts:
                break
    q = np.asarray(timestamps, np.float64)[:, None]  # (N, 1)
    dist = np.abs(q - np.asarray(loaded_ts, np.float64)[None])  # (N, L)
    idx = dist.argmin(1)
    if not (dist[np.arange(len(q)), idx] < tolerance_s).all():
        raise RuntimeError(f"{video_path}: query timestamps {timestamps} not within {tolerance_s}s of decoded "
                           f"frames {loaded_ts[:3]}...{loaded_ts[-3:]}")
    out = torch.from_numpy(np.stack([frames[i] for i in idx]))  # (N, H, W, 3) uint8
    return out.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)


def lerobot_can_decode() -> bool:
    """Whether one of LeRobot 0.4.4's own video backends can run here."""
    if importlib.util.find_spec("torchcodec") is not None:
        return True
    try:
        import torchvision.io as tio
    except ImportError:
        return False
    return hasattr(tio, "VideoReader")


def install(force: bool = False) -> bool:
    """Route LeRobotDataset's video reads through PyAV when LeRobot cannot decode (or ``force``).

    Returns whether it did.
    """
    if not force and lerobot_can_decode():
        return False
    import lerobot.datasets.lerobot_dataset as lds
    import lerobot.datasets.video_utils as vu

    lds.decode_video_frames = decode_video_frames_pyav
    vu.decode_video_frames = decode_video_frames_pyav
    logging.getLogger(__name__).info("vlastack_lerobot: LeRobot video reads go through PyAV directly "
                                     "(no torchcodec, no torchvision VideoReader)")
    return True
