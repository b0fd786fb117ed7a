"""The robot-side interfaces: the :class:`Robot` protocol, timestamped camera frames, action layouts.

A robot, as the rollout loop sees it (mirroring LeRobot's ``Robot``)::

    robot.connect()                      # start controller process / open connections
    obs = robot.get_observation()        # flat data-contract dict (see below)
    robot.send_action(action, t=None)    # a timestamped target; the controller interpolates to it
    robot.disconnect()
    with robot: ...                      # connect / disconnect

Observations are flat dicts in the data contract of :mod:`vlastack.types`:
``observation.state`` float32 (D_s,), ``observation.images.<camera>`` uint8 (H, W, 3),
``task`` (when the robot knows its instruction) and ``timestamp`` (``time.monotonic()`` seconds
of the oldest source in the observation: the capture time of its stalest camera frame or state).

Actions are float32 vectors described by an :class:`~vlastack.types.ActionSpace`; two modes:

- ``joint``: absolute joint positions (rad) then the gripper, (n_joints + 1,);
- ``ee``: an absolute end-effector pose in the base frame, position (m, 3), rotation as an
  axis-angle vector (rad, 3), then the gripper, (7,).

The gripper is -1 open, +1 closed (the contract's convention). The state vector is
``[q (n), gripper (1), ee position (3), ee axis-angle (3)]`` for every arm (:func:`state_names`).

Cameras deliver :class:`Frame` s: an image plus the monotonic time it was captured and a frame
counter, so a consumer can tell a fresh frame from a frozen one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlastack.types import ACTION, STATE, ActionSpace, DatasetSpec, FeatureSpec, image_key

ACTION_MODES = ("joint", "ee")


class RobotError(RuntimeError):
    """A robot could not connect, lost its controller, or was used in the wrong state."""


class StaleFrameError(RobotError):
    """A camera's newest frame is older than the robot allows (a frozen or disconnected camera)."""


@dataclass(frozen=True)
class Frame:
    """One camera image: uint8 (H, W, 3), the monotonic time it was captured, and its frame counter."""

    image: np.ndarray
    timestamp: float
    index: int

    def age(self, now: float) -> float:
        """Seconds since capture at monotonic time ``now``."""
        return now - self.timestamp


@runtime_checkable
class Camera(Protocol):
    """A camera delivering timestamped frames. ``shape`` is (H, W, 3)."""

    name: str
    shape: tuple[int, int, int]

    def connect(self) -> None:
        """Open the device (idempotent)."""

    def read(self) -> Frame:
        """The newest frame (never blocks longer than one frame period)."""

    def disconnect(self) -> None:
        """Release the device (idempotent)."""


@runtime_checkable
class Robot(Protocol):
    """What the rollout loop needs from a robot; see the module docstring."""

    def connect(self) -> None:
        """Connect (start the controller, open cameras); raises :class:`RobotError` on failure."""

    def get_observation(self) -> dict[str, Any]:
        """The newest observation as a flat data-contract dict."""

    def send_action(self, action: np.ndarray, t: float | None = None) -> None:
        """Queue ``action`` as the target for monotonic time ``t`` (None: one control period from now)."""

    def disconnect(self) -> None:
        """Stop moving, then release everything (idempotent)."""

    def __enter__(self) -> "Robot":
        """Connect."""

    def __exit__(self, *exc: Any) -> None:
        """Disconnect."""


def raise_priority(increment: int = -5) -> bool:
    """Give this process ``increment`` of CPU priority (niceness) when permitted (root or CAP_SYS_NICE): the
    controller and simulation processes keep their rate while policy inference loads the CPU. False if refused."""
    import os

    try:
        os.nice(increment)
        return True
    except (OSError, AttributeError):  # not permitted, or no os.nice (Windows)
        return False


def check_action_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`ACTION_MODES`; raises ValueError naming the choices."""
    if mode not in ACTION_MODES:
        raise ValueError(f"action_mode: unknown {mode!r}; valid choices: {list(ACTION_MODES)}")
    return mode


def action_dim(mode: str, n_joints: int) -> int:
    """Length of an action vector in ``mode`` for an arm with ``n_joints`` joints."""
    return n_joints + 1 if check_action_mode(mode) == "joint" else 7


def action_space(mode: str, n_joints: int) -> ActionSpace:
    """The :class:`ActionSpace` describing actions in ``mode`` (frame, absolute, rotation, layout)."""
    if check_action_mode(mode) == "joint":
        return ActionSpace(frame="joint", mode="absolute", rotation="none",
                           layout=(("joints", 0, n_joints), ("gripper", n_joints, n_joints + 1)))
    return ActionSpace(frame="base", mode="absolute", rotation="axis_angle",
                       layout=(("position", 0, 3), ("rotation", 3, 6), ("gripper", 6, 7)))


def state_names(joint_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Element names of the state vector: joints, ``gripper``, ``ee_x/y/z``, ``ee_rx/ry/rz``."""
    return (*joint_names, "gripper", "ee_x", "ee_y", "ee_z", "ee_rx", "ee_ry", "ee_rz")


def action_names(mode: str, joint_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Element names of the action vector in ``mode``."""
    if check_action_mode(mode) == "joint":
        return (*joint_names, "gripper")
    return ("x", "y", "z", "rx", "ry", "rz", "gripper")


def robot_spec(joint_names: tuple[str, ...] | list[str], mode: str, cameras: dict[str, tuple[int, int]],
               fps: float) -> DatasetSpec:
    """The :class:`DatasetSpec` of a robot's observations and actions (what a store of its demos holds).

    ``cameras`` maps a camera name to its (H, W); ``fps`` is the rate actions are sent at.
    """
    feats: dict[str, FeatureSpec] = {}
    for cam, (h, w) in cameras.items():
        k = image_key(cam)
        feats[k] = FeatureSpec(k, (int(h), int(w), 3), "uint8", ("height", "width", "channel"), "pixel", "image")
    snames = state_names(joint_names)
    feats[STATE] = FeatureSpec(STATE, (len(snames),), "float32", snames, "rad, m, rad (axis-angle)", "state")
    anames = action_names(mode, joint_names)
    units = "rad" if mode == "joint" else "m, rad (axis-angle)"
    feats[ACTION] = FeatureSpec(ACTION, (len(anames),), "float32", anames, units, "action")
    return DatasetSpec(feats, float(fps), action_space(mode, len(joint_names)))
