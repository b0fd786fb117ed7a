"""Kitchen tasks named after RoboCasa's atomic tasks: episode set-up, instruction, success.

A task says which fixture stands in front of the robot (``fixture``, centred at ``anchor_y``),
which object categories an episode may draw (``object_categories``), how to set the scene up
from the episode's random generator (:meth:`KitchenTask.setup_episode`, which also draws the
instruction from the task's paraphrase templates) and when it is done
(:meth:`KitchenTask.success`, a predicate on simulator state).

Success thresholds (documented so data users can trust the labels):

- doors: open when every target door is past 1.35 rad (77 deg, 77% of its 1.75 rad range),
  closed when every door is under 0.1 rad;
- drawer: open when pulled past 75% of its 0.20 m travel, closed under 0.01 m;
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
        scene.main_fixture.set_qpos("slide", rng.uniform(0.14, 0.2))
        return {}

    def success(self, scene):
        return scene.main_fixture.qpos("slide") < DRAWER_CLOSED


TASK_CLASSES: tuple[type[KitchenTask], ...] = (OpenDrawer, CloseDrawer)

TASKS: dict[str, type[KitchenTask]] = {c.name: c for c in TASK_CLASSES}
