"""The sim-to-real-time gap of a checkpoint: lockstep evaluation vs real-time deployment on the kitchen robot.

    .venv/bin/python bench/deploy_gap.py                                   # the quickstart's checkpoint and task group
    .venv/bin/python bench/deploy_gap.py --checkpoint runs/x/checkpoints/last --task OpenDrawer --scene single
    .venv/bin/python bench/deploy_gap.py --episodes 1 --latencies-ms 0 --executors async   # a smoke run

For each executor (``receding``, ``ensemble``, ``async``) it measures the success rate with its 95%
Wilson interval:

- in lockstep simulation (``vlastack eval``: the env waits for the policy), and
- in real time through the safe controller (``vlastack deploy robot=kitchen``: the kitchen runs at
  20 Hz whether the policy is ready or not) with ``--latencies-ms`` of injected command latency
  (default 0, 50, 100), each with U(0, ``--jitter-ms``) of jitter and ``--drop`` of the commands
  dropped (defaults 20 ms and 5%),

on the same seeds (``--seed`` + k, the evaluation's held-out seeds by default), plus the
observation-to-action latency (capture of the observation a chunk was planned from to the chunk
being ready) p50 / p99 over every chunk of the real-time runs, and how the episodes ended (success,
max_steps, a controller stopped after repeated faults, a stale controller state). Receding and async run
``--n-action-steps`` actions per chunk; ensemble replans every step. Prints a markdown table
and writes every figure to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from vlastack.quickstart import DEFAULT_GROUP, DEFAULT_GROUP_TASKS

EXECUTORS = ("receding", "ensemble", "async")


def end_reasons(episodes: list[dict]) -> dict[str, int]:
    """How the episodes ended, counted: ``success``, ``max_steps``, ``controller stopped`` (after repeated
    faults: the watchdog, for one), ``no observation`` (the controller's state went stale), ``camera frozen``,
    ``e-stop`` (the details after a colon are dropped)."""
    counts: dict[str, int] = {}
    for e in episodes:
        r = str(e.get("reason") or ("success" if e.get("success") else "?")).split(":")[0]
        r = "controller stopped" if r.startswith("controller stopped") else r
        counts[r] = counts.get(r, 0) + 1
    return counts


def lockstep(checkpoint: str, task: str, executor: str, episodes: int, seed: int, n_action_steps: int,
             max_steps: int, scene: dict) -> dict:
    """Success of ``vlastack eval`` (lockstep) with ``executor``; returns its overall summary."""
    from vlastack.rollout.evaluate import evaluate

    with tempfile.TemporaryDirectory(prefix="deploy_gap_eval_") as out:
        overrides = [f"checkpoint={checkpoint}", "env=kitchen", f"tasks=[{task}]", f"episodes={episodes}",
                     f"seeds=[{seed}]", f"executor={executor}", "videos=0", "workers=1", "progress=false",
                     f"out={out}/eval"]
        overrides.append(f"n_action_steps={n_action_steps if executor != 'ensemble' else 'null'}")
        overrides.append(f"max_steps={max_steps}")
        overrides += [f"{k}={v}" for k, v in scene.items()]
        doc = evaluate(overrides)
    return {**doc["summary"]["overall"], "end_reasons": end_reasons(doc["episodes"])}


def realtime(checkpoint: str, task: str, executor: str, episodes: int, seed: int, n_action_steps: int,
             latency_s: float, jitter_s: float, drop: float, max_steps: int, scene: dict) -> dict:
    """Success and latency of ``vlastack deploy robot=kitchen`` with ``executor`` and the injected faults."""
    from vlastack.rollout.deploy import DeployConfig, deploy
    from vlastack.rollout.stats import success_summary

    robot = {"type": "kitchen", "task": task, "cameras": "auto", "image_size": "auto", "cmd_latency_s": latency_s,
             "cmd_jitter_s": jitter_s, "drop_prob": drop, "seed": seed, "env": dict(scene)}
    options = {} if executor == "ensemble" else {"n_action_steps": n_action_steps}
    summary = deploy(DeployConfig(robot=robot, checkpoint=checkpoint, episodes=episodes, seed=seed,
                                  max_steps=max_steps, executor=executor, executor_options=options),
                     print_fn=lambda s: print(s, flush=True))
    eps = summary["episodes"]
    out = success_summary(eps)
    out["obs_to_action"] = summary["obs_to_action"]
    out["end_reasons"] = end_reasons(eps)
    out["rtf"] = [e.get("kitchen", {}).get("rtf") for e in eps]
    return out


def _fmt(s: dict) -> str:
    return f"{s['successes']}/{s['episodes']} ({s['success_rate']:.0%}, {s['ci_low']:.0%}-{s['ci_high']:.0%})"


def main() -> int:
    """Parse arguments, run every condition, print the table and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/quickstart/train/checkpoints/last")
    p.add_argument("--task", default=DEFAULT_GROUP_TASKS[0], help="a kitchen task (default: the quickstart group's first)")
    p.add_argument("--scene", default="group", choices=("group", "single"),
                   help="group: the task group's shared scene (the quickstart's); single: the task's own scene")
    p.add_argument("--group", default=DEFAULT_GROUP, help="the task group with --scene group")
    p.add_argument("--episodes", type=int, default=20, help="episodes per condition")
    p.add_argument("--seed", type=int, default=100_000, help="first seed (default: the evaluation's held-out seeds)")
    p.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=EXECUTORS)
    p.add_argument("--latencies-ms", nargs="+", type=float, default=[0.0, 50.0, 100.0])
    p.add_argument("--jitter-ms", type=float, default=20.0)
    p.add_argument("--drop", type=float, default=0.05)
    p.add_argument("--n-action-steps", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=None, help="step cap of every episode (default: the task's horizon)")
    p.add_argument("--no-lockstep", action="store_true", help="skip the lockstep rows")
    p.add_argument("--out", default="runs/deploy_gap.json")
    a = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from vlastack.envs.kitchen import TASKS
    from vlastack.rollout.common import write_json_atomic
    from vlastack.rollout.policy_adapters import resolve_checkpoint

    torch.set_num_threads(1)
    try:
        checkpoint = resolve_checkpoint(a.checkpoint)
    except FileNotFoundError as e:
        print(f"deploy_gap: {e} (run `make quickstart` first, or pass --checkpoint)", file=sys.stderr)
        return 2
    if a.task not in TASKS:
        print(f"deploy_gap: unknown --task {a.task!r}; valid: {sorted(TASKS)}", file=sys.stderr)
        return 2
    max_steps = a.max_steps or TASKS[a.task]().horizon
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    scene = {"scene": "group", "group": a.group} if a.scene == "group" else {}
    doc: dict = {"checkpoint": checkpoint, "task": a.task, "scene": scene, "episodes": a.episodes, "seed": a.seed,
                 "jitter_ms": a.jitter_ms, "drop": a.drop, "n_action_steps": a.n_action_steps,
                 "max_steps": max_steps, "rows": []}
    t0 = time.time()
    for ex in a.executors:
        if not a.no_lockstep:
            s = lockstep(checkpoint, a.task, ex, a.episodes, a.seed, a.n_action_steps, max_steps, scene)
            doc["rows"].append({"executor": ex, "mode": "lockstep", "latency_ms": None, **s, "obs_to_action": None})
            print(f"[{time.time() - t0:.0f}s] {ex} lockstep: {_fmt(s)}", flush=True)
        for lat in a.latencies_ms:
            s = realtime(checkpoint, a.task, ex, a.episodes, a.seed, a.n_action_steps, lat / 1e3, a.jitter_ms / 1e3,
                         a.drop, max_steps, scene)
            doc["rows"].append({"executor": ex, "mode": "realtime", "latency_ms": lat, **s})
            print(f"[{time.time() - t0:.0f}s] {ex} real time, {lat:g} ms: {_fmt(s)}", flush=True)
            write_json_atomic(Path(a.out), doc)  # every row as it is measured
    doc["wall_s"] = round(time.time() - t0, 1)
    write_json_atomic(Path(a.out), doc)
    print(f"\n{a.task}, {a.episodes} episodes per row from seed {a.seed}; real time: + U(0, {a.jitter_ms:g} ms) "
          f"jitter, {a.drop:.0%} commands dropped\n")
    print("| executor | mode | injected latency | success (95% Wilson) | obs-to-action p50 / p99 | episodes ended by |")
    print("|---|---|---|---|---|---|")
    for r in doc["rows"]:
        lat = r.get("obs_to_action")
        injected = "-" if r["latency_ms"] is None else f"{r['latency_ms']:g} ms"
        timing = f"{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} ms" if lat else "-"
        ends = ", ".join(f"{k} {n}" for k, n in sorted(r["end_reasons"].items(), key=lambda kv: -kv[1]))
        print(f"| {r['executor']} | {r['mode']} | {injected} | {_fmt(r)} | {timing} | {ends} |")
    print(f"\nwrote {a.out} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
