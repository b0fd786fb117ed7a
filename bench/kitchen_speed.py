"""Kitchen env steps per second in one process: cameras off vs three 128x128 cameras.

    .venv/bin/python bench/kitchen_speed.py                        # OpenDrawer + PnPCounterToSink
    .venv/bin/python bench/kitchen_speed.py --tasks OpenDrawer --steps 300 --size 128
    .venv/bin/python bench/kitchen_speed.py --compare-scenes    # task-group scene vs the task's own, cameras on

The env is driven by its scripted expert (so the arm moves and contacts happen as in demo
collection); episodes restart when they end, and reset time is excluded. Both wall-clock and
process CPU time (all threads, the renderer's included) are reported: on a shared machine
the wall figure depends on the other load, steps per CPU-second is what one free core would
give. For the camera run, each step's CPU time is split into physics + controller
(``scene.step``), rendering (``render_image`` for every camera) and the rest (state vector,
success predicate, wrapper). Rendering
is offscreen with ``MUJOCO_GL`` (egl by default), shadows, reflections, skybox and MSAA off.
One process, one thread: the figure is what a single demo-collection or eval worker gets.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")


def measure(task: str, cameras: tuple[str, ...], size: int, steps: int, warmup: int = 20,
            arm_render: str = "hulls", **env_kwargs) -> dict:
    """Run ``steps`` expert steps of ``task`` with ``cameras`` at ``size``; return timings (s):
    wall and CPU totals, and the CPU time inside physics and rendering."""
    import numpy as np

    from vlastack.envs.kitchen import make_expert, make_kitchen_env

    env = make_kitchen_env(task, cameras=cameras, image_size=size, arm_render=arm_render, **env_kwargs)
    scene = env.scene
    expert = make_expert(env)
    t_phys = t_render = 0.0
    render_calls = 0
    orig_step, orig_render = scene.step, scene.render_image

    def timed_step(action):  # physics + OSC controller for one 50 ms control step
        nonlocal t_phys
        t = time.process_time()
        out = orig_step(action)
        t_phys += time.process_time() - t
        return out

    def timed_render(*a, **k):
        nonlocal t_render, render_calls
        t = time.process_time()
        out = orig_render(*a, **k)
        t_render += time.process_time() - t
        render_calls += 1
        return out

    scene.step, scene.render_image = timed_step, timed_render
    seed, done, total, cpu, counted = 0, True, 0.0, 0.0, 0
    try:
        while counted < steps:
            if done:  # resets (and the observation they render) are not timed
                phys0, render0, calls0 = t_phys, t_render, render_calls
                env.reset(seed=seed)
                expert.reset()
                t_phys, t_render, render_calls = phys0, render0, calls0
                seed += 1
            action = expert.act(env)
            if counted == 0 and warmup > 0:  # first renders allocate buffers: keep them out
                warmup -= 1
                _, _, term, trunc, _ = env.step(action)
                done = term or trunc
                t_phys = t_render = 0.0
                render_calls = 0
                continue
            t, c = time.perf_counter(), time.process_time()
            _, _, term, trunc, _ = env.step(np.asarray(action))
            total += time.perf_counter() - t
            cpu += time.process_time() - c
            counted += 1
            done = term or trunc
    finally:
        env.close()
    return {"task": task, "cameras": list(cameras), "size": size, "arm_render": arm_render, "steps": steps,
            "wall_s": total, "cpu_s": cpu, "steps_per_s": steps / total, "steps_per_cpu_s": steps / cpu,
            "physics_cpu_s": t_phys, "render_cpu_s": t_render, "render_calls": render_calls,
            "other_cpu_s": cpu - t_phys - t_render}


def main() -> None:
    """Measure each task with cameras off and on; print the side-by-side table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=None,
                   help="default: OpenDrawer PnPCounterToSink; with --compare-scenes one task per task group")
    p.add_argument("--steps", type=int, default=300, help="timed steps per configuration")
    p.add_argument("--size", type=int, default=128, help="camera image side (pixels)")
    p.add_argument("--cameras", nargs="*", default=["left", "right", "wrist"])
    p.add_argument("--arm-render", default="hulls", choices=("hulls", "meshes"),
                   help="how the external cameras draw the arm's links (see KitchenEnv)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--compare-scenes", action="store_true",
                   help="cameras on, each task in its own scene and in its task group's shared scene "
                        "(default tasks: one per group)")
    a = p.parse_args()
    if a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    import logging

    import robosuite  # noqa: F401  (sets its logger's level on import; quieten it after)

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    if a.compare_scenes:
        compare_scenes(a)
        return
    rows = []
    for task in a.tasks or ["OpenDrawer", "PnPCounterToSink"]:
        off = measure(task, (), a.size, a.steps)
        on = measure(task, tuple(a.cameras), a.size, a.steps, arm_render=a.arm_render)
        rows.append({"off": off, "on": on})
        print(f"  done {task}", flush=True)
    cams = f"{len(a.cameras)} cams {a.size}^2"
    print()
    print(f"| {'task':<18} | clock | cameras off | {cams:>14} | ratio | CPU ms/step with cameras: physics+OSC / render / other |")
    print(f"|{'-' * 20}|-------|-------------|----------------|-------|--------------------------------------------------------|")
    for r in rows:
        off, on = r["off"], r["on"]
        ms = [1000 * on[k] / on["steps"] for k in ("physics_cpu_s", "render_cpu_s", "other_cpu_s")]
        for clock, key in (("wall", "steps_per_s"), ("CPU", "steps_per_cpu_s")):
            split = f"{ms[0]:.1f} / {ms[1]:.1f} / {ms[2]:.1f}" if clock == "CPU" else ""
            print(f"| {off['task']:<18} | {clock:<5} | {off[key]:7.1f} /s  | {on[key]:10.1f} /s  | "
                  f"{off[key] / on[key]:4.2f}x | {split:<54} |")
    print(f"MUJOCO_GL={os.environ['MUJOCO_GL']}, arm_render={a.arm_render}; {a.steps} timed steps per cell; "
          f"one process; CPU = process time, all threads")
    if a.json:
        from vlastack.rollout.common import write_json_atomic

        write_json_atomic(a.json, rows)


def compare_scenes(a) -> None:
    """Steps/s with cameras of each task in its own scene and in its group's shared scene, interleaved."""
    from vlastack.envs.kitchen import TASK_GROUPS, groups_of

    tasks = a.tasks or [ts[-2] for ts in TASK_GROUPS.values()]
    rows = []
    for task in tasks:
        if not groups_of(task):
            raise SystemExit(f"{task} is in no task group; groups: {dict(TASK_GROUPS)}")
        single = measure(task, tuple(a.cameras), a.size, a.steps, arm_render=a.arm_render)
        group = measure(task, tuple(a.cameras), a.size, a.steps, arm_render=a.arm_render, scene="group")
        rows.append({"single": single, "group": group})
        print(f"  done {task}", flush=True)
    cams = f"{len(a.cameras)} cams {a.size}^2"
    print()
    print(f"| {'task':<22} | clock | single scene ({cams}) | group scene | group / single |")
    print(f"|{'-' * 24}|-------|{'-' * (len(cams) + 17)}|-------------|----------------|")
    for r in rows:
        for clock, key in (("wall", "steps_per_s"), ("CPU", "steps_per_cpu_s")):
            print(f"| {r['single']['task']:<22} | {clock:<5} | {r['single'][key]:{len(cams) + 11}.1f} /s | "
                  f"{r['group'][key]:8.1f} /s | {r['group'][key] / r['single'][key]:13.2f}x |")
    print(f"MUJOCO_GL={os.environ['MUJOCO_GL']}; {a.steps} timed steps per cell, one process, the scripted expert driving")
    if a.json:
        from vlastack.rollout.common import write_json_atomic

        write_json_atomic(a.json, rows)


if __name__ == "__main__":
    main()
