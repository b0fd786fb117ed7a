"""Kitchen fixtures: MJCF files under ``assets/`` wrapped with their joints, sites and state.

Each fixture file describes one piece of furniture standing on the counter, its origin at
the bottom centre of its footprint and its front facing -x (toward the robot). A
:class:`Fixture` loads the file, prefixes every name with ``<name>_`` so several fixtures can
share a scene, places it, and after the simulation is built reads and writes its joints
(door angles, drawer travel, knob angles, button travel) and keeps its on-indicators
(burner colour, water stream, microwave lamp, coffee light) in step with the joints.

Placement jitter happens at reset by moving the fixture's root body in ``model.body_pos``,
so one compiled model serves every episode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

ASSETS = Path(__file__).parent / "assets"


def _robosuite_assets() -> str:
    import robosuite

    return os.path.join(os.path.dirname(robosuite.__file__), "models", "assets")


def resolve_asset_files(mjxml) -> None:
    """Make the ``file`` attributes of an MJCF's assets absolute: next to the XML when the file
    is there, else in robosuite's shipped assets."""
    shipped = _robosuite_assets()
    for node in mjxml.asset.findall("./*[@file]"):
        rel = node.get("file")
        local = os.path.join(os.path.abspath(mjxml.folder), rel)
        node.set("file", local if os.path.exists(local) else os.path.join(shipped, rel))


def load_xml(filename: str):
    """Load an MJCF file from ``assets/`` as a robosuite ``MujocoXML``.

    Texture files that are not next to the XML are taken from robosuite's shipped assets
    (``textures/light-wood.png`` and friends), so no image files live in this repo.
    """
    from robosuite.models.base import MujocoXML

    class _KitchenXML(MujocoXML):
        def resolve_asset_dependency(self):
            resolve_asset_files(self)

    path = ASSETS / filename
    if not path.exists():
        raise FileNotFoundError(f"kitchen asset {filename!r} not found in {ASSETS}")
    return _KitchenXML(str(path))


def rot_z(angle: float) -> np.ndarray:
    """3x3 rotation about world z by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class HingeDoor:
    """A door on a vertical hinge: its joint, body and handle site (unprefixed names).

    ``axis_sign`` is the z component of the joint axis: -1 for a door hinged on its left
    (+y) edge, +1 for one hinged on its right (-y) edge. Both open toward -x.
    """

    joint: str
    body: str
    handle: str
    axis_sign: float


class Fixture:
    """One fixture instance: its MJCF, its place on the counter and its runtime state.

    Subclasses set ``xml_file``, ``label`` (the noun used in instructions), ``footprint``
    (depth along x, width along y, height in metres) and the names of their joints and sites.
    """

    xml_file: ClassVar[str] = ""
    label: ClassVar[str] = ""
    footprint: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)
    front_x: ClassVar[float] = 0.0  # nominal world x of the front face (the robot base is at x = -0.5)
    tint_materials: ClassVar[tuple[str, ...]] = ("body_mat",)

    def __init__(self, name: str, pos) -> None:
        from robosuite.utils.mjcf_utils import add_prefix, array_to_string

        self.name = name
        self.prefix = f"{name}_"
        self.xml = load_xml(self.xml_file)
        add_prefix(self.xml.root, self.prefix)
        self.root = self.xml.worldbody.find("./body")
        self.nominal_pos = np.asarray(pos, dtype=float)
        self.root.set("pos", array_to_string(self.nominal_pos))
        self.sim = None

    # ----------------------------------------------------------------- binding
    def bind(self, sim) -> None:
        """Resolve ids once the simulation exists (called after every model compile)."""
        import mujoco

        self.sim = sim
        self._m = sim.model._model
        self._d = sim.data._data
        self._mj = mujoco
        self.root_id = self._id(mujoco.mjtObj.mjOBJ_BODY, "root")

    def _id(self, kind, name: str) -> int:
        idx = self._mj.mj_name2id(self._m, kind, self.prefix + name)
        if idx < 0:
            raise KeyError(f"fixture {self.name!r} has no element {name!r}")
        return idx

    # -------------------------------------------------------------- placement
    def set_offset(self, delta) -> None:
        """Move the whole fixture by ``delta`` (x, y, z) metres from its nominal place."""
        self._m.body_pos[self.root_id] = self.nominal_pos + np.asarray(delta, dtype=float)

    @property
    def pos(self) -> np.ndarray:
        """Current world position of the fixture origin (bottom centre of the footprint)."""
        return self._m.body_pos[self.root_id].copy()

    def tint(self, rgb) -> None:
        """Recolour the fixture's body materials (a seed-drawn colour per episode)."""
        for mat in self.tint_materials:
            mid = self._id(self._mj.mjtObj.mjOBJ_MATERIAL, mat)
            self._m.mat_rgba[mid, :3] = rgb

    # ------------------------------------------------------------------ joints
    def joint_range(self, joint: str) -> tuple[float, float]:
        """(low, high) limits of a joint."""
        jid = self._id(self._mj.mjtObj.mjOBJ_JOINT, joint)
        lo, hi = self._m.jnt_range[jid]
        return float(lo), float(hi)

    def qpos(self, joint: str) -> float:
        """Current position of a one-dof joint (rad or m)."""
        jid = self._id(self._mj.mjtObj.mjOBJ_JOINT, joint)
        return float(self._d.qpos[self._m.jnt_qposadr[jid]])

    def set_qpos(self, joint: str, value: float) -> None:
        """Set a one-dof joint's position (clipped to its range) and zero its velocity."""
        jid = self._id(self._mj.mjtObj.mjOBJ_JOINT, joint)
        lo, hi = self._m.jnt_range[jid]
        self._d.qpos[self._m.jnt_qposadr[jid]] = float(np.clip(value, lo, hi))
        self._d.qvel[self._m.jnt_dofadr[jid]] = 0.0

    def site(self, name: str) -> np.ndarray:
        """World position of a site."""
        return self._d.site_xpos[self._id(self._mj.mjtObj.mjOBJ_SITE, name)].copy()

    def site_local(self, name: str) -> np.ndarray:
        """A site's position in its parent body's frame."""
        return self._m.site_pos[self._id(self._mj.mjtObj.mjOBJ_SITE, name)].copy()

    def body_xpos(self, name: str) -> np.ndarray:
        """World position of a body's frame."""
        return self._d.xpos[self._id(self._mj.mjtObj.mjOBJ_BODY, name)].copy()

    def geom_ids(self) -> list[int]:
        """Ids of every geom of this fixture (for contact queries)."""
        bodies = {self.root_id}
        for b in range(self._m.nbody):
            if self._m.body_parentid[b] in bodies:
                bodies.add(b)
        return [g for g in range(self._m.ngeom) if self._m.geom_bodyid[g] in bodies]

    def _set_rgba(self, geom: str, rgba) -> None:
        self._m.geom_rgba[self._id(self._mj.mjtObj.mjOBJ_GEOM, geom)] = rgba

    # ------------------------------------------------------------------- state
    def reset_state(self) -> None:
        """Forget latched state (e.g. an appliance switched on) at the start of an episode."""

    def update(self) -> None:
        """Refresh latched state and on-indicators from the joints (after every control step)."""

    # ------------------------------------------------------------------- doors
    def door_point(self, door: HingeDoor, angle: float, local) -> np.ndarray:
        """World position of a point fixed on ``door`` (``local`` in the door body's frame)
        when the door is at ``angle`` radians. Fixtures are never rotated, so the door frame
        is the world frame turned about z by ``axis_sign * angle``."""
        hinge = self.body_xpos(door.body)
        return hinge + rot_z(door.axis_sign * angle) @ np.asarray(local, dtype=float)


class Drawer(Fixture):
    """Countertop drawer unit with one sliding drawer (joint ``slide``, 0 .. 0.18 m)."""

    xml_file = "drawer.xml"
    label = "drawer"
    footprint = (0.36, 0.40, 0.26)
    front_x = 0.0
    tint_materials = ("body_mat", "front_mat")

    @property
    def opening(self) -> float:
        """How far the drawer is pulled out, as a fraction of its travel (0 closed, 1 open)."""
        lo, hi = self.joint_range("slide")
        return (self.qpos("slide") - lo) / (hi - lo)


class SingleCabinet(Fixture):
    """Cabinet with one door hinged on its left edge (joint ``door``, 0 .. 1.75 rad)."""

    xml_file = "cabinet_single.xml"
    label = "cabinet"
    footprint = (0.34, 0.36, 0.46)
    front_x = 0.0
    tint_materials = ("body_mat", "door_mat")
    doors = (HingeDoor("door", "door", "handle", -1.0),)
    interior_half = (0.13, 0.13)  # usable half extents of the interior floor (x, y)
    floor_height = 0.03


class DoubleCabinet(Fixture):
    """Cabinet with two doors meeting in the middle (joints ``door_left``, ``door_right``)."""

    xml_file = "cabinet_double.xml"
    label = "cabinet"
    footprint = (0.34, 0.60, 0.40)
    front_x = 0.0
    tint_materials = ("body_mat", "door_mat")
    doors = (HingeDoor("door_left", "door_left", "handle_left", -1.0),
             HingeDoor("door_right", "door_right", "handle_right", 1.0))


class Sink(Fixture):
    """Sink with a faucet lever (joint ``handle``) and a swivel spout (joint ``spout``)."""

    xml_file = "sink.xml"
    label = "sink"
    footprint = (0.42, 0.56, 0.14)
    front_x = -0.15
    tint_materials = ("body_mat",)
    water_on_angle = 0.4  # lever angle (rad) above which water runs
    basin_half = (0.12, 0.22)  # usable half extents of the basin floor (x, y)
    rim_height = 0.14

    @property
    def water_on(self) -> bool:
        """Whether the faucet lever is turned far enough for water to run."""
        return self.qpos("handle") > self.water_on_angle

    def update(self) -> None:
        self._set_rgba("water", (0.55, 0.75, 1.0, 0.65 if self.water_on else 0.0))


class Stove(Fixture):
    """Cooktop with four burners, each switched by its knob (joints ``knob_<burner>``)."""

    xml_file = "stove.xml"
    label = "stove"
    footprint = (0.46, 0.60, 0.06)
    front_x = -0.2
    tint_materials = ("body_mat",)
    burners = ("front_left", "front_right", "back_left", "back_right")
    on_angle = 0.35  # knob angle (rad) above which a burner is on
    top_height = 0.06

    def burner_on(self, burner: str) -> bool:
        """Whether ``burner``'s knob is turned past :attr:`on_angle`."""
        return self.qpos(f"knob_{burner}") > self.on_angle

    def update(self) -> None:
        for b in self.burners:
            self._set_rgba(f"burner_{b}", (0.95, 0.3, 0.08, 1.0) if self.burner_on(b) else (0.3, 0.3, 0.3, 1.0))


class Microwave(Fixture):
    """Microwave with a hinged door and start / stop push buttons; ``on`` is latched.

    Pressing start (button travel above :attr:`press_depth`) with the door closed turns it
    on; pressing stop or opening the door turns it off.
    """

    xml_file = "microwave.xml"
    label = "microwave"
    footprint = (0.38, 0.52, 0.42)
    front_x = -0.03
    tint_materials = ("body_mat", "door_mat")
    doors = (HingeDoor("door", "door", "handle", -1.0),)
    press_depth = 0.006
    closed_angle = 0.05
    interior_half = (0.1, 0.1)
    floor_height = 0.026

    def __init__(self, name: str, pos) -> None:
        super().__init__(name, pos)
        self.on = False

    def reset_state(self) -> None:
        self.on = False

    def update(self) -> None:
        door_closed = self.qpos("door") < self.closed_angle
        if self.qpos("stop_button") > self.press_depth or not door_closed:
            self.on = False
        elif self.qpos("start_button") > self.press_depth:
            self.on = True
        self._set_rgba("light", (1.0, 0.85, 0.4, 1.0) if self.on else (0.3, 0.3, 0.3, 1.0))
        self._set_rgba("display", (0.2, 0.95, 0.3, 1.0) if self.on else (0.05, 0.08, 0.05, 1.0))


class CoffeeMachine(Fixture):
    """Coffee machine with a push button on top (joint ``button``) and a mug spot; ``on`` is latched."""

    xml_file = "coffee_machine.xml"
    label = "coffee machine"
    footprint = (0.34, 0.26, 0.56)
    front_x = 0.0
    tint_materials = ("body_mat",)
    press_depth = 0.006
    spot_radius = 0.04  # a mug whose centre is this close to the spot counts as under the nozzle

    def __init__(self, name: str, pos) -> None:
        super().__init__(name, pos)
        self.on = False

    def reset_state(self) -> None:
        self.on = False

    def update(self) -> None:
        if self.qpos("button") > self.press_depth:
            self.on = True
        self._set_rgba("light", (0.3, 1.0, 0.4, 1.0) if self.on else (0.25, 0.25, 0.25, 1.0))


FIXTURE_TYPES: dict[str, type[Fixture]] = {
    "drawer": Drawer,
    "cabinet_single": SingleCabinet,
    "cabinet_double": DoubleCabinet,
    "sink": Sink,
    "stove": Stove,
    "microwave": Microwave,
    "coffee_machine": CoffeeMachine,
}
