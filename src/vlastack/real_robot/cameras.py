"""Client-side cameras for real robots: OpenCV devices grabbed in a background thread with timestamps.

A grabber thread reads the device as fast as it delivers and keeps the newest frame with its
monotonic capture time and a counter, so :meth:`OpenCVCamera.read` never blocks for a frame and
a consumer can tell a frozen camera (timestamp stops advancing) from a live one. Frames are
converted to RGB and resized to ``image_size`` (H, W).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from vlastack.real_robot.base import Frame, RobotError


class OpenCVCamera:
    """An OpenCV ``VideoCapture`` device (index or path/URL) as a :class:`~.base.Camera`."""

    def __init__(self, name: str, device: Any = 0, image_size: tuple[int, int] = (128, 128), fps: float | None = None,
                 open_timeout_s: float = 5.0):
        self.name, self.device = name, device
        self.shape = (int(image_size[0]), int(image_size[1]), 3)
        self.fps, self.open_timeout_s = fps, float(open_timeout_s)
        self._cap = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self.error: str | None = None

    def connect(self) -> None:
        """Open the device, start grabbing and wait for the first frame."""
        if self._thread is not None:
            return
        try:
            import cv2
        except ImportError as e:
            raise ImportError(f"camera {self.name!r}: OpenCV cameras need opencv-python ({e})") from None
        self._cv2 = cv2
        self._cap = cv2.VideoCapture(self.device)
        if not self._cap.isOpened():
            raise RobotError(f"camera {self.name!r}: cannot open device {self.device!r}")
        if self.fps:
            self._cap.set(cv2.CAP_PROP_FPS, float(self.fps))
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.open_timeout_s
        while self._frame is None:
            if time.monotonic() > deadline or self.error:
                self.disconnect()
                raise RobotError(f"camera {self.name!r}: no frame within {self.open_timeout_s} s ({self.error})")
            time.sleep(0.01)

    def _grab(self) -> None:
        cv2, index = self._cv2, 0
        h, w, _ = self.shape
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            t = time.monotonic()
            if not ok:
                self.error = "read failed"
                time.sleep(0.01)
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if rgb.shape[:2] != (h, w):
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            index += 1
            with self._lock:
                self._frame = Frame(np.ascontiguousarray(rgb, dtype=np.uint8), t, index)

    def read(self) -> Frame:
        """The newest frame (capture time and counter included)."""
        with self._lock:
            f = self._frame
        if f is None:
            raise RobotError(f"camera {self.name!r}: not connected")
        return f

    def disconnect(self) -> None:
        """Stop grabbing and release the device (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._frame = None
