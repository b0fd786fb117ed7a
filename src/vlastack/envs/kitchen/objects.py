"""Graspable objects: robosuite's shipped objects plus a mug, with seed-drawn colours.

Each :class:`ObjectCategory` names the noun used in instructions, how to build the
robosuite object, and whether its footprint is round (any grasp yaw works) or elongated
(the expert closes the fingers across the object's local y axis). Sizes are read from the
compiled model, not hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlastack.types import quat_from_mujoco

from .fixtures import ASSETS

# colours drawn per episode for the primitives, and tints for the textured meshes
PALETTE = {
    "red": (0.85, 0.15, 0.12), "green": (0.2, 0.7, 0.25), "blue": (0.15, 0.35, 0.85),
    "yellow": (0.95, 0.8, 0.15), "orange": (0.95, 0.5, 0.1), "purple": (0.55, 0.25, 0.7),
    "white": (0.92, 0.92, 0.9), "black": (0.12, 0.12, 0.12),
}


@dataclass(frozen=True)
class ObjectCategory:
    """One kind of object: instruction noun, constructor and grasp geometry."""

    name: str
    noun: str
    build: Callable[[str], object]
    round: bool
    colour: str  # "rgba" (primitive, recoloured by name), "tint" (textured mesh, tinted), "fixed"
    # which resting orientations count as placed: "upright" (as authored: cans, bottles, cartons, mugs,
    # bread), "any_face" (a cube on any of its faces), "any" (a ball, a lemon: no side to stand on)
    rests: str = "upright"


def _xml_object(cls_name: str):
    def build(name: str):
        import robosuite.models.objects as objs

        return getattr(objs, cls_name)(name=name)

    return build


def _box(name: str):
    from robosuite.models.objects import BoxObject

    return BoxObject(name=name, size=[0.022, 0.022, 0.022], rgba=[0.8, 0.2, 0.2, 1], density=300,
                     friction=[1.2, 0.01, 0.001])


def _ball(name: str):
    from robosuite.models.objects import BallObject

    return BallObject(name=name, size=[0.027], rgba=[0.2, 0.4, 0.8, 1], density=200, friction=[1.2, 0.01, 0.001])


def _mug(name: str):
    from robosuite.models.objects import MujocoXMLObject

    return MujocoXMLObject(str(ASSETS / "mug.xml"), name=name, joints=[dict(type="free", damping="0.0005")],
                           obj_type="all", duplicate_collision_geoms=True)


CATEGORIES: dict[str, ObjectCategory] = {c.name: c for c in (
    ObjectCategory("can", "soda can", _xml_object("CanObject"), True, "tint"),
    ObjectCategory("bottle", "bottle", _xml_object("BottleObject"), True, "tint"),
    ObjectCategory("milk", "milk carton", _xml_object("MilkObject"), False, "fixed"),
    ObjectCategory("lemon", "lemon", _xml_object("LemonObject"), False, "fixed", rests="any"),
    ObjectCategory("bread", "bread roll", _xml_object("BreadObject"), False, "fixed"),
    ObjectCategory("cube", "cube", _box, False, "rgba", rests="any_face"),
    ObjectCategory("ball", "ball", _ball, True, "rgba", rests="any"),
    ObjectCategory("mug", "mug", _mug, True, "tint"),
)}


class KitchenObject:
    """A robosuite object in the scene plus its runtime handles (free joint, geoms, extents)."""

    def __init__(self, category: ObjectCategory, name: str, park_pos) -> None:
        from robosuite.utils.mjcf_utils import array_to_string

        self.category = category
        self.name = name
        self.model = category.build(name)
        self.park_pos = np.asarray(park_pos, dtype=float)
        self.model.get_obj().set("pos", array_to_string(self.park_pos))
        self.colour_name = None
        self._base_mat_rgba: dict[int, np.ndarray] | None = None  # the model's own colours, before any tint

    def bind(self, sim) -> None:
        """Resolve ids and measure the object's extents in its body frame."""
        import mujoco

        m, d = sim.model._model, sim.data._data
        self._m, self._d = m, d
        self.body_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, self.model.root_body)
        jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, self.model.joints[0])
        self.qpos_adr = int(m.jnt_qposadr[jid])
        self.qvel_adr = int(m.jnt_dofadr[jid])
        bodies = {self.body_id}
        for b in range(m.nbody):
            if m.body_parentid[b] in bodies:
                bodies.add(b)
        self.geom_ids = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies]
        self.collision_geoms = [g for g in self.geom_ids if m.geom_contype[g] or m.geom_conaffinity[g]]
        self.visual_geoms = [g for g in self.geom_ids if g not in self.collision_geoms]
        # extents in the body frame (objects are authored upright; geoms are not rotated away from it)
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for g in self.collision_geoms:
            c = m.geom_pos[g] + m.geom_aabb[g][:3]
            rot = np.zeros(9)
            mujoco.mju_quat2Mat(rot, m.geom_quat[g])
            half = np.abs(rot.reshape(3, 3)) @ m.geom_aabb[g][3:]
            lo, hi = np.minimum(lo, c - half), np.maximum(hi, c + half)
        self.lo, self.hi = lo, hi
        mats = {int(m.geom_matid[g]) for g in self.geom_ids if m.geom_matid[g] >= 0}
        self.material_ids = sorted(mats)
        if self._base_mat_rgba is None:  # bind() runs at every reset: keep the untinted colours
            self._base_mat_rgba = {i: m.mat_rgba[i].copy() for i in self.material_ids}

    @property
    def height(self) -> float:
        """Height of the object (m)."""
        return float(self.hi[2] - self.lo[2])

    @property
    def bottom(self) -> float:
        """Distance from the body origin down to the object's lowest point (m, positive)."""
        return float(-self.lo[2])

    @property
    def half_extent(self) -> np.ndarray:
        """Half sizes along the body's x and y axes (m)."""
        return (self.hi[:2] - self.lo[:2]) / 2

    @property
    def pos(self) -> np.ndarray:
        """World position of the body origin."""
        return self._d.xpos[self.body_id].copy()

    @property
    def quat(self) -> np.ndarray:
        """World orientation quaternion (x, y, z, w) (the code base's order; MuJoCo stores w first)."""
        return quat_from_mujoco(self._d.xquat[self.body_id])

    @property
    def yaw(self) -> float:
        """Heading of the body x axis about world z (rad)."""
        mat = self._d.xmat[self.body_id].reshape(3, 3)
        return float(np.arctan2(mat[1, 0], mat[0, 0]))

    @property
    def bottom_z(self) -> float:
        """World height of the lowest point (exact for an upright object)."""
        return float(self.pos[2] - self.bottom)

    def place(self, xy, surface_z: float, yaw: float = 0.0) -> None:
        """Put the object upright on a surface at ``xy`` with heading ``yaw``; zero its velocity."""
        qpos = self._d.qpos
        qpos[self.qpos_adr:self.qpos_adr + 3] = (xy[0], xy[1], surface_z + self.bottom + 0.002)
        qpos[self.qpos_adr + 3:self.qpos_adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        self._d.qvel[self.qvel_adr:self.qvel_adr + 6] = 0.0

    def park(self) -> None:
        """Move the object off stage (on the floor behind the robot)."""
        self.place(self.park_pos[:2], 0.0)

    def phrase(self) -> str:
        """How instructions name the object: its drawn colour (when named) and its noun."""
        return f"{self.colour_name} {self.category.noun}" if self.colour_name else self.category.noun

    def set_colour(self, rng: np.random.Generator) -> str | None:
        """Draw a colour for this episode; returns its name when it should appear in instructions."""
        kind = self.category.colour
        if kind == "rgba":
            name = list(PALETTE)[rng.integers(len(PALETTE))]
            for g in self.geom_ids:
                self._m.geom_rgba[g, :3] = PALETTE[name]
            self.colour_name = name
            return name
        if kind == "tint":
            tint = rng.uniform(0.7, 1.0, size=3)
            for i, base in self._base_mat_rgba.items():
                self._m.mat_rgba[i, :3] = base[:3] * tint
        self.colour_name = None
        return None
