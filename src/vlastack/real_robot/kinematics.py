"""Serial-chain kinematics for the controller: forward kinematics, geometric Jacobian, damped IK.

A :class:`Chain` is a list of revolute joints, each reached from its parent by a fixed transform
(position, unit quaternion) and turning about its own local z axis, then a fixed tool
transform to the tool centre point (TCP). The same numbers build the digital twin's MJCF
(:mod:`.twin`), so the twin's physics and the controller's safety checks agree by construction
(a test compares them). Chains for the Franka Panda (robosuite's model) and the UR5e (its
published DH table) are provided.

Rotations go through ``scipy.spatial.transform.Rotation``: rotation matrices (3, 3), axis-angle
vectors (3,) and quaternions in the code base's one order, scalar last ``(x, y, z, w)``
(:data:`vlastack.types.QUAT_ORDER`; MJCF's ``(w, x, y, z)`` is converted where the twin writes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation


def quat_to_matrix(q) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion (x, y, z, w) (normalised first)."""
    return Rotation.from_quat(np.asarray(q, float)).as_matrix()


def matrix_to_quat(R) -> tuple[float, float, float, float]:
    """Unit quaternion (x, y, z, w) of a rotation matrix, w >= 0."""
    return tuple(float(x) for x in Rotation.from_matrix(np.asarray(R, float)).as_quat(canonical=True))


def rotvec_to_matrix(v) -> np.ndarray:
    """The rotation (3, 3) by angle |v| about v / |v|; raises ValueError on non-finite input or angle."""
    v = np.asarray(v, float)
    big = float(np.max(np.abs(v)))
    if not math.isfinite(big):
        raise ValueError(f"rotation vector {v.tolist()} is not finite")
    if big < 1e-12:
        return np.eye(3)
    k = v / big
    th = big * float(np.linalg.norm(k))  # no overflow unless the angle itself exceeds the float range
    if not math.isfinite(th):
        raise ValueError(f"rotation vector {v.tolist()}: its angle overflows")
    return Rotation.from_rotvec(k / np.linalg.norm(k) * math.fmod(th, 2 * math.pi)).as_matrix()


def matrix_to_rotvec(R) -> np.ndarray:
    """Axis-angle vector (3,) of a rotation matrix, angle in [0, pi]."""
    return Rotation.from_matrix(np.asarray(R, float)).as_rotvec()


def _transform(pos, quat) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(quat)
    T[:3, 3] = pos
    return T


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    T = np.eye(4)
    T[0, 0], T[0, 1], T[1, 0], T[1, 1] = c, -s, s, c
    return T


@dataclass(frozen=True)
class Chain:
    """A serial arm: per-joint parent offsets (n, 3) and quaternions (n, 4) (x, y, z, w), a tool transform, limits.

    ``lower`` / ``upper``: joint position limits (rad); ``v_max``: joint speed limits (rad/s);
    ``home``: a safe start configuration.
    """

    name: str
    joint_names: tuple[str, ...]
    offsets: tuple[tuple[float, float, float], ...]
    quats: tuple[tuple[float, float, float, float], ...]
    tool_pos: tuple[float, float, float]
    tool_quat: tuple[float, float, float, float]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    v_max: tuple[float, ...]
    home: tuple[float, ...]
    _fixed: list = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        n = len(self.joint_names)
        for what in ("offsets", "quats", "lower", "upper", "v_max", "home"):
            if len(getattr(self, what)) != n:
                raise ValueError(f"chain {self.name}: {what} has {len(getattr(self, what))} entries for {n} joints")
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper)):
            raise ValueError(f"chain {self.name}: every lower limit must be below its upper limit")
        fixed = [_transform(p, q) for p, q in zip(self.offsets, self.quats)]
        object.__setattr__(self, "_fixed", (fixed, _transform(self.tool_pos, self.tool_quat)))

    @property
    def n(self) -> int:
        """Number of joints."""
        return len(self.joint_names)

    @property
    def lower_array(self) -> np.ndarray:
        """Lower joint limits (n,)."""
        return np.asarray(self.lower, float)

    @property
    def upper_array(self) -> np.ndarray:
        """Upper joint limits (n,)."""
        return np.asarray(self.upper, float)

    def frames(self, q) -> tuple[np.ndarray, np.ndarray]:
        """World transforms of every joint frame (n, 4, 4) and of the TCP (4, 4) at configuration ``q``."""
        fixed, tool = self._fixed
        T = np.eye(4)
        out = np.empty((self.n, 4, 4))
        for i in range(self.n):
            T = T @ fixed[i]
            out[i] = T  # joint i's frame before its rotation: its z axis is the joint axis
            T = T @ _rz(float(q[i]))
        return out, T @ tool

    def fk(self, q) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation (3, 3) at ``q``."""
        _, T = self.frames(q)
        return T[:3, 3].copy(), T[:3, :3].copy()

    def fk_pos(self, q) -> np.ndarray:
        """TCP position (3,) at ``q``."""
        return self.fk(q)[0]

    def jacobian(self, q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Geometric Jacobian (6, n) (linear rows then angular rows), with the TCP position and rotation."""
        joints, T = self.frames(q)
        p = T[:3, 3]
        z = joints[:, :3, 2]  # (n, 3) joint axes in the world
        o = joints[:, :3, 3]  # (n, 3) joint origins
        J = np.vstack([np.cross(z, p - o).T, z.T])  # (6, n)
        return J, p.copy(), T[:3, :3].copy()

    def ik(self, pos, rot, q0, iters: int = 40, damping: float = 0.02, tol: float = 1e-4,
           rot_weight: float = 0.3, max_step: float = 0.3) -> tuple[np.ndarray, float]:
        """Damped least-squares IK toward TCP ``pos`` (3,) and rotation ``rot`` (3, 3) from ``q0``.

        Stays inside the joint limits (each iterate is clipped). Returns the configuration and the
        remaining weighted pose error (metres plus ``rot_weight`` x radians).
        """
        lo, hi = self.lower_array, self.upper_array
        q = np.clip(np.asarray(q0, float), lo, hi)
        pos, rot = np.asarray(pos, float), np.asarray(rot, float)
        w = np.array([1, 1, 1, rot_weight, rot_weight, rot_weight], float)  # (6,)
        err = np.inf
        for _ in range(iters):
            J, p, R = self.jacobian(q)
            e = np.concatenate([pos - p, matrix_to_rotvec(rot @ R.T)]) * w  # (6,)
            err = float(np.linalg.norm(e))
            if err < tol:
                break
            Jw = J * w[:, None]  # (6, n)
            dq = Jw.T @ np.linalg.solve(Jw @ Jw.T + damping**2 * np.eye(6), e)  # (n,)
            big = float(np.max(np.abs(dq)))
            if big > max_step:
                dq *= max_step / big
            q = np.clip(q + dq, lo, hi)
        return q, err


def chain_from_dh(name: str, d, a, alpha, lower, upper, v_max, home, tool_pos=(0, 0, 0),
                  tool_quat=(0, 0, 0, 1), joint_names=None) -> Chain:
    """A :class:`Chain` from a standard DH table (T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)).

    Joint i+1 sits at the end of row i's fixed part; the last row's fixed part is folded into
    the tool transform, followed by ``tool_pos`` / ``tool_quat``.
    """
    n = len(d)
    fixed = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = [[1, 0, 0], [0, math.cos(alpha[i]), -math.sin(alpha[i])], [0, math.sin(alpha[i]), math.cos(alpha[i])]]
        T[:3, 3] = [a[i], 0, 0]
        Tz = np.eye(4)
        Tz[2, 3] = d[i]
        fixed.append(Tz @ T)
    offsets, quats = [(0.0, 0.0, 0.0)], [(0.0, 0.0, 0.0, 1.0)]
    for T in fixed[:-1]:
        offsets.append(tuple(float(x) for x in T[:3, 3]))
        quats.append(matrix_to_quat(T[:3, :3]))
    tool = fixed[-1] @ _transform(tool_pos, tool_quat)
    return Chain(name, tuple(joint_names or (f"joint{i + 1}" for i in range(n))), tuple(offsets), tuple(quats),
                 tuple(float(x) for x in tool[:3, 3]), matrix_to_quat(tool[:3, :3]), tuple(lower), tuple(upper),
                 tuple(v_max), tuple(home))


_S = 0.7071067811865476

#: Franka Panda, link offsets as in robosuite's shipped model (robots/panda/robot.xml, whose MJCF
#: quaternions are written w-first; here reordered to x, y, z, w); the tool is
#: the centre between the fingertips of the twin's gripper, 0.1034 m below the hand flange.
PANDA = Chain(
    name="panda",
    joint_names=tuple(f"joint{i}" for i in range(1, 8)),
    offsets=((0, 0, 0.333), (0, 0, 0), (0, -0.316, 0), (0.0825, 0, 0), (-0.0825, 0.384, 0), (0, 0, 0), (0.088, 0, 0)),
    quats=((0, 0, 0, 1), (-_S, 0, 0, _S), (_S, 0, 0, _S), (_S, 0, 0, _S), (-_S, 0, 0, _S), (_S, 0, 0, _S), (_S, 0, 0, _S)),
    tool_pos=(0, 0, 0.1065 + 0.1034),
    tool_quat=(0, 0, -0.3826834, 0.9238795),
    lower=(-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
    upper=(2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973),
    v_max=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
    home=(0.0, -0.2, 0.0, -2.4, 0.0, 2.2, 0.785398),
)

#: Universal Robots UR5e from its published DH parameters (tool flange as the TCP).
UR5E = chain_from_dh(
    "ur5e",
    d=(0.1625, 0, 0, 0.1333, 0.0997, 0.0996),
    a=(0, -0.425, -0.3922, 0, 0, 0),
    alpha=(math.pi / 2, 0, 0, math.pi / 2, -math.pi / 2, 0),
    lower=(-2 * math.pi,) * 6, upper=(2 * math.pi,) * 6, v_max=(math.pi,) * 6,
    home=(0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0),
    joint_names=("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3"),
)

CHAINS: dict[str, Chain] = {"panda": PANDA, "ur5e": UR5E}


def get_chain(name: str) -> Chain:
    """A named chain (``panda``, ``ur5e``); raises naming the choices."""
    if name not in CHAINS:
        raise ValueError(f"kinematics: unknown chain {name!r}; valid choices: {sorted(CHAINS)}")
    return CHAINS[name]
