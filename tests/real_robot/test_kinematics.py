"""Rotation helpers (scipy's Rotation) and the one quaternion order, x-y-z-w."""
import math

import numpy as np
import pytest

from vlastack.real_robot.kinematics import (PANDA, matrix_to_quat, matrix_to_rotvec, quat_to_matrix,
                                            rotvec_to_matrix)
from vlastack.types import QUAT_ORDER, quat_from_mujoco, quat_to_mujoco


def test_quaternions_are_scalar_last():
    assert QUAT_ORDER == "xyzw"
    rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # +90 degrees about z
    s = math.sqrt(0.5)
    np.testing.assert_allclose(matrix_to_quat(rz90), (0.0, 0.0, s, s), atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix((0.0, 0.0, s, s)), rz90, atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix((0.0, 0.0, 2.0, 2.0)), rz90, atol=1e-12)  # normalised first
    assert matrix_to_quat(-np.diag([1.0, 1.0, -1.0]) @ np.diag([1.0, -1.0, -1.0]))[3] >= 0  # w >= 0
    # MuJoCo's w-first order at the boundary
    np.testing.assert_array_equal(quat_from_mujoco([s, 0, 0, s]), [0, 0, s, s])
    np.testing.assert_array_equal(quat_to_mujoco(quat_from_mujoco([[1, 2, 3, 4]])), [[1, 2, 3, 4]])
    # the Panda's second link is turned -90 degrees about x (robosuite's MJCF: quat="0.707 -0.707 0 0")
    np.testing.assert_allclose(quat_to_matrix(PANDA.quats[1]) @ [0, 1, 0], [0, 0, -1], atol=1e-6)


def test_rotation_vectors_round_trip_and_bad_input():
    rng = np.random.default_rng(0)
    for v in [*rng.normal(size=(50, 3)), [0.0, 0.0, math.pi], [1e-14, 0, 0], [0.0, 3.0 * math.pi, 0.0]]:
        R = rotvec_to_matrix(v)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotvec_to_matrix(matrix_to_rotvec(R)), R, atol=1e-9)
        assert np.linalg.norm(matrix_to_rotvec(R)) <= math.pi + 1e-9
    np.testing.assert_allclose(rotvec_to_matrix([0, 0, math.pi / 2]), quat_to_matrix((0, 0, math.sqrt(0.5),
                                                                                      math.sqrt(0.5))), atol=1e-12)
    with pytest.raises(ValueError, match="not finite"):
        rotvec_to_matrix([0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="angle overflows"):
        rotvec_to_matrix([1.5e308, 1.5e308, 0.0])
    R = rotvec_to_matrix([0.0, 1e308, 1.49e308])  # finite vector and angle, whose squares overflow
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
