"""Scripted-expert success table for the kitchen suite: every task x N seeds.

    .venv/bin/python bench/kitchen_experts.py                    # all tasks, 50 seeds, 2 processes
    .venv/bin/python bench/kitchen_experts.py --tasks OpenDrawer --episodes 10 --workers 1
    .venv/bin/python bench/kitchen_experts.py --scene group       # every task of every task group, in its shared scene

Cameras are off (the expert reads privileged state), so this measures the experts and the
physics, not rendering. One task per worker process (one env per process). Prints one row
per task and the failing seeds with the phase each failed episode ended in.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def run_task(args) -> dict:
    """Run ``episodes`` seeded episodes of one task's expert; return counts and failures."""
    task, episodes, seed0, group = args
    import logging

    import robosuite  # noqa: F401  (sets its logger's level on import; quieten it after)

    from vlastack.envs.kitchen import TASKS, make_expert, make_kitchen_env, run_expert_episode

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)  # per-reset controller chatter

    env = make_kitchen_env(task, cameras=(), **({"scene": "group", "group": group} if group else {}))
    expert = make_expert(env)
    t0 = time.time()
    wins, steps, failures = 0, [], []
    for seed in range(seed0, seed0 + episodes):
        ok, n = run_expert_episode(env, expert, seed)
        if ok:
            wins += 1
            steps.append(n)
        else:
            failures.append((seed, expert.phase))
    env.close()
    return {"task": task, "group": group or TASKS[task].group, "episodes": episodes, "success": wins,
            "mean_steps": sum(steps) / max(len(steps), 1), "seconds": time.time() - t0, "failures": failures}


def main() -> None:
    """Parse arguments, run the tasks in worker processes and print the table."""
    from vlastack.envs.kitchen import list_tasks

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=None, help="task names (default: every task with an expert)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed0", type=int, default=0, help="first seed")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--scene", choices=("single", "group"), default="single",
                   help="group: every task of every task group (or --groups) in the group's shared scene")
    p.add_argument("--groups", nargs="*", default=None, help="task groups (with --scene group; default: all)")
    a = p.parse_args()
    if a.episodes < 1 or a.workers < 1:
        p.error("--episodes and --workers must be >= 1")
    if a.scene == "group":
        from vlastack.envs.kitchen import TASK_GROUPS

        groups = a.groups or list(TASK_GROUPS)
        bad = [g for g in groups if g not in TASK_GROUPS]
        if bad:
            p.error(f"unknown task group(s) {bad}; valid: {', '.join(TASK_GROUPS)}")
        jobs = [(t, a.episodes, a.seed0, g) for g in groups for t in TASK_GROUPS[g] if not a.tasks or t in a.tasks]
        tasks = [j[0] for j in jobs]
    else:
        tasks = a.tasks or list_tasks()
        unknown = [t for t in tasks if t not in list_tasks()]
        if unknown:
            p.error(f"unknown task(s) {unknown}; valid: {', '.join(list_tasks())}")
        jobs = [(t, a.episodes, a.seed0, None) for t in tasks]
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers, maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(run_task, jobs):
            rows.append(row)
            fails = ", ".join(f"{s}:{ph}" for s, ph in row["failures"][:8])
            print(f"  done {row['task']:<24} {row['success']}/{row['episodes']}  ({row['seconds']:.0f} s)"
                  + (f"  failed seeds: {fails}" if fails else ""), flush=True)
    order = [(j[3], j[0]) for j in jobs]  # print in the jobs' order, whatever order the tasks ran in
    rows.sort(key=lambda r: order.index((r["group"] if a.scene == "group" else None, r["task"])))
    print()
    print(f"| {'task':<24} | {'group':<14} | success | rate   | mean steps |")
    print(f"|{'-' * 26}|{'-' * 16}|---------|--------|------------|")
    for r in rows:
        print(f"| {r['task']:<24} | {r['group']:<14} | {r['success']:>3}/{r['episodes']:<3} | "
              f"{100 * r['success'] / r['episodes']:5.1f}% | {r['mean_steps']:10.1f} |")
    total = sum(r["success"] for r in rows), sum(r["episodes"] for r in rows)
    print(f"overall: {total[0]}/{total[1]} = {100 * total[0] / max(total[1], 1):.1f}%; "
          f"tasks at >= 90%: {sum(r['success'] >= 0.9 * r['episodes'] for r in rows)}/{len(rows)}")
    if a.json:
        from vlastack.rollout.common import write_json_atomic

        write_json_atomic(a.json, rows)


if __name__ == "__main__":
    main()
