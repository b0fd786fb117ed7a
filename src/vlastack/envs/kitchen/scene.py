"""The robosuite environment behind the kitchen: robot, arena, fixtures, objects, cameras.

:class:`KitchenScene` is a robosuite ``ManipulationEnv`` (Panda arm on a pedestal, OSC_POSE
controller at 20 Hz). It is built once per process and per task: every fixture of the kitchen
stands along the counter, the task's main fixture in front of the robot, and every object the
task may use is in the model (the unused ones parked behind the robot). Each reset then draws,
from the episode's seed only, the fixture placement jitter, colours, the active object and
its pose, the fixture joint states the task starts from and the arm's initial joint jitter,
so no model is recompiled between episodes (``hard_reset=False``).

Most users want :class:`vlastack.envs.kitchen.env.KitchenEnv`, the gymnasium wrapper.
"""

from __future__ import annotations

import os
from collections import OrderedDict

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402

from .fixtures import ASSETS, FIXTURE_TYPES, Fixture, resolve_asset_files  # noqa: E402
from .objects import CATEGORIES, KitchenObject  # noqa: E402

ROBOT_BASE = (-0.5, 0.0, 0.912)  # robot base on its pedestal, in front of the counter
COUNTER_TOP = 0.8  # world height of the counter surface
COUNTER_BACK = 0.42  # x of the back edge of the counter (wall side)
COUNTER_FRONT = -0.30
# fixtures along the counter, from the robot's left (+y) to its right (-y)
LAYOUT = ("coffee_machine", "microwave", "sink", "stove", "cabinet_single", "drawer", "cabinet_double")
FIXTURE_GAP = 0.45  # free counter between neighbouring fixtures
# external cameras: position and the point they look at (world frame, metres); fovy in degrees
SCENE_CAMERAS = {
    "left": dict(pos=(-0.25, 0.8, 1.7), target=(0.1, -0.1, 0.9), fovy=58.0),
    "right": dict(pos=(-0.25, -0.8, 1.7), target=(0.1, 0.1, 0.9), fovy=58.0),
}
# the same cameras pulled back and widened for a task group's shared scene (three fixtures)
GROUP_CAMERAS = {
    "left": dict(pos=(-0.2, 1.05, 1.6), target=(0.08, -0.08, 0.88), fovy=64.0),
    "right": dict(pos=(-0.2, -1.05, 1.6), target=(0.08, 0.08, 0.88), fovy=64.0),
}
STYLE_MATERIALS = {"counter": ("counter_top_mat",), "cabinets": ("base_cab_mat", "upper_cab_mat"),
                   "wall": ("wall_mat",), "floor": ("floor_mat",)}
CAMERA_NAMES = {"left": "kitchen_left", "right": "kitchen_right", "wrist": "robot0_eye_in_hand"}
ARM_GROUP = 4  # geom group of the arm's visual meshes (hidden from the wrist camera)
ARM_HULL_GROUP = 5  # geom group of the arm links' collision meshes, drawn in their place by default
ARM_HULL_RGBA = (0.88, 0.88, 0.86, 1.0)
# how the arm's links are drawn in the external cameras: "hulls" (their collision meshes,
# ~14k triangles, about 2x cheaper per camera on a CPU renderer) or "meshes" (the detailed
# visual meshes, ~127k triangles). The gripper always keeps its visual meshes.
ARM_RENDER_MODES = ("hulls", "meshes")
# arm start: grip site near (-0.18, 0, 1.22), fingers down, tucked above and behind the fixtures
INIT_QPOS = (0.0, -0.71, 0.0, -2.79, 0.0, 2.08, np.pi / 4)
ARM_JITTER = 0.04  # rad, uniform per joint at reset
FIXTURE_JITTER = ((-0.02, 0.02), (-0.04, 0.04))  # (x range, y range) in metres for the main fixture
COUNTER_COLOURS = ((0.95, 0.95, 0.95), (0.8, 0.78, 0.74), (0.55, 0.55, 0.58), (0.35, 0.33, 0.32), (0.9, 0.86, 0.78))
CABINET_COLOURS = ((1.0, 1.0, 1.0), (0.75, 0.6, 0.45), (0.55, 0.65, 0.75), (0.6, 0.72, 0.6), (0.85, 0.85, 0.85))
FIXTURE_COLOURS = ((0.93, 0.93, 0.9), (0.75, 0.78, 0.82), (0.3, 0.32, 0.35), (0.85, 0.8, 0.7), (0.6, 0.7, 0.8))


def look_at_xyaxes(pos, target) -> str:
    """MuJoCo ``xyaxes`` for a camera at ``pos`` looking at ``target`` with world z up."""
    pos, target = np.asarray(pos, float), np.asarray(target, float)
    fwd = target - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return " ".join(f"{v:.5f}" for v in (*right, *up))


def layout_positions(main: str, anchor_y: float) -> dict[str, tuple[float, float, float]]:
    """Nominal (x, y, z) of every fixture: ``main`` centred at ``anchor_y`` in front of the
    robot, the others along the counter in :data:`LAYOUT` order with :data:`FIXTURE_GAP` between."""
    order = list(LAYOUT)
    i = order.index(main)
    ys = {main: anchor_y}
    for step in (-1, 1):  # -1: fixtures listed before main go to +y; +1: after go to -y
        prev, j = main, i + step
        while 0 <= j < len(order):
            k = order[j]
            wp, wk = FIXTURE_TYPES[prev].footprint[1], FIXTURE_TYPES[k].footprint[1]
            ys[k] = ys[prev] - step * (wp / 2 + FIXTURE_GAP + wk / 2)
            prev, j = k, j + step
    return {k: (FIXTURE_TYPES[k].front_x + FIXTURE_TYPES[k].footprint[0] / 2, y, COUNTER_TOP) for k, y in ys.items()}


def _fixture_geometry():
    """(footprints, nominal front x) of every fixture kind, for group layouts."""
    return ({k: t.footprint for k, t in FIXTURE_TYPES.items()}, {k: t.front_x for k, t in FIXTURE_TYPES.items()})


def build_scene_class():
    """The :class:`KitchenScene` class (robosuite is imported only when a scene is built)."""
    global KitchenScene
    if KitchenScene is not None:
        return KitchenScene

    import mujoco
    from robosuite.controllers import load_composite_controller_config
    from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
    from robosuite.models.arenas import Arena
    from robosuite.models.tasks import ManipulationTask
    from robosuite.utils.mjcf_utils import new_element

    class KitchenArena(Arena):
        """The counter, walls, pedestal and lights of ``assets/kitchen_arena.xml``, plus cameras
        (and, for a task group's scene, every style's textures to switch between at reset)."""

        def __init__(self, group=None):
            super().__init__(str(ASSETS / "kitchen_arena.xml"))
            if group is not None:
                from .groups import STYLES

                for part, kind in (("counter", "cube"), ("cabinets", "cube"), ("wall", "2d"), ("floor", "2d")):
                    for i, style in enumerate(STYLES):
                        self.asset.append(new_element("texture", name=f"style_{part}_{i}",
                                                      file=getattr(style, part), type=kind))
                resolve_asset_files(self)
            for cam, spec in (GROUP_CAMERAS if group is not None else SCENE_CAMERAS).items():
                self.worldbody.append(new_element("camera", name=CAMERA_NAMES[cam], mode="fixed",
                                                  pos=" ".join(map(str, spec["pos"])),
                                                  xyaxes=look_at_xyaxes(spec["pos"], spec["target"]),
                                                  fovy=str(spec["fovy"])))

        def resolve_asset_dependency(self):
            resolve_asset_files(self)

    class _KitchenScene(ManipulationEnv):
        """A robosuite env for one kitchen task (see the module docstring)."""

        def __init__(self, task, render_size=(128, 128), use_renderer=True, horizon=500, arm_render="hulls",
                     group=None, split="train"):
            if arm_render not in ARM_RENDER_MODES:
                raise ValueError(f"unknown arm_render {arm_render!r}; valid: {', '.join(ARM_RENDER_MODES)}")
            self.task = task
            self.group = group  # a groups.TaskGroup: build its shared scene instead of the task's own
            self.split = split
            self.counter_zone = None  # ((x0, x1), (y0, y1)) of the free counter in a group's scene
            self.counter_drop = None  # (x, y) kept clear for putting things down, in a group's scene
            self.arm_render = arm_render
            self.render_size = tuple(render_size)
            self.episode_rng = np.random.default_rng(0)
            self.fixtures: dict[str, Fixture] = {}
            self.objects: dict[str, KitchenObject] = {}
            self.active_object: KitchenObject | None = None
            self.episode_meta: dict = {}
            controller = load_composite_controller_config(controller="BASIC", robot="Panda")
            super().__init__(
                robots="Panda", base_types="NullMount", controller_configs=controller,
                initialization_noise={"magnitude": 0.0, "type": "uniform"},
                use_camera_obs=False, has_renderer=False, has_offscreen_renderer=use_renderer,
                render_camera=None, control_freq=20, lite_physics=True, horizon=horizon,
                ignore_done=True, hard_reset=False, renderer="mujoco", camera_names=[],
            )

        # ------------------------------------------------------------ model
        def _load_model(self):
            super()._load_model()
            robot = self.robots[0]
            robot.robot_model.set_base_xpos(ROBOT_BASE)
            self.base_init_qpos = np.array(INIT_QPOS, dtype=float)
            arena = KitchenArena(self.group)
            self.fixtures = {}
            if self.group is not None:
                from .groups import LAYOUTS

                placed = self.group.positions(LAYOUTS[0], *_fixture_geometry())
                categories = self.group.object_categories
            else:
                placed = layout_positions(self.task.fixture, self.task.anchor_y)
                categories = self.task.object_categories
            for kind, pos in placed.items():
                fx = FIXTURE_TYPES[kind](kind, pos)
                arena.merge(fx.xml)
                self.fixtures[kind] = fx
            self.objects = {}
            for i, cat in enumerate(categories):
                park = (-1.6 - 0.25 * (i % 4), -0.6 + 0.3 * (i // 4), 0.1)
                self.objects[cat] = KitchenObject(CATEGORIES[cat], f"obj_{cat}", park)
            self.model = ManipulationTask(
                mujoco_arena=arena,
                mujoco_robots=[r.robot_model for r in self.robots],
                mujoco_objects=[o.model for o in self.objects.values()],
            )

        def _initialize_sim(self, xml_string=None):
            super()._initialize_sim(xml_string)
            m = self.sim.model._model
            m.vis.quality.offsamples = 0  # no MSAA: costly on a CPU renderer
            m.vis.global_.offwidth = max(self.render_size[1], 64)
            m.vis.global_.offheight = max(self.render_size[0], 64)
            m.vis.headlight.ambient[:] = 0.35
            m.vis.headlight.diffuse[:] = 0.35
            m.vis.headlight.specular[:] = 0.05

        def _setup_references(self):
            super()._setup_references()
            for fx in self.fixtures.values():
                fx.bind(self.sim)
            for obj in self.objects.values():
                obj.bind(self.sim)
            m = self.sim.model._model
            self._eef_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_right_grip_site")
            robot = self.robots[0]
            self._arm_qpos_idx = np.array(robot._ref_joint_pos_indexes)
            self._grip_qpos_idx = np.array(robot._ref_gripper_joint_pos_indexes["right"])
            gripper_bodies = {b for b in range(m.nbody)
                              if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or "").startswith("gripper0_")}
            self.gripper_geoms = np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] in gripper_bodies])
            self.robot_geoms = np.array([g for g in range(m.ngeom)
                                         if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or "")
                                         .startswith(("robot0_", "gripper0_"))])
            # the arm's links (not the gripper) go to geom group ARM_GROUP: the wrist camera looks
            # away from them, and skipping their ~140k triangles there saves most of its render time
            arm_visual = [g for g in self.robot_geoms
                          if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or "").startswith("robot0_")
                          and m.geom_group[g] == 1]
            m.geom_group[arm_visual] = ARM_GROUP
            # their collision meshes (group 0, hidden by robosuite) get a group and a colour of
            # their own, so the external cameras can draw them instead (see ARM_RENDER_MODES)
            arm_hulls = [g for g in self.robot_geoms
                         if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or "").startswith("robot0_")
                         and m.geom_group[g] == 0]
            m.geom_group[arm_hulls] = ARM_HULL_GROUP
            m.geom_rgba[arm_hulls] = ARM_HULL_RGBA

        def _setup_observables(self):
            # observations are assembled by the gymnasium wrapper straight from the sim
            return OrderedDict()

        # ------------------------------------------------------------ reset
        def _reset_internal(self):
            rng = self.episode_rng
            robot = self.robots[0]
            robot.init_qpos = self.base_init_qpos + rng.uniform(-ARM_JITTER, ARM_JITTER, size=7)
            super()._reset_internal()
            ctx = self.sim._render_context_offscreen
            if ctx is not None:
                ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
            m = self.sim.model._model
            if self.group is not None:
                self._reset_group(rng)
                return
            # colours of the kitchen
            counter = COUNTER_COLOURS[rng.integers(len(COUNTER_COLOURS))]
            cabinets = CABINET_COLOURS[rng.integers(len(CABINET_COLOURS))]
            for mat, rgb in (("counter_top_mat", counter), ("base_cab_mat", cabinets), ("upper_cab_mat", cabinets)):
                m.mat_rgba[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, mat), :3] = rgb
            for kind, fx in self.fixtures.items():
                fx.tint(FIXTURE_COLOURS[rng.integers(len(FIXTURE_COLOURS))])
                if kind == self.task.fixture:
                    (x0, x1), (y0, y1) = FIXTURE_JITTER
                    fx.set_offset((rng.uniform(x0, x1), rng.uniform(y0, y1), 0.0))
                else:
                    fx.set_offset((0.0, 0.0, 0.0))
                fx.reset_state()
            for obj in self.objects.values():
                obj.park()
            self.active_object = None
            self.sim.forward()
            self.episode_meta = self.task.setup_episode(self, rng)
            self.sim.forward()
            for fx in self.fixtures.values():
                fx.update()

        def _reset_group(self, rng):
            """A task group's shared start state: everything drawn here is the same for every
            task of the group (the draws never depend on the task); only the instruction,
            drawn last, does."""
            from .groups import FIXTURE_JITTER as GROUP_JITTER
            from .groups import draw_variation

            group = self.group
            layout, style = draw_variation(rng, self.split)
            self._apply_style(style, rng)
            footprints, front_x = _fixture_geometry()
            nominal = group.positions(layout, footprints, front_x)
            for kind, fx in self.fixtures.items():
                jx, jy = rng.uniform(-GROUP_JITTER, GROUP_JITTER, 2)
                if kind == group.wall:
                    jx = -abs(jx)  # never into the wall
                fx.set_offset(np.asarray(nominal[kind]) - fx.nominal_pos + (jx, jy, 0.0))
                fx.tint(style.finish)
                fx.reset_state()
            for obj in self.objects.values():
                obj.park()
            self.active_object = None
            self.counter_zone = group.counter_zone(layout, footprints)
            self.counter_drop = None
            self.sim.forward()
            shared = group.setup(self, rng)
            self.sim.forward()
            for fx in self.fixtures.values():
                fx.update()
            words = {k: v for k, v in shared.items() if k not in ("active", "names", "distractors")}
            active = shared["active"].get(self.task.name)
            if active is not None:
                self.active_object = self.objects[active]
                words.update(obj=shared["names"][active], obj_category=active)
            words["fixture"] = self.main_fixture.label
            template = self.task.templates[int(rng.integers(len(self.task.templates)))]
            self.episode_meta = dict(words, group=group.name, layout=layout.name, style=style.name,
                                     objects=dict(shared["names"]), distractors=list(shared["distractors"]),
                                     instruction=template.format(**words))

        def _apply_style(self, style, rng):
            """Switch the arena's textures and lights to ``style`` (lights jittered +-10%)."""
            from .groups import STYLES

            m = self.sim.model._model
            i = STYLES.index(style)
            rgb = int(mujoco.mjtTextureRole.mjTEXROLE_RGB)
            n_roles = m.mat_texid.shape[1]
            # the renderer keeps its own copy of the material -> texture table (made with the context)
            ctx = self.sim._render_context_offscreen
            for part, mats in STYLE_MATERIALS.items():
                tex = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_TEXTURE, f"style_{part}_{i}")
                for mat in mats:
                    mid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, mat)
                    m.mat_texid[mid, rgb] = tex
                    if ctx is not None:
                        ctx.con.mat_texid[mid * n_roles + rgb] = tex
                    m.mat_rgba[mid, :3] = 1.0
            if not hasattr(self, "_base_light"):
                self._base_light = m.light_diffuse.copy()
            m.light_diffuse[:] = self._base_light * style.light * rng.uniform(0.9, 1.1)

        def _post_action(self, action):
            for fx in self.fixtures.values():
                fx.update()
            return super()._post_action(action)

        def reward(self, action=None):
            """Sparse reward: 1 when the task predicate holds."""
            return float(self._check_success())

        def _check_success(self):
            return bool(self.task.success(self))

        # ------------------------------------------------------------ helpers
        @property
        def main_fixture(self) -> Fixture:
            """The fixture the task is about."""
            return self.fixtures[self.task.fixture]

        @property
        def eef_pos(self) -> np.ndarray:
            """World position of the grip site between the fingertips."""
            return self.sim.data._data.site_xpos[self._eef_site].copy()

        @property
        def eef_mat(self) -> np.ndarray:
            """World orientation (3x3) of the grip site: z along the fingers, x across them."""
            return self.sim.data._data.site_xmat[self._eef_site].reshape(3, 3).copy()

        @property
        def arm_qpos(self) -> np.ndarray:
            """The 7 arm joint angles (rad)."""
            return self.sim.data._data.qpos[self._arm_qpos_idx].copy()

        @property
        def gripper_qpos(self) -> np.ndarray:
            """The 2 finger joint positions (m)."""
            return self.sim.data._data.qpos[self._grip_qpos_idx].copy()

        def contacts_between(self, geoms_a, geoms_b) -> bool:
            """Whether any geom of ``geoms_a`` touches any geom of ``geoms_b``."""
            d = self.sim.data._data
            if d.ncon == 0:
                return False
            pairs = d.contact.geom[: d.ncon]
            a, b = np.isin(pairs, geoms_a), np.isin(pairs, geoms_b)
            return bool(np.any((a[:, 0] & b[:, 1]) | (a[:, 1] & b[:, 0])))

        def gripper_touches(self, obj: KitchenObject) -> bool:
            """Whether any gripper geom touches ``obj``."""
            return self.contacts_between(self.gripper_geoms, obj.collision_geoms)

        def render_image(self, camera: str, height: int, width: int, segmentation: bool = False) -> np.ndarray:
            """An upright uint8 (H, W, 3) image from one of :data:`CAMERA_NAMES`; with
            ``segmentation`` an int32 (H, W) map of geom ids instead (-1: background)."""
            ctx = self.sim._render_context_offscreen
            external = camera != "wrist"
            ctx.vopt.geomgroup[ARM_GROUP] = int(external and self.arm_render == "meshes")
            ctx.vopt.geomgroup[ARM_HULL_GROUP] = int(external and self.arm_render == "hulls")
            img = self.sim.render(camera_name=CAMERA_NAMES[camera], width=width, height=height,
                                  segmentation=segmentation)
            if segmentation:
                ids = np.where(img[..., 0] == mujoco.mjtObj.mjOBJ_GEOM, img[..., 1], -1)
                return np.ascontiguousarray(ids[::-1])
            return np.ascontiguousarray(img[::-1])  # OpenGL rows run bottom-up

    KitchenScene = _KitchenScene
    return KitchenScene


KitchenScene = None
