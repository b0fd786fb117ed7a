"""Task groups: shared kitchen scenes in which only the instruction says which task is meant.

A single-task scene (``scene="single"``) puts the task's fixture in front of the robot in the
state the task starts from, so the image alone tells the task. A **task group** is one counter
section with three fixtures within the arm's reach and in view of the ``left`` / ``right``
cameras: a fixture on the counter to the robot's left, a wall cabinet over a free stretch of
counter straight ahead (where the objects stand), and a fixture on the counter to its right.
For a seed, every task of a group starts from the **same simulator state** (same layout, style,
fixture joints, objects and arm pose); only the instruction differs. Objects include 1-2
distractors of other categories, so "pick the X" needs the X named.

Groups (left | over the free counter | right):

- ``sink_stove``: sink | single wall cabinet (closed) | stove (all burners off)
- ``coffee_microwave``: microwave (closed, off) | double wall cabinet (closed) | coffee machine
  (a mug under the nozzle)
- ``pantry``: microwave (open, an object inside) | single wall cabinet (closed) | drawer (open)

Variation is a pure function of the seed: a layout (:data:`LAYOUTS`: width of the free
counter, height of the wall cabinet, lateral shift of the section), a style (:data:`STYLES`:
textures of counter top, cabinets, wall and floor from robosuite's shipped set, a fixture
finish, a light level), per-fixture placement jitter, object choice, colours and poses.
``split="train"`` draws only (layout, style) pairs off the held-out ones; ``split="heldout"``
only those (:func:`split_pairs`): every pair that uses the last layout or the last style.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .tasks import SMALL, MicrowaveRegion

COUNTER_Z = 0.8
# where objects stand in front of the wall cabinet (x range, world metres); y comes from the layout
ZONE_X = (-0.17, -0.05)  # nearer the robot the arm cannot get its hand down to the counter accurately
ZONE_MARGIN = 0.085  # objects stay this far inside the free section: the open hand is ~0.2 m wide
OBJECT_GAP = 0.12  # between object centres on the counter: nearer, the open fingers land on a neighbour
FIXTURE_JITTER = 0.015  # +- metres per fixture and axis (x, y), drawn per episode
WALL_BACK_X = 0.42  # wall cabinets hang with their back against the wall
SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class Layout:
    """Geometry of a group's counter section."""

    name: str
    counter: float  # width (y) of the free counter straight ahead, m (at least the wall cabinet's)
    wall_z: float  # height of the wall cabinet's bottom above the counter top, m (its door swings
    #                over the objects standing in front of it)
    shift: float  # lateral shift of the whole section, m (+: to the robot's left)
    gap: float  # free counter between the section's middle and each side fixture, m


LAYOUTS: tuple[Layout, ...] = (
    Layout("narrow-low", 0.38, 0.16, 0.00, 0.01),
    Layout("narrow-high", 0.38, 0.21, 0.02, 0.02),
    Layout("medium-low", 0.40, 0.17, -0.02, 0.01),
    Layout("medium-high", 0.40, 0.22, 0.00, 0.02),
    Layout("wide-low", 0.42, 0.16, 0.01, 0.01),
    Layout("wide-high", 0.42, 0.20, -0.01, 0.02),
)


@dataclass(frozen=True)
class Style:
    """Look of a kitchen: textures (robosuite's shipped PNGs), fixture finish, light level."""

    name: str
    counter: str  # texture file for the counter top (cube mapping)
    cabinets: str  # texture file for base and wall cabinets (cube mapping)
    wall: str  # texture file for the walls (2-D, repeated)
    floor: str  # texture file for the floor (2-D, repeated)
    finish: tuple[float, float, float]  # fixture body colour (metal finishes and enamels)
    light: float  # scale of the scene lights


STYLES: tuple[Style, ...] = (
    Style("ceramic-oak", "textures/ceramic.png", "textures/light-wood.png", "textures/white-plaster.png",
          "textures/wood-tiles.png", (0.93, 0.93, 0.9), 1.0),
    Style("steel-walnut", "textures/steel-brushed.png", "textures/dark-wood.png", "textures/cream-plaster.png",
          "textures/light-gray-floor-tile.png", (0.75, 0.77, 0.8), 0.9),
    Style("stone-blue", "textures/gray-plaster.png", "textures/blue-wood.png", "textures/white-bricks.png",
          "textures/gray-felt.png", (0.3, 0.32, 0.35), 1.1),
    Style("tile-cherry", "textures/light-gray-floor-tile.png", "textures/red-wood.png",
          "textures/light-gray-plaster.png", "textures/wood-varnished-panels.png", (0.85, 0.8, 0.7), 0.95),
    Style("clay-sage", "textures/clay.png", "textures/green-wood.png", "textures/yellow-plaster.png",
          "textures/dark-wood.png", (0.6, 0.7, 0.8), 1.05),
    Style("brick-grey", "textures/white-bricks.png", "textures/gray-woodgrain.png", "textures/pink-plaster.png",
          "textures/clay.png", (0.45, 0.4, 0.35), 0.85),
    Style("metal-panels", "textures/metal.png", "textures/wood-varnished-panels.png",
          "textures/gray-plaster.png", "textures/red-wood.png", (0.8, 0.6, 0.3), 1.15),
)


def split_pairs(split: str) -> list[tuple[int, int]]:
    """(layout index, style index) pairs of a split: ``heldout`` is every pair using the last
    layout or the last style; ``train`` the rest; ``all`` both."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    pairs = [(i, j) for i in range(len(LAYOUTS)) for j in range(len(STYLES))]
    held = [(i, j) for i, j in pairs if i == len(LAYOUTS) - 1 or j == len(STYLES) - 1]
    if split == "heldout":
        return held
    if split == "train":
        return [p for p in pairs if p not in held]
    return pairs


@dataclass(frozen=True)
class TaskGroup:
    """One shared scene: its fixtures, its tasks and the set-up every task starts from."""

    name: str
    tasks: tuple[str, ...]
    left: str  # fixture kind on the counter to the robot's left
    wall: str  # wall cabinet kind over the free counter
    right: str  # fixture kind on the counter to the robot's right
    object_categories: tuple[str, ...]  # every object the scene holds (unused ones parked)
    setup: Callable[[object, np.random.Generator], dict]  # fixture states and objects -> shared words
    description: str = ""
    offset: float = 0.0  # y of the section's middle before the layout's shift (toward the harder side)
    forward: float = 0.0  # the side fixtures stand this much nearer the counter's front edge (m)

    @property
    def fixture_kinds(self) -> tuple[str, str, str]:
        """The group's fixtures: left, wall, right."""
        return (self.left, self.wall, self.right)

    def positions(self, layout: Layout, footprints: dict[str, tuple[float, float, float]],
                  front_x: dict[str, float]) -> dict[str, tuple[float, float, float]]:
        """Nominal (x, y, z) of each fixture's origin (bottom centre of its footprint)."""
        d_wall, w_wall, _ = footprints[self.wall]
        half = max(layout.counter, w_wall + 0.02) / 2
        wl, wr = footprints[self.left][1], footprints[self.right][1]
        mid = self.offset + layout.shift
        fwd = self.forward
        return {
            self.left: (front_x[self.left] - fwd + footprints[self.left][0] / 2, mid + half + layout.gap + wl / 2,
                        COUNTER_Z),
            self.wall: (WALL_BACK_X - d_wall / 2, mid, COUNTER_Z + layout.wall_z),
            self.right: (front_x[self.right] - fwd + footprints[self.right][0] / 2, mid - half - layout.gap - wr / 2,
                         COUNTER_Z),
        }

    def counter_zone(self, layout: Layout, footprints) -> tuple[tuple[float, float], tuple[float, float]]:
        """(x range, y range) of the free counter where objects stand."""
        half = max(layout.counter, footprints[self.wall][1] + 0.02) / 2
        mid = self.offset + layout.shift
        return ZONE_X, (mid - half + ZONE_MARGIN, mid + half - ZONE_MARGIN)


# ------------------------------------------------------------------------------ set-up helpers
def place_on_counter(scene, rng: np.random.Generator, categories, keep_clear=(), required: int = 1) -> dict[str, str]:
    """Stand objects of ``categories`` on the free counter, apart from each other and from the
    ``keep_clear`` points; returns category -> instruction phrase (colour + noun) of those placed.

    The first ``required`` must find a spot (else ``RuntimeError``); a later one (a distractor)
    that finds none in 400 draws stays parked, so a narrow layout holds fewer distractors."""
    (x0, x1), (y0, y1) = scene.counter_zone
    taken = [np.asarray(p, float) for p in keep_clear]
    names = {}
    for i, cat in enumerate(categories):
        obj = scene.objects[cat]
        obj.set_colour(rng)
        for _ in range(400):
            xy = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
            if all(np.linalg.norm(xy - p) >= OBJECT_GAP for p in taken):
                break
        else:
            if i < required:
                raise RuntimeError(f"no free counter spot for the {cat} in {scene.counter_zone}")
            continue
        taken.append(xy)
        obj.place(xy, COUNTER_Z, yaw=rng.uniform(-np.pi / 4, np.pi / 4))
        names[cat] = obj.phrase()
    return names


def _draw_objects(rng, pool, n_targets: int, most: int = 2) -> tuple[list[str], list[str]]:
    """``n_targets`` distinct categories from ``pool`` and 1 to ``most`` distractors from the rest."""
    cats = list(rng.permutation(pool))
    targets, rest = cats[:n_targets], cats[n_targets:]
    k = int(rng.integers(1, min(most, len(rest)) + 1))
    return [str(c) for c in targets], [str(c) for c in rest[:k]]


def _doors(fx, rng, opened: bool) -> None:
    for door in fx.doors:
        fx.set_qpos(door.joint, rng.uniform(1.5, 1.7) if opened else rng.uniform(0.0, 0.05))


def _drop_spot(scene, rng) -> np.ndarray:
    """A free counter point for tasks that put something down on the counter (kept clear)."""
    (x0, x1), (y0, y1) = scene.counter_zone
    side = rng.choice([-1.0, 1.0])
    y = (y1 - 0.02) if side > 0 else (y0 + 0.02)
    return np.array([(x0 + x1) / 2, y])


def setup_sink_stove(scene, rng) -> dict:
    """Sink off (spout anywhere), all burners off, wall cabinet closed; a target object and
    1-2 distractors on the counter. One of the two front burners is named."""
    sink, stove, cab = scene.fixtures["sink"], scene.fixtures["stove"], scene.fixtures["cabinet_single"]
    sink.set_qpos("handle", 0.0)
    sink.set_qpos("spout", rng.uniform(-0.2, 0.2))
    for b in stove.burners:
        stove.set_qpos(f"knob_{b}", 0.0)
    # the named burner is a front one: the back burners of a stove this far to the side are out of
    # the expert's reach for a placement (PnPCounterToStove 14/20 with all four)
    front = [b for b in stove.burners if b.startswith("front")]
    burner = str(front[int(rng.integers(len(front)))])
    _doors(cab, rng, opened=False)
    (target,), distractors = _draw_objects(rng, SMALL, 1)
    names = place_on_counter(scene, rng, [target, *distractors], required=2)
    distractors = [c for c in distractors if c in names]
    return {"burner_id": burner, "burner": burner.replace("_", " "),
            "active": {"PnPCounterToSink": target, "PnPCounterToStove": target},
            "names": names, "distractors": distractors}


def setup_coffee_microwave(scene, rng) -> dict:
    """Microwave closed and off, double wall cabinet closed, a mug under the coffee nozzle,
    1-2 distractors on the counter and a clear spot to serve the mug to."""
    mw, cab, cm = scene.fixtures["microwave"], scene.fixtures["cabinet_double"], scene.fixtures["coffee_machine"]
    mw.set_qpos("door", 0.0)
    mw.on = False
    _doors(cab, rng, opened=False)
    mug = scene.objects["mug"]
    spot = cm.site("mug_spot")
    mug.place(spot[:2] + rng.uniform(-0.01, 0.01, 2), spot[2], yaw=rng.uniform(-0.5, 0.5))
    mug.set_colour(rng)
    scene.counter_drop = _drop_spot(scene, rng)
    _, distractors = _draw_objects(rng, SMALL, 0)
    names = place_on_counter(scene, rng, distractors, keep_clear=[scene.counter_drop])
    distractors = [c for c in distractors if c in names]
    names["mug"] = "mug"
    return {"active": {"CoffeePressButton": "mug", "CoffeeServeMug": "mug"}, "names": names,
            "distractors": distractors}


def setup_pantry(scene, rng) -> dict:
    """Microwave open with one object inside, drawer open, wall cabinet closed; a second object
    and a distractor on the counter, and a clear spot to put things down."""
    mw, cab, drawer = scene.fixtures["microwave"], scene.fixtures["cabinet_single"], scene.fixtures["drawer"]
    _doors(mw, rng, opened=True)
    mw.on = False
    _doors(cab, rng, opened=False)
    drawer.set_qpos("slide", rng.uniform(0.12, 0.18))
    (on_counter, inside), distractors = _draw_objects(rng, SMALL, 2, most=1)  # + the one inside
    obj = scene.objects[inside]
    obj.set_colour(rng)
    region = MicrowaveRegion()
    obj.place(region.sample(scene, rng), region.surface(scene), yaw=rng.uniform(-np.pi / 4, np.pi / 4))
    scene.counter_drop = _drop_spot(scene, rng)
    names = place_on_counter(scene, rng, [on_counter, *distractors], keep_clear=[scene.counter_drop])
    distractors = [c for c in distractors if c in names]
    names[inside] = obj.phrase()
    return {"active": {"PnPCounterToMicrowave": on_counter, "PnPMicrowaveToCounter": inside},
            "names": names, "distractors": distractors}


GROUP_SPECS: dict[str, TaskGroup] = {g.name: g for g in (
    TaskGroup("sink_stove",
              # (TurnSinkSpout is left out: its expert cannot reach above the spout of a sink this far
              # to the side, 4/8 in a trial)
              ("OpenSingleDoor", "TurnOnSinkFaucet", "TurnOnStove", "PnPCounterToSink", "PnPCounterToStove"),
              left="sink", wall="cabinet_single", right="stove", object_categories=SMALL,
              setup=setup_sink_stove, description="sink | wall cabinet over the counter | stove",
              offset=-0.05, forward=0.06),
    TaskGroup("coffee_microwave",
              ("TurnOnMicrowave", "CoffeePressButton", "CoffeeServeMug", "OpenDoubleDoor"),
              left="microwave", wall="cabinet_double", right="coffee_machine",
              object_categories=(*SMALL, "mug"), setup=setup_coffee_microwave,
              description="microwave | double wall cabinet over the counter | coffee machine",
              offset=0.04, forward=0.08),
    TaskGroup("pantry",
              ("PnPCounterToMicrowave", "PnPMicrowaveToCounter", "CloseDrawer", "OpenSingleDoor"),
              left="microwave", wall="cabinet_single", right="drawer", object_categories=SMALL,
              setup=setup_pantry, description="open microwave | wall cabinet over the counter | open drawer"),
)}

TASK_GROUPS: dict[str, tuple[str, ...]] = {name: g.tasks for name, g in GROUP_SPECS.items()}
"""Task group name -> the RoboCasa task names that share its scene."""

SCENES = ("single", "group")


def groups_of(task: str) -> list[str]:
    """Names of the groups whose shared scene holds ``task`` (may be empty)."""
    return [name for name, tasks in TASK_GROUPS.items() if task in tasks]


def resolve_group(task: str, group: str | None) -> TaskGroup:
    """The group a task runs in with ``scene="group"``: ``group`` when given (checked), else the
    first group listing the task. Raises ``ValueError`` naming the valid choices."""
    if group is not None:
        if group not in GROUP_SPECS:
            raise ValueError(f"unknown task group {group!r}; valid groups: {', '.join(GROUP_SPECS)}")
        if task not in GROUP_SPECS[group].tasks:
            raise ValueError(f"task {task!r} is not in task group {group!r}; its tasks: "
                             f"{', '.join(GROUP_SPECS[group].tasks)}")
        return GROUP_SPECS[group]
    found = groups_of(task)
    if not found:
        valid = sorted({t for ts in TASK_GROUPS.values() for t in ts})
        raise ValueError(f"task {task!r} has no shared scene (scene='group'); tasks in task groups: "
                         f"{', '.join(valid)} (or use scene='single')")
    return GROUP_SPECS[found[0]]


def draw_variation(rng: np.random.Generator, split: str) -> tuple[Layout, Style]:
    """The episode's (layout, style), drawn from ``split``'s pairs."""
    pairs = split_pairs(split)
    i, j = pairs[int(rng.integers(len(pairs)))]
    return LAYOUTS[i], STYLES[j]
