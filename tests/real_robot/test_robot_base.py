"""The robot-side data contract: action layouts, the robot's DatasetSpec, protocols."""
import numpy as np
import pytest

from vlastack.real_robot.base import Camera, Frame, Robot, action_dim, action_space, robot_spec
from vlastack.real_robot.controller import ControlledRobot, ControllerConfig, DriverSpec
from vlastack.real_robot.kinematics import PANDA
from vlastack.real_robot.safety import SafetyLimits
from vlastack.types import ACTION, STATE, DatasetSpec, image_key


def test_action_layouts_match_dims():
    assert action_dim("joint", 7) == 8 and action_space("joint", 7).dim == 8
    assert action_dim("ee", 6) == 7 and action_space("ee", 6).dim == 7
    assert action_space("ee", 7).mode == "absolute" and action_space("ee", 7).rotation == "axis_angle"
    with pytest.raises(ValueError, match="valid choices"):
        action_dim("cartesian_velocity", 7)


def test_robot_spec_round_trips_and_names_elements():
    spec = robot_spec(PANDA.joint_names, "ee", {"front": (48, 64), "wrist": (32, 32)}, fps=15)
    assert spec.cameras == ["front", "wrist"] and spec.fps == 15
    assert spec.features[image_key("front")].shape == (48, 64, 3)
    assert spec.state_dim == 14 and spec.features[STATE].names[:2] == ("joint1", "joint2")
    assert spec.features[STATE].names[7:] == ("gripper", "ee_x", "ee_y", "ee_z", "ee_rx", "ee_ry", "ee_rz")
    assert spec.action_dim == 7 and spec.features[ACTION].names[-1] == "gripper"
    assert DatasetSpec.from_dict(spec.to_dict()) == spec


def test_controlled_robot_satisfies_the_protocol():
    limits = SafetyLimits.for_chain(PANDA)
    r = ControlledRobot(DriverSpec("vlastack.real_robot.sim:KinematicArmDriver"), PANDA, limits, ControllerConfig())
    assert isinstance(r, Robot)
    assert r.spec.action_dim == 7 and not r.is_connected
    with pytest.raises(Exception, match="not connected"):
        r.get_observation()


def test_frame_age():
    f = Frame(np.zeros((2, 2, 3), np.uint8), timestamp=10.0, index=3)
    assert f.age(10.5) == pytest.approx(0.5)

    class Cam:
        name, shape = "c", (2, 2, 3)

        def connect(self): ...

        def read(self): return f

        def disconnect(self): ...

    assert isinstance(Cam(), Camera)
