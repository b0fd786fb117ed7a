"""Teleoperation: keyboard and SpaceMouse devices (pynput / pyspacemouse faked) and demos recorded through
the twin's controller into a Zarr store, one atomic episode at a time, read back unchanged."""
import sys
import types
from collections import namedtuple

import numpy as np
import pytest

from vlastack.datasets.store import TrajectoryStore
from vlastack.real_robot.controller import ControllerConfig
from vlastack.real_robot.teleop import (InputDevice, KeyboardDevice, SpaceMouseDevice, TeleopCommand,
                                        TeleopSession)
from vlastack.real_robot.twin import TwinConfig, TwinRobot
from vlastack.types import ACTION, STATE, image_key


class ScriptedDevice:
    """Plays back a list of commands, then reports ``end`` forever."""

    def __init__(self, commands, end="done"):
        self.commands, self.end = list(commands), end

    def open(self): ...

    def close(self): ...

    def read(self):
        return self.commands.pop(0) if self.commands else TeleopCommand(events=frozenset({self.end}))


def _push(n, vx=0.1, grip_at=None):
    return [TeleopCommand(np.array([vx, 0, 0, 0, 0, 0.0]), -1.0 if k == grip_at else None) for k in range(n)]


def test_teleop_demos_round_trip_through_the_store(tmp_path):
    twin = TwinConfig(image_size=(24, 32), camera_fps=20)
    with TwinRobot(twin, ControllerConfig(rate_hz=200), fps=20) as robot:
        store = TrajectoryStore.create(tmp_path / "demos.zarr", robot.spec)
        x0 = robot.state().ee[0]
        kept = TeleopSession(robot, ScriptedDevice(_push(16, grip_at=4)), store, "push forward").record(keep_frames=True)
        dropped = TeleopSession(robot, ScriptedDevice(_push(4), end="discard"), store, "push forward").record()
        failed = TeleopSession(robot, ScriptedDevice(_push(5, vx=-0.1), end="fail"), store, "pull back").record()
        x1 = robot.state().ee[0]
        store.close()
    assert (kept.outcome, kept.steps, kept.episode_index) == ("done", 16, 0)
    assert (dropped.outcome, dropped.episode_index) == ("discard", None)
    assert (failed.outcome, failed.episode_index) == ("fail", 1)
    back = TrajectoryStore.open(tmp_path / "demos.zarr", verify="full")
    assert back.num_episodes == 2 and back.num_frames == 21
    meta = back.episodes
    assert [m["instruction"] for m in meta] == ["push forward", "pull back"]
    assert [m["success"] for m in meta] == [True, False] and meta[0]["source"] == "teleop"
    ep = back.episode(0)
    for k, v in kept.frames.items():
        np.testing.assert_array_equal(ep[k], v)
    assert ep[image_key("front")].shape == (16, 24, 32, 3) and ep[STATE].shape == (16, 14)
    a = ep[ACTION]
    np.testing.assert_allclose(np.diff(a[:, 0]), 0.1 / 20, atol=1e-6)  # the twist integrated at fps
    assert a[0, 6] == 1 and np.all(a[4:, 6] == -1)  # the twin starts closed; opened from step 4
    assert ep[STATE][-1, 8] > ep[STATE][0, 8] + 0.03  # the arm really moved forward
    assert x1 - x0 > 0.02  # net: forward 16 steps, back 5 (the discarded 4 also moved it)


def test_teleop_rejects_a_mismatched_store(tmp_path):
    from vlastack.types import DatasetSpec

    store = TrajectoryStore.create(tmp_path / "other.zarr", DatasetSpec.robot(cameras=("left",)))

    class FakeRobot:
        chain = TwinRobot().chain
        spec = TwinRobot().spec

    with pytest.raises(ValueError, match="create the store with robot.spec"):
        TeleopSession(FakeRobot(), ScriptedDevice([]), store, "x")
    with pytest.raises(ValueError, match="instruction"):
        TeleopSession(FakeRobot(), ScriptedDevice([]), store, " ")


def test_keyboard_device_maps_keys(monkeypatch):
    made = {}

    class Listener:
        def __init__(self, on_press, on_release):
            made.update(press=on_press, release=on_release)

        def start(self):
            made["started"] = True

        def stop(self):
            made["stopped"] = True

    keyboard = types.SimpleNamespace(Listener=Listener)
    monkeypatch.setitem(sys.modules, "pynput", types.SimpleNamespace(keyboard=keyboard))
    monkeypatch.setitem(sys.modules, "pynput.keyboard", keyboard)
    dev = KeyboardDevice(linear_speed=0.1, angular_speed=0.5)
    assert isinstance(dev, InputDevice)
    dev.open()
    char = lambda c: types.SimpleNamespace(char=c)  # noqa: E731
    key = lambda n: types.SimpleNamespace(char=None, name=n)  # noqa: E731
    made["press"](char("w"))
    made["press"](char("D"))
    made["press"](char("j"))
    made["press"](key("space"))
    c = dev.read()
    np.testing.assert_allclose(c.twist, [0.1, -0.1, 0, 0, 0, 0.5])
    assert c.gripper == 1.0 and c.events == frozenset()
    made["release"](char("w"))
    made["press"](key("enter"))
    c = dev.read()
    np.testing.assert_allclose(c.twist, [0, -0.1, 0, 0, 0, 0.5])
    assert c.gripper is None and c.events == {"done"}
    assert dev.read().events == frozenset()  # events are reported once
    dev.close()
    assert made["stopped"]


def test_spacemouse_device_deadzone_axes_and_buttons(monkeypatch):
    State = namedtuple("State", ["t", "x", "y", "z", "roll", "pitch", "yaw", "buttons"])
    states = [State(0, 0.05, 0.55, -1.0, 0, 0, 0.3, [0, 0]), State(0, 0, 0, 0, 0, 0, 0, [1, 0]),
              State(0, 0, 0, 0, 0, 0, 0, [1, 0]), State(0, 0, 0, 0, 0, 0, 0, [0, 1])]
    fake = types.SimpleNamespace(open=lambda device=None: True, read=lambda: states.pop(0), close=lambda: None)
    monkeypatch.setitem(sys.modules, "pyspacemouse", fake)
    dev = SpaceMouseDevice(linear_speed=0.1, angular_speed=1.0, deadzone=0.1)
    dev.open()
    c = dev.read()
    np.testing.assert_allclose(c.twist, [0.05, 0, -0.1, 0, 0, -(0.3 - 0.1) / 0.9], atol=1e-9)
    assert dev.read().gripper == 1.0  # left button pressed: toggle to closed
    assert dev.read().gripper is None  # still held: no new toggle
    assert dev.read().events == {"done"}


def test_spacemouse_missing_device_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspacemouse", types.SimpleNamespace(open=lambda device=None: False))
    with pytest.raises(Exception, match="no device found"):
        SpaceMouseDevice().open()
