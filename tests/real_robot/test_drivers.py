"""Vendor drivers against fakes of their SDK calls (ur_rtde, franky, lerobot), run through the real
controller loop (in a thread, so the monkeypatched fake modules are the ones imported)."""
import sys
import time
import types

import numpy as np
import pytest

from vlastack.real_robot.base import RobotError
from vlastack.real_robot.kinematics import PANDA, UR5E, matrix_to_rotvec
from vlastack.real_robot.registry import RobotConfigError, make_robot
from vlastack.real_robot.safety import SafetyLimits

UR_Q0 = [0.0, -1.2, 1.6, -1.9, -1.57, 0.0]


def _box_around(chain, q0, half=(0.2, 0.2, 0.15)):
    p = chain.fk_pos(np.array(q0))
    return {"workspace_lower": list(p - half), "workspace_upper": list(p + half)}


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _check_stream(qs, limits, chain, rate):
    qs = np.asarray(qs)
    assert np.all(qs >= limits.lower - 1e-12) and np.all(qs <= limits.upper + 1e-12)
    assert np.all(np.abs(np.diff(qs, axis=0)) <= limits.step_cap(1 / rate) + 1e-9)
    if chain is not None:
        assert all(limits.in_box(chain.fk_pos(q)) for q in qs[::3])


# ------------------------------------------------------------------------------------ UR


@pytest.fixture
def fake_ur(monkeypatch):
    world = types.SimpleNamespace(q=np.array(UR_Q0), calls=[], servo=[], protective=False, io=[])

    class Control:
        def __init__(self, host, *a):
            world.calls.append(("control", host))

        def isConnected(self):
            return True

        def servoJ(self, q, speed, acceleration, t, lookahead_time, gain):
            world.servo.append((list(q), t, lookahead_time, gain))
            world.q = np.array(q)

        def servoStop(self, a=10.0):
            world.calls.append(("servoStop",))

        def stopScript(self):
            world.calls.append(("stopScript",))

        def disconnect(self):
            world.calls.append(("control.disconnect",))

    class Receive:
        def __init__(self, host, frequency=-1.0):
            world.calls.append(("receive", host, frequency))

        def getActualQ(self):
            return list(world.q)

        def getActualQd(self):
            return [0.0] * 6

        def isEmergencyStopped(self):
            return False

        def isProtectiveStopped(self):
            return world.protective

        def disconnect(self):
            world.calls.append(("receive.disconnect",))

    class IO:
        def __init__(self, host):
            pass

        def setStandardDigitalOut(self, pin, value):
            world.io.append((pin, value))

        def disconnect(self):
            pass

    monkeypatch.setitem(sys.modules, "rtde_control", _module("rtde_control", RTDEControlInterface=Control))
    monkeypatch.setitem(sys.modules, "rtde_receive", _module("rtde_receive", RTDEReceiveInterface=Receive))
    monkeypatch.setitem(sys.modules, "rtde_io", _module("rtde_io", RTDEIOInterface=IO))
    return world


def _ur_cfg(**kw):
    return {"type": "ur", "host": "10.0.0.7", "in_thread": True, "fps": 10,
            "controller": {"rate_hz": 125, "action_mode": "ee", "watchdog_s": 0.5},
            "safety": {**_box_around(UR5E, UR_Q0), "max_step": 0.01}, "driver": {"gripper_digital_out": 3}, **kw}


def test_ur_driver_servoes_through_the_controller(fake_ur):
    robot = make_robot(_ur_cfg())
    limits = SafetyLimits.for_chain(UR5E, _ur_cfg()["safety"])
    with robot:
        obs = robot.get_observation()
        p0 = obs["observation.state"][7:10].astype(float)
        rv = matrix_to_rotvec(UR5E.fk(np.array(UR_Q0))[1])
        goal = p0 + [0.03, -0.02, -0.04]
        t = time.monotonic()
        for k in range(1, 6):
            robot.send_action(np.r_[p0 + (goal - p0) * k / 5, rv, 1.0].astype(np.float32), t=t + 0.08 * k)
            time.sleep(0.08)
        time.sleep(0.4)
        np.testing.assert_allclose(UR5E.fk_pos(fake_ur.q), goal, atol=3e-3)
        fake_ur.protective = True  # the arm's protective stop becomes the controller's e-stop
        time.sleep(0.05)
        assert robot.status == "estop"
    q_sent = [s[0] for s in fake_ur.servo]
    assert {(round(s[1], 6), s[2], s[3]) for s in fake_ur.servo} == {(round(1 / 125, 6), 0.1, 300.0)}
    _check_stream(q_sent, limits, UR5E, 125)
    assert fake_ur.io == [(3, False), (3, True)]  # opened explicitly at start, closed by the action
    assert ("servoStop",) in fake_ur.calls and ("stopScript",) in fake_ur.calls
    assert fake_ur.calls[-2:] == [("control.disconnect",), ("receive.disconnect",)]


def _named_extra(message: str) -> str:
    """The extra that ``pip install 'vlastack[EXTRA]'`` in ``message`` names; it must be one the package declares."""
    import importlib.metadata
    import re

    m = re.search(r"vlastack\[([\w-]+)\]", message)
    assert m, message
    assert m.group(1) in importlib.metadata.metadata("vlastack").get_all("Provides-Extra"), message
    return m.group(1)


def test_ur_without_its_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtde_control", None)
    with pytest.raises(RobotError) as e:
        make_robot(_ur_cfg()).connect()
    assert _named_extra(str(e.value)) == "robot-ur"


def test_franka_without_its_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)
    with pytest.raises(RobotError) as e:
        make_robot({"type": "franka", "host": "172.16.0.2", "in_thread": True}).connect()
    assert _named_extra(str(e.value)) == "robot-franka"


def test_ur_bad_settings_are_named(fake_ur):
    with pytest.raises(RobotError, match="lookahead_time"):
        make_robot(_ur_cfg(driver={"lookahead_time": 1.0})).connect()
    with pytest.raises(RobotConfigError, match="host is required"):
        make_robot({**_ur_cfg(), "host": ""})


# ------------------------------------------------------------------------------------ Franka


@pytest.fixture
def fake_franky(monkeypatch):
    world = types.SimpleNamespace(q=np.array(PANDA.home), moves=[], width=0.08, gripper_moves=[], recovered=0,
                                  fail_next=False, in_error=False, joined=0)

    class JointWaypoint:
        def __init__(self, target):
            self.target = list(target)

    class JointWaypointMotion:
        def __init__(self, waypoints):
            self.waypoints = waypoints

    class Robot:
        def __init__(self, host):
            self.host = host
            self.relative_dynamics_factor = 1.0

        def recover_from_errors(self):
            world.recovered += 1
            world.in_error = False

        @property
        def current_joint_state(self):
            return types.SimpleNamespace(position=list(world.q), velocity=[0.0] * 7)

        def move(self, motion, asynchronous=False):
            assert asynchronous
            if world.fail_next:  # a reflex: like libfranka, every later motion fails until recovered
                world.fail_next, world.in_error = False, True
            if world.in_error:
                raise RuntimeError("cartesian_reflex")
            world.moves.append(motion.waypoints[0].target)
            world.q = np.array(motion.waypoints[0].target)
            world.factor = self.relative_dynamics_factor

        def join_motion(self):
            world.joined += 1

    class Gripper:
        def __init__(self, host):
            pass

        @property
        def width(self):
            return world.width

        def move_async(self, width, speed):
            world.gripper_moves.append((width, speed))
            world.width = width

    monkeypatch.setitem(sys.modules, "franky", _module("franky", Robot=Robot, Gripper=Gripper,
                                                       JointWaypoint=JointWaypoint,
                                                       JointWaypointMotion=JointWaypointMotion))
    return world


def test_franka_driver_servoes_and_reports_motion_errors(fake_franky):
    """A reflex is never cleared by the servo loop: the arm stays in its error state, the faults stop the
    controller, and only the operator's recover() clears it. Before the fix the driver called
    recover_from_errors() on connect and after every motion error, inside the 100 Hz loop."""
    box = _box_around(PANDA, PANDA.home)
    cfg = {"type": "franka", "host": "172.16.0.2", "in_thread": True,
           "controller": {"rate_hz": 100, "action_mode": "joint", "watchdog_s": 0.5, "max_faults": 5},
           "safety": {**box, "max_step": 0.01}, "driver": {"relative_dynamics_factor": 0.2}}
    robot = make_robot(cfg)
    with robot:
        assert fake_franky.recovered == 0  # nothing cleared behind the operator's back, not even at start
        q0 = robot.state().q
        target = q0 + np.array([0.1, -0.05, 0, 0, 0, 0.05, 0])
        robot.send_action(np.r_[target, 1.0].astype(np.float32), t=time.monotonic() + 0.3)
        time.sleep(0.6)
        np.testing.assert_allclose(fake_franky.q, target, atol=1e-6)
        assert robot.state().gripper == pytest.approx(1.0)  # width 0 -> closed
        fake_franky.fail_next = True
        time.sleep(0.2)
        st = robot.state()
        assert fake_franky.recovered == 0 and fake_franky.in_error
        assert st.status == "stopped" and st.counters["driver_faults"] >= 5
        assert any("recover" in msg for _, msg in robot.faults())
        assert robot.recover() == "idle"  # the operator's action
        assert fake_franky.recovered == 1 and not fake_franky.in_error
        back = robot.state().q
        robot.send_action(np.r_[q0, 1.0].astype(np.float32), t=time.monotonic() + 0.3)
        time.sleep(0.6)
        np.testing.assert_allclose(fake_franky.q, q0, atol=1e-6)
    np.testing.assert_allclose(back, target, atol=1e-6)
    assert fake_franky.factor == 0.2 and fake_franky.joined == 1
    assert fake_franky.gripper_moves == [(0.08, 0.05), (0.0, 0.05)]  # opened at start, closed by the action
    _check_stream(fake_franky.moves, SafetyLimits.for_chain(PANDA, cfg["safety"]), PANDA, 100)
    with make_robot({**cfg, "driver": {"recover_on_connect": True}}):  # the operator's flag at start
        assert fake_franky.recovered == 2
    with pytest.raises(RobotError, match="recover_on_connect"):
        make_robot({**cfg, "driver": {"recover_on_connect": "yes"}}).connect()


# ------------------------------------------------------------------------------------ LeRobot


@pytest.fixture
def fake_lerobot(monkeypatch):
    motors = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    world = types.SimpleNamespace(pos={m: 0.0 for m in motors}, sent=[], connected=None, built=None)
    world.pos["gripper"] = 100.0

    class FakeRobot:
        action_features = {f"{m}.pos": float for m in motors}

        def __init__(self, config):
            world.built = config

        def connect(self, calibrate=True):
            world.connected = calibrate

        def get_observation(self):
            return {f"{m}.pos": v for m, v in world.pos.items()} | {"front": np.zeros((4, 4, 3), np.uint8)}

        def send_action(self, action):
            world.sent.append(dict(action))
            for k, v in action.items():
                world.pos[k[:-4]] = v
            return action

        def disconnect(self):
            world.connected = "closed"

    class So101Config:
        def __init__(self, port, id="arm"):
            self.port, self.id = port, id

    class RobotConfig:
        @staticmethod
        def get_choice_class(name):
            if name != "so101_follower":
                raise KeyError(name)
            return So101Config

    robots = _module("lerobot.robots", RobotConfig=RobotConfig, make_robot_from_config=FakeRobot)
    monkeypatch.setitem(sys.modules, "lerobot", _module("lerobot", robots=robots))
    monkeypatch.setitem(sys.modules, "lerobot.robots", robots)
    return world


def _lerobot_cfg(**kw):
    return {"type": "lerobot", "robot_type": "so101_follower", "robot_kwargs": {"port": "/dev/ttyACM0"},
            "in_thread": True, "controller": {"rate_hz": 100, "action_mode": "joint", "watchdog_s": 0.5},
            "safety": {"q_lower": [-90] * 5, "q_upper": [90] * 5, "v_max": 300, "max_step": 2.0, "margin": 1.0,
                       "tracking_tol": 20}, **kw}


def test_lerobot_bridge_drives_motors_in_their_units(fake_lerobot):
    with make_robot(_lerobot_cfg()) as robot:
        assert fake_lerobot.connected is False and fake_lerobot.built.port == "/dev/ttyACM0"
        assert robot.get_observation()["observation.state"].shape == (5 + 7,)
        robot.send_action(np.array([10, -10, 200, 0, 0, 1.0], np.float32), t=time.monotonic() + 0.2)
        time.sleep(0.9)  # the largest move (elbow, 89 units at 2 per tick) sets the pace of all joints
        pos = dict(fake_lerobot.pos)
    assert pos["shoulder_pan"] == pytest.approx(10) and pos["shoulder_lift"] == pytest.approx(-10)
    assert pos["elbow_flex"] == pytest.approx(89.0)  # clipped at the limit minus the margin
    assert pos["gripper"] == pytest.approx(0.0)  # +1 closed -> gripper_closed
    steps = np.diff([[s[f"{m}.pos"] for m in ("shoulder_pan", "elbow_flex")] for s in fake_lerobot.sent], axis=0)
    assert np.abs(steps).max() <= 2.0 + 1e-9
    assert fake_lerobot.connected == "closed"


def test_lerobot_config_errors_are_named(fake_lerobot):
    with pytest.raises(RobotConfigError, match="action_mode=joint"):
        make_robot(_lerobot_cfg(controller={"action_mode": "ee"}))
    with pytest.raises(RobotError, match="unknown robot type"):
        make_robot(_lerobot_cfg(robot_type="koch_follower")).connect()
    with pytest.raises(RobotConfigError, match="valid choices"):
        make_robot({"type": "kuka"})
