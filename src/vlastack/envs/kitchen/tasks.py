"""Kitchen tasks named after RoboCasa's atomic tasks: episode set-up, instruction, success.

A task says which fixture stands in front of the robot (``fixture``, centred at ``anchor_y``),
which object categories an episode may draw (``object_categories``), how to set the scene up
from the episode's random generator (:meth:`KitchenTask.setup_episode`, which also draws the
instruction from the task's paraphrase templates) and when it is done
(:meth:`KitchenTask.success`, a predicate on simulator state).

Success thresholds (documented so data users can trust the labels):

- doors: open when every target door is past 1.35 rad (77 deg, 77% of its 1.75 rad range),
  closed when every door is under 0.1 rad;
- drawer: open when pulled past 75% of its 0.18 m travel, closed under 0.01 m;
- stove: a burner is on while its knob is past 0.35 rad; sink water runs while the lever is
  past 0.4 rad; the spout counts as turned past 0.6 rad in the instructed direction;
- microwave / coffee machine: their latched ``on`` state (see :mod:`.fixtures`);
- pick-and-place: the object rests inside the target region (basin, cabinet, turntable, burner,
  mug spot or a counter area) and no gripper geom touches it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .scene import COUNTER_FRONT, COUNTER_TOP

GROUPS = ("pick_and_place", "doors", "drawers", "sink", "stove", "coffee", "microwave")
DOOR_OPEN = 1.35
DOOR_CLOSED = 0.1
DRAWER_OPEN = 0.75
DRAWER_CLOSED = 0.01
SPOUT_TURNED = 0.6


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


class KitchenTask:
    """Base class: one atomic task (see the module docstring)."""

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    fixture: ClassVar[str] = ""
    anchor_y: ClassVar[float] = 0.1
    object_categories: ClassVar[tuple[str, ...]] = ()
    horizon: ClassVar[int] = 300
    templates: ClassVar[tuple[str, ...]] = ()

    def setup_episode(self, scene, rng: np.random.Generator) -> dict:
        """Put joints and objects in their start state; return the episode's metadata,
        including its ``instruction``."""
        words = self._setup(scene, rng)
        words.setdefault("fixture", scene.main_fixture.label)
        meta = dict(words)
        meta["instruction"] = _pick(rng, self.templates).format(**words)
        return meta

    def _setup(self, scene, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def success(self, scene) -> bool:
        """The task predicate on the current simulator state."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- drawers
class OpenDrawer(KitchenTask):
    """Pull the drawer open."""

    name, group, fixture, anchor_y, horizon = "OpenDrawer", "drawers", "drawer", 0.0, 250
    templates = ("open the drawer", "pull the drawer open", "open the {fixture} in front of you",
                 "slide the drawer out", "pull out the drawer")

    def _setup(self, scene, rng):
        scene.main_fixture.set_qpos("slide", rng.uniform(0.0, 0.02))
        return {}

    def success(self, scene):
        return scene.main_fixture.opening > DRAWER_OPEN


class CloseDrawer(KitchenTask):
    """Push the drawer closed."""

    name, group, fixture, anchor_y, horizon = "CloseDrawer", "drawers", "drawer", 0.0, 250
    templates = ("close the drawer", "push the drawer closed", "shut the {fixture}",
                 "slide the drawer back in", "push the open drawer shut")

    def _setup(self, scene, rng):
        scene.main_fixture.set_qpos("slide", rng.uniform(0.12, 0.18))
        return {}

    def success(self, scene):
        return scene.main_fixture.qpos("slide") < DRAWER_CLOSED


# ----------------------------------------------------------------------------- doors
class _DoorTask(KitchenTask):
    """Open or close every door of a hinged-door cabinet."""

    group, horizon = "doors", 300
    opening: ClassVar[bool] = True

    def _setup(self, scene, rng):
        for door in scene.main_fixture.doors:
            angle = rng.uniform(0.0, 0.05) if self.opening else rng.uniform(1.3, 1.7)
            scene.main_fixture.set_qpos(door.joint, angle)
        return {}

    def success(self, scene):
        fx = scene.main_fixture
        if self.opening:
            return all(fx.qpos(d.joint) > DOOR_OPEN for d in fx.doors)
        return all(fx.qpos(d.joint) < DOOR_CLOSED for d in fx.doors)


class OpenSingleDoor(_DoorTask):
    """Open the cabinet's door."""

    name, fixture, anchor_y, opening = "OpenSingleDoor", "cabinet_single", 0.05, True
    templates = ("open the cabinet door", "open the door of the {fixture}", "pull the cabinet door open",
                 "swing the cabinet door open", "open the cabinet")


class CloseSingleDoor(_DoorTask):
    """Close the cabinet's door."""

    name, fixture, anchor_y, opening = "CloseSingleDoor", "cabinet_single", 0.05, False
    templates = ("close the cabinet door", "shut the door of the {fixture}", "push the cabinet door closed",
                 "swing the cabinet door shut", "close the cabinet")


class OpenDoubleDoor(_DoorTask):
    """Open both doors of the double cabinet."""

    name, fixture, anchor_y, opening, horizon = "OpenDoubleDoor", "cabinet_double", 0.0, True, 450
    templates = ("open the cabinet doors", "open both doors of the {fixture}", "pull both cabinet doors open",
                 "open the double doors of the cabinet", "swing open both cabinet doors")


class CloseDoubleDoor(_DoorTask):
    """Close both doors of the double cabinet."""

    name, fixture, anchor_y, opening, horizon = "CloseDoubleDoor", "cabinet_double", 0.0, False, 450
    templates = ("close the cabinet doors", "shut both doors of the {fixture}", "push both cabinet doors closed",
                 "close the double doors of the cabinet", "swing both cabinet doors shut")


# ----------------------------------------------------------------------------- stove
class _StoveTask(KitchenTask):
    """Turn one burner's knob on or off; the burner is drawn per episode and named."""

    group, fixture, anchor_y, horizon = "stove", "stove", 0.0, 200
    turn_on: ClassVar[bool] = True

    def _setup(self, scene, rng):
        stove = scene.main_fixture
        burner = _pick(rng, stove.burners)
        for b in stove.burners:
            stove.set_qpos(f"knob_{b}", 0.0)
        stove.set_qpos(f"knob_{burner}", 0.0 if self.turn_on else rng.uniform(0.9, 1.5))
        return {"burner_id": burner, "burner": burner.replace("_", " ")}

    def success(self, scene):
        on = scene.main_fixture.burner_on(scene.episode_meta["burner_id"])
        return on if self.turn_on else not on


class TurnOnStove(_StoveTask):
    """Turn the knob of the named burner on."""

    name, turn_on = "TurnOnStove", True
    templates = ("turn on the {burner} burner", "turn on the {burner} burner of the stove",
                 "switch on the stove's {burner} burner", "turn the {burner} knob to start the burner",
                 "light the {burner} burner on the stove")


class TurnOffStove(_StoveTask):
    """Turn the knob of the named (lit) burner off."""

    name, turn_on = "TurnOffStove", False
    templates = ("turn off the {burner} burner", "turn off the {burner} burner of the stove",
                 "switch off the stove's {burner} burner", "turn the {burner} knob to stop the burner",
                 "shut off the {burner} burner on the stove")


# ----------------------------------------------------------------------------- sink
class _FaucetTask(KitchenTask):
    """Turn the faucet lever on (water runs) or off."""

    group, fixture, anchor_y, horizon = "sink", "sink", 0.0, 200
    turn_on: ClassVar[bool] = True

    def _setup(self, scene, rng):
        sink = scene.main_fixture
        sink.set_qpos("handle", 0.0 if self.turn_on else rng.uniform(0.6, 1.1))
        sink.set_qpos("spout", rng.uniform(-0.25, 0.25))
        return {}

    def success(self, scene):
        return scene.main_fixture.water_on == self.turn_on


class TurnOnSinkFaucet(_FaucetTask):
    """Turn the water on."""

    name, turn_on = "TurnOnSinkFaucet", True
    templates = ("turn on the sink faucet", "turn the faucet on", "turn on the water in the sink",
                 "start the water running in the {fixture}", "open the sink faucet")


class TurnOffSinkFaucet(_FaucetTask):
    """Turn the water off."""

    name, turn_on = "TurnOffSinkFaucet", False
    templates = ("turn off the sink faucet", "turn the faucet off", "turn off the water in the sink",
                 "stop the water running in the {fixture}", "close the sink faucet")


class TurnSinkSpout(KitchenTask):
    """Swivel the spout to the named side (left: toward +y, the robot's left)."""

    name, group, fixture, anchor_y, horizon = "TurnSinkSpout", "sink", "sink", 0.0, 200
    templates = ("turn the sink spout to the {side}", "swivel the faucet spout {side}",
                 "rotate the spout of the {fixture} to the {side}", "point the sink spout to the {side}",
                 "move the faucet spout over to the {side}")

    def _setup(self, scene, rng):
        sink = scene.main_fixture
        sink.set_qpos("spout", rng.uniform(-0.2, 0.2))
        sink.set_qpos("handle", 0.0)
        return {"side": _pick(rng, ("left", "right"))}

    def success(self, scene):
        angle = scene.main_fixture.qpos("spout")
        # positive spout angles swing the tip toward -y, the robot's right
        return angle > SPOUT_TURNED if scene.episode_meta["side"] == "right" else angle < -SPOUT_TURNED


# ----------------------------------------------------------------------------- coffee
class CoffeePressButton(KitchenTask):
    """Press the coffee machine's button (a mug waits under the nozzle)."""

    name, group, fixture, anchor_y, horizon = "CoffeePressButton", "coffee", "coffee_machine", 0.0, 150
    object_categories = ("mug",)
    templates = ("press the button on the coffee machine", "start the {fixture}",
                 "press the coffee machine's button to make coffee", "push the button of the coffee machine",
                 "turn on the coffee machine")

    def _setup(self, scene, rng):
        mug = scene.objects["mug"]
        spot = scene.main_fixture.site("mug_spot")
        mug.place(spot[:2] + rng.uniform(-0.01, 0.01, 2), spot[2], yaw=rng.uniform(-0.5, 0.5))
        mug.set_colour(rng)
        scene.active_object = mug
        return {}

    def success(self, scene):
        return scene.main_fixture.on


# ----------------------------------------------------------------------------- microwave
class _MicrowaveButtonTask(KitchenTask):
    """Press the microwave's start or stop button (door closed)."""

    group, fixture, anchor_y, horizon = "microwave", "microwave", 0.12, 150
    turn_on: ClassVar[bool] = True

    def _setup(self, scene, rng):
        mw = scene.main_fixture
        mw.set_qpos("door", 0.0)
        mw.on = not self.turn_on
        return {}

    def success(self, scene):
        return scene.main_fixture.on == self.turn_on


class TurnOnMicrowave(_MicrowaveButtonTask):
    """Press start."""

    name, turn_on = "TurnOnMicrowave", True
    templates = ("turn on the microwave", "press the start button on the microwave", "start the {fixture}",
                 "switch the microwave on", "push the microwave's start button")


class TurnOffMicrowave(_MicrowaveButtonTask):
    """Press stop while it runs."""

    name, turn_on = "TurnOffMicrowave", False
    templates = ("turn off the microwave", "press the stop button on the microwave", "stop the {fixture}",
                 "switch the microwave off", "push the microwave's stop button")


# ----------------------------------------------------------------------------- pick and place
SMALL = ("can", "lemon", "bread", "cube", "ball")  # short enough to carry into a cabinet or microwave
ALL_OBJECTS = ("can", "bottle", "milk", "lemon", "bread", "cube", "ball")
MUG_MAX_YAW = 0.5  # rad: a mug's handle stays pointing roughly away from the robot


def _upright(obj) -> bool:
    """Whether the object rests the way its category counts as placed (``ObjectCategory.rests``):
    its own z axis vertical; for a cube any axis (any face down); a ball or a lemon any way."""
    rests = obj.category.rests
    if rests == "any":
        return True
    m = obj._d.xmat[obj.body_id]  # row-major 3x3: m[6:9] is the world z row, m[8] = z_body . z_world
    if rests == "any_face":
        return float(np.max(np.abs(m[6:9]))) > 0.9
    return float(m[8]) > 0.9


class Region:
    """Where an object starts or should end up: sampling, the expert's drop point, a predicate.

    ``enclosed`` regions (cabinet, microwave) are reached through their front opening, below
    ``ceiling`` (a world height); the others from above. Objects start at a yaw drawn
    uniformly within ``max_yaw`` radians (a mug's handle within ``MUG_MAX_YAW``).
    """

    noun = ""
    fixture = ""  # the fixture kind the region belongs to ("" for the counter)
    enclosed = False
    max_yaw = np.pi / 4

    def fx(self, scene):
        """The fixture this region belongs to (the task's main fixture for the counter)."""
        return scene.fixtures[self.fixture] if self.fixture else scene.main_fixture

    def surface(self, scene) -> float:
        """World height of the surface objects rest on."""
        raise NotImplementedError

    def sample(self, scene, rng) -> np.ndarray:
        """A start position (x, y) for an object."""
        raise NotImplementedError

    def drop(self, scene) -> np.ndarray:
        """Where the expert puts the object down (x, y)."""
        raise NotImplementedError

    def contains(self, scene, obj) -> bool:
        """Whether ``obj`` rests in the region."""
        raise NotImplementedError

    def front_x(self, scene) -> float:
        """World x of the opening of an enclosed region."""
        raise NotImplementedError

    def ceiling(self, scene) -> float:
        """World height of the interior ceiling of an enclosed region."""
        raise NotImplementedError


def _local(fx, xy) -> np.ndarray:
    return np.asarray(xy, dtype=float) - fx.pos[:2]


class CounterRegion(Region):
    """Bare counter: to the robot's right of the main fixture in a single-task scene; the free
    counter section in front of the robot in a task group's shared scene (where the group's
    set-up reserves a drop point clear of the objects standing there)."""

    noun = "counter"

    def _box(self, scene):
        zone = getattr(scene, "counter_zone", None)
        if zone is not None:
            return zone
        fx = self.fx(scene)
        right_edge = fx.pos[1] - fx.footprint[1] / 2
        return (-0.2, -0.04), (right_edge - 0.32, right_edge - 0.12)

    def surface(self, scene):
        return COUNTER_TOP

    def sample(self, scene, rng):
        (x0, x1), (y0, y1) = self._box(scene)
        return np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])

    def drop(self, scene):
        spot = getattr(scene, "counter_drop", None)
        if spot is not None:
            return np.asarray(spot, dtype=float)
        (x0, x1), (y0, y1) = self._box(scene)
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])

    def contains(self, scene, obj):
        if abs(obj.bottom_z - COUNTER_TOP) > 0.02 or not _upright(obj):
            return False
        x, y = obj.pos[:2]
        for fx in scene.fixtures.values():  # not on or in any fixture
            (cx, cy), (d, w) = fx.pos[:2], fx.footprint[:2]
            if abs(x - cx) < d / 2 + 0.01 and abs(y - cy) < w / 2 + 0.01:
                return False
        return COUNTER_FRONT < x < 0.42


class SinkRegion(Region):
    """The sink's basin. Objects start in its front half, away from the faucet's nozzle, and
    turned less than elsewhere: a hand turned far would catch the front wall's rim."""

    fixture = "sink"
    noun, max_yaw = "sink", 0.35

    def surface(self, scene):
        return self.fx(scene).pos[2] + 0.02

    def sample(self, scene, rng):
        return self.fx(scene).pos[:2] + [rng.uniform(-0.13, -0.08), rng.uniform(-0.14, 0.1)]

    def drop(self, scene):
        return self.fx(scene).pos[:2] + [-0.09, -0.1]

    def contains(self, scene, obj):
        lx, ly = _local(self.fx(scene), obj.pos[:2])
        return (-0.19 < lx < 0.09 and -0.26 < ly < 0.26
                and obj.bottom_z < self.fx(scene).pos[2] + 0.06)


class CabinetRegion(Region):
    """The single cabinet's interior (its door open)."""

    fixture = "cabinet_single"
    noun, enclosed = "cabinet", True

    def surface(self, scene):
        return self.fx(scene).pos[2] + 0.03

    def sample(self, scene, rng):
        return self.fx(scene).pos[:2] + [rng.uniform(-0.13, -0.1), rng.uniform(-0.06, 0.04)]

    def drop(self, scene):
        return self.fx(scene).pos[:2] + [-0.115, -0.02]

    def contains(self, scene, obj):
        lx, ly = _local(self.fx(scene), obj.pos[:2])
        return (-0.17 < lx < 0.15 and -0.16 < ly < 0.16
                and abs(obj.bottom_z - self.surface(scene)) < 0.02 and _upright(obj))

    def front_x(self, scene):
        return self.fx(scene).pos[0] - 0.17

    def ceiling(self, scene):
        return self.fx(scene).pos[2] + 0.44


class MicrowaveRegion(Region):
    """The microwave's turntable (its door open)."""

    fixture = "microwave"
    noun, enclosed = "microwave", True

    def surface(self, scene):
        return self.fx(scene).pos[2] + 0.026

    def sample(self, scene, rng):
        return self.fx(scene).pos[:2] + [rng.uniform(-0.14, -0.11), rng.uniform(0.03, 0.12)]

    def drop(self, scene):
        return self.fx(scene).pos[:2] + [-0.125, 0.06]

    def contains(self, scene, obj):
        lx, ly = _local(self.fx(scene), obj.pos[:2])
        return (-0.19 < lx < 0.17 and -0.08 < ly < 0.24
                and abs(obj.bottom_z - self.surface(scene)) < 0.02 and _upright(obj))

    def front_x(self, scene):
        return self.fx(scene).pos[0] - 0.19

    def ceiling(self, scene):
        return self.fx(scene).pos[2] + 0.40


class BurnerRegion(Region):
    """One burner of the stove (drawn per episode, named in the instruction)."""

    fixture = "stove"
    noun = "burner"

    def surface(self, scene):
        return self.fx(scene).pos[2] + self.fx(scene).top_height

    def _centre(self, scene):
        return self.fx(scene).site("burner_" + scene.episode_meta["burner_id"])[:2]

    def sample(self, scene, rng):
        return self._centre(scene) + rng.uniform(-0.02, 0.02, 2)

    def drop(self, scene):
        return self._centre(scene)

    def contains(self, scene, obj):
        return (np.linalg.norm(obj.pos[:2] - self._centre(scene)) < 0.08
                and abs(obj.bottom_z - self.surface(scene)) < 0.02 and _upright(obj))


class MugSpotRegion(Region):
    """The coffee machine's drip tray under the nozzle (reached from the front, under the head)."""

    fixture = "coffee_machine"
    noun, enclosed = "coffee machine", True

    def front_x(self, scene):
        return self.fx(scene).pos[0] - 0.17

    def ceiling(self, scene):
        return self.fx(scene).pos[2] + 0.44

    def surface(self, scene):
        return self.fx(scene).site("mug_spot")[2]

    def sample(self, scene, rng):
        return self.fx(scene).site("mug_spot")[:2] + rng.uniform(-0.01, 0.01, 2)

    def drop(self, scene):
        return self.fx(scene).site("mug_spot")[:2]

    def contains(self, scene, obj):
        return (np.linalg.norm(obj.pos[:2] - self.drop(scene)) < self.fx(scene).spot_radius
                and abs(obj.bottom_z - self.surface(scene)) < 0.02 and _upright(obj))


class _PnPTask(KitchenTask):
    """Pick the episode's object from ``source`` and place it in ``target``."""

    group, horizon = "pick_and_place", 400
    source: ClassVar[Region]
    target: ClassVar[Region]
    door_open: ClassVar[bool] = False  # start with the fixture's doors open

    def _setup(self, scene, rng):
        fx = scene.main_fixture
        for door in getattr(fx, "doors", ()):
            fx.set_qpos(door.joint, rng.uniform(1.5, 1.7) if self.door_open else 0.0)
        words = {}
        if isinstance(self.source, BurnerRegion) or isinstance(self.target, BurnerRegion):
            burner = _pick(rng, fx.burners)
            scene.episode_meta = {"burner_id": burner}  # regions read it while sampling
            words.update(burner_id=burner, burner=burner.replace("_", " "))
        obj = scene.objects[_pick(rng, self.object_categories)]
        obj.set_colour(rng)
        max_yaw = min(MUG_MAX_YAW, self.source.max_yaw) if obj.category.name == "mug" else self.source.max_yaw
        yaw = rng.uniform(-max_yaw, max_yaw)
        obj.place(self.source.sample(scene, rng), self.source.surface(scene), yaw)
        scene.active_object = obj
        words["obj"] = obj.phrase()
        words["obj_category"] = obj.category.name
        return words

    def success(self, scene):
        obj = scene.active_object
        return self.target.contains(scene, obj) and not scene.gripper_touches(obj)


class PnPCounterToCab(_PnPTask):
    """Counter to the open cabinet."""

    name, fixture, anchor_y, door_open = "PnPCounterToCab", "cabinet_single", 0.08, True
    object_categories = SMALL
    source, target = CounterRegion(), CabinetRegion()
    templates = ("pick the {obj} from the counter and place it in the cabinet",
                 "put the {obj} in the cabinet", "move the {obj} from the counter into the cabinet",
                 "place the {obj} inside the open cabinet", "store the {obj} in the {fixture}")


class PnPCabToCounter(_PnPTask):
    """Open cabinet to the counter."""

    name, fixture, anchor_y, door_open = "PnPCabToCounter", "cabinet_single", 0.08, True
    object_categories = SMALL
    source, target = CabinetRegion(), CounterRegion()
    templates = ("pick the {obj} from the cabinet and place it on the counter",
                 "take the {obj} out of the cabinet", "move the {obj} from the cabinet to the counter",
                 "put the {obj} from the cabinet onto the counter", "get the {obj} out of the {fixture}")


class PnPCounterToSink(_PnPTask):
    """Counter to the sink's basin."""

    name, fixture, anchor_y = "PnPCounterToSink", "sink", 0.12
    object_categories = ALL_OBJECTS
    source, target = CounterRegion(), SinkRegion()
    templates = ("pick the {obj} from the counter and place it in the sink", "put the {obj} in the sink",
                 "move the {obj} from the counter into the sink", "drop the {obj} into the {fixture}",
                 "place the {obj} in the sink basin")


class PnPSinkToCounter(_PnPTask):
    """Sink's basin to the counter."""

    name, fixture, anchor_y = "PnPSinkToCounter", "sink", 0.12
    object_categories = ALL_OBJECTS
    source, target = SinkRegion(), CounterRegion()
    templates = ("pick the {obj} from the sink and place it on the counter", "take the {obj} out of the sink",
                 "move the {obj} from the sink to the counter", "put the {obj} from the {fixture} on the counter",
                 "lift the {obj} out of the sink onto the counter")


class PnPCounterToMicrowave(_PnPTask):
    """Counter to the open microwave."""

    name, fixture, anchor_y, door_open = "PnPCounterToMicrowave", "microwave", 0.1, True
    object_categories = SMALL
    source, target = CounterRegion(), MicrowaveRegion()
    templates = ("pick the {obj} from the counter and place it in the microwave",
                 "put the {obj} in the microwave", "move the {obj} from the counter into the microwave",
                 "place the {obj} inside the open {fixture}", "load the {obj} into the microwave")


class PnPMicrowaveToCounter(_PnPTask):
    """Open microwave to the counter."""

    name, fixture, anchor_y, door_open = "PnPMicrowaveToCounter", "microwave", 0.1, True
    object_categories = SMALL
    source, target = MicrowaveRegion(), CounterRegion()
    templates = ("pick the {obj} from the microwave and place it on the counter",
                 "take the {obj} out of the microwave", "move the {obj} from the microwave to the counter",
                 "unload the {obj} from the {fixture}", "put the {obj} from the microwave on the counter")


class PnPCounterToStove(_PnPTask):
    """Counter to a named burner."""

    name, fixture, anchor_y = "PnPCounterToStove", "stove", 0.1
    object_categories = ("can", "lemon", "bread", "cube", "ball", "milk")
    source, target = CounterRegion(), BurnerRegion()
    templates = ("pick the {obj} from the counter and place it on the {burner} burner",
                 "put the {obj} on the stove's {burner} burner", "move the {obj} onto the {burner} burner",
                 "place the {obj} on the {burner} burner of the {fixture}",
                 "set the {obj} down on the {burner} burner")


class PnPStoveToCounter(_PnPTask):
    """A burner to the counter."""

    name, fixture, anchor_y = "PnPStoveToCounter", "stove", 0.1
    object_categories = ("can", "lemon", "bread", "cube", "ball", "milk")
    source, target = BurnerRegion(), CounterRegion()
    templates = ("pick the {obj} from the stove and place it on the counter", "take the {obj} off the stove",
                 "move the {obj} from the {burner} burner to the counter",
                 "put the {obj} from the {fixture} on the counter", "lift the {obj} off the burner onto the counter")


class CoffeeSetupMug(_PnPTask):
    """Mug from the counter to under the coffee machine's nozzle."""

    name, group, fixture, anchor_y, horizon = "CoffeeSetupMug", "coffee", "coffee_machine", 0.12, 400
    object_categories = ("mug",)
    source, target = CounterRegion(), MugSpotRegion()
    templates = ("pick the mug from the counter and place it under the coffee machine dispenser",
                 "put the {obj} under the coffee machine", "set up the mug in the {fixture}",
                 "place the {obj} on the coffee machine's drip tray", "move the mug under the coffee nozzle")


class CoffeeServeMug(_PnPTask):
    """Mug from under the coffee machine's nozzle to the counter."""

    name, group, fixture, anchor_y, horizon = "CoffeeServeMug", "coffee", "coffee_machine", 0.12, 400
    object_categories = ("mug",)
    source, target = MugSpotRegion(), CounterRegion()
    templates = ("pick the mug from under the coffee machine dispenser and place it on the counter",
                 "serve the {obj} from the {fixture}", "take the mug out of the coffee machine",
                 "move the {obj} from the coffee machine to the counter", "put the coffee mug on the counter")


TASK_CLASSES: tuple[type[KitchenTask], ...] = (
    PnPCounterToCab, PnPCabToCounter, PnPCounterToSink, PnPSinkToCounter, PnPCounterToMicrowave,
    PnPMicrowaveToCounter, PnPCounterToStove, PnPStoveToCounter,
    OpenDrawer, CloseDrawer, OpenSingleDoor, CloseSingleDoor, OpenDoubleDoor, CloseDoubleDoor,
    TurnOnStove, TurnOffStove, TurnOnSinkFaucet, TurnOffSinkFaucet, TurnSinkSpout,
    CoffeeSetupMug, CoffeeServeMug, CoffeePressButton, TurnOnMicrowave, TurnOffMicrowave,
)

TASKS: dict[str, type[KitchenTask]] = {c.name: c for c in TASK_CLASSES}
