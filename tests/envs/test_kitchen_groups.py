"""Kitchen task groups: shared scenes where only the instruction says which task is meant.

Determinism across a group's tasks is checked bitwise (qpos, qvel, the first rendered frame);
every task's predicate is false at reset; distractors are there; the held-out split is disjoint
from the training one; bad input is named. The 50-seed expert table is
``bench/kitchen_experts.py --scene group`` (and the slow expert test).
"""

import numpy as np
import pytest

from vlastack.envs.kitchen import (GROUPS, LAYOUTS, STYLES, TASK_GROUPS, TASKS, make_kitchen_env, split_pairs)
from vlastack.envs.kitchen.groups import GROUP_SPECS, resolve_group
from vlastack.types import TASK

SIZE = 48
SEEDS = (0, 1)


def _start(task: str, group: str, cameras=(), seeds=SEEDS):
    """(qpos, qvel, first frame or None, meta, success at reset) per seed for ``task`` in ``group``."""
    env = make_kitchen_env(task, cameras=cameras, image_size=SIZE, scene="group", group=group)
    out = []
    try:
        for s in seeds:
            obs, info = env.reset(seed=s)
            d = env.scene.sim.data._data
            frame = obs.get("observation.images.left") if cameras else None
            out.append((d.qpos.copy(), d.qvel.copy(), frame, dict(env.scene.episode_meta), info["success"],
                        obs[TASK]))
    finally:
        env.close()
    return out


def test_groups_cover_the_suite():
    assert len(TASK_GROUPS) >= 3
    distinct = {t for ts in TASK_GROUPS.values() for t in ts}
    assert len(distinct) >= 12
    assert all(len(ts) >= 4 for ts in TASK_GROUPS.values())
    families = {TASKS[t].group for t in distinct}
    assert families == set(GROUPS), f"missing families: {set(GROUPS) - families}"
    for name, spec in GROUP_SPECS.items():
        assert len(set(spec.fixture_kinds)) == 3
        for t in spec.tasks:  # every task's fixture stands in its group's scene
            assert TASKS[t].fixture in spec.fixture_kinds, (name, t)


@pytest.mark.parametrize("group", list(TASK_GROUPS))
def test_same_start_for_every_task_of_a_group(group):
    tasks = TASK_GROUPS[group]
    ref = _start(tasks[0], group, cameras=("left",))
    instructions = {tasks[0]: [r[5] for r in ref]}
    for task in tasks[1:]:
        # two tasks of each group also compare their rendered first frames; the rest qpos/qvel
        cams = ("left",) if task == tasks[-1] else ()
        got = _start(task, group, cameras=cams)
        for (q0, v0, f0, m0, _, _), (q1, v1, f1, m1, ok, text) in zip(ref, got):
            assert np.array_equal(q0, q1) and np.array_equal(v0, v1), f"{group}: {task} starts elsewhere"
            if cams:
                assert np.array_equal(f0, f1), f"{group}: {task}'s first frame differs"
            assert (m0["layout"], m0["style"], m0["objects"]) == (m1["layout"], m1["style"], m1["objects"])
            assert not ok, f"{group}: {task} already succeeds at reset"
        instructions[task] = [r[5] for r in got]
    for i in range(len(SEEDS)):  # only the instruction differs, and it does differ
        assert len({instructions[t][i] for t in tasks}) == len(tasks)
    assert not any(r[4] for r in ref)
    # different seeds give different starts
    assert not np.array_equal(ref[0][0], ref[1][0])


def test_distractors_and_named_targets():
    for group, task in (("sink_stove", "PnPCounterToSink"), ("pantry", "PnPMicrowaveToCounter"),
                        ("coffee_microwave", "CoffeeServeMug")):
        env = make_kitchen_env(task, cameras=(), scene="group", group=group)
        try:
            for s in range(4):
                obs, _ = env.reset(seed=s)
                meta, sc = env.scene.episode_meta, env.scene
                assert 1 <= len(meta["objects"]) - 1 <= 3  # besides the one the task is about
                assert sc.active_object.category.name not in meta["distractors"]
                assert meta["obj"] in obs[TASK] or "mug" in obs[TASK]
                (x0, x1), (y0, y1) = sc.counter_zone
                for cat in meta["distractors"]:  # on the counter, in the free section
                    x, y = sc.objects[cat].pos[:2]
                    assert x0 - 1e-6 <= x <= x1 + 1e-6 and y0 - 1e-6 <= y <= y1 + 1e-6
                    assert abs(sc.objects[cat].bottom_z - 0.8) < 0.01
                nouns = [meta["objects"][c] for c in meta["objects"]]
                assert len(set(nouns)) == len(nouns)  # each object has its own name
        finally:
            env.close()


def test_heldout_split_is_disjoint_and_used():
    train, held, every = split_pairs("train"), split_pairs("heldout"), split_pairs("all")
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(every)
    assert len(LAYOUTS) >= 6 and len(STYLES) >= 6
    seen = {"train": set(), "heldout": set()}
    for split in seen:
        env = make_kitchen_env("OpenSingleDoor", cameras=(), scene="group", group="sink_stove", split=split)
        try:
            for s in range(8):
                env.reset(seed=s)
                m = env.scene.episode_meta
                seen[split].add(([lay.name for lay in LAYOUTS].index(m["layout"]),
                                 [sty.name for sty in STYLES].index(m["style"])))
        finally:
            env.close()
    assert seen["train"] <= set(train) and seen["heldout"] <= set(held)


def test_bad_input_names_the_choices():
    with pytest.raises(ValueError, match="unknown task group 'nope'; valid groups"):
        make_kitchen_env("OpenDrawer", scene="group", group="nope", cameras=())
    with pytest.raises(ValueError, match="not in task group 'pantry'"):
        make_kitchen_env("TurnOnStove", scene="group", group="pantry", cameras=())
    with pytest.raises(ValueError, match="has no shared scene"):
        make_kitchen_env("CloseDoubleDoor", scene="group", cameras=())
    with pytest.raises(ValueError, match="unknown scene 'kitchen'; valid scenes"):
        make_kitchen_env("OpenDrawer", scene="kitchen", cameras=())
    with pytest.raises(ValueError, match="unknown split 'test'; valid splits"):
        make_kitchen_env("OpenDrawer", scene="group", split="test", cameras=())
    with pytest.raises(ValueError, match="needs scene='group'"):
        make_kitchen_env("OpenDrawer", group="pantry", cameras=())
    assert resolve_group("OpenSingleDoor", None).name == "sink_stove"
