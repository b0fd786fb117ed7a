"""Learning benchmark: DUST small vs its single-stream ablation vs Dita small, same demos, same budget.

Every policy trains multi-task on one kitchen demo store for the same wall-clock budget (the
store's frozen EfficientNet features are cached once, before any clock starts), then evaluates
through ``vlastack eval`` on held-out seeds. Prints and writes a markdown table (per-task and
overall success with 95% Wilson intervals, training steps and throughput, wall times) and the
exact commands.

    .venv/bin/python bench/learning.py                                   # defaults below
    .venv/bin/python bench/learning.py --minutes 4 --eval-episodes 10 --policies dust dita

Stages (each a ``vlastack`` command; reruns resume: the store tops up, finished trainings and
evaluations are reused):

    vlastack collect env=kitchen task=[...] episodes=N cameras=[left,wrist] out=OUT/demos.zarr
    (feature cache)  efficientnet_lite0 over every camera of the store, once
    vlastack train experiment=learning policy=P dataset.path=OUT/demos.zarr run_dir=OUT/P train.max_minutes=M
    vlastack eval checkpoint=OUT/P/checkpoints/last env=kitchen tasks=[...] episodes=E out=OUT/P/eval
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

POLICIES = {  # name -> (policy config group, label)
    "dust": ("dust", "DUST small (dual-stream, world model)"),
    "dust_single_stream": ("dust_single_stream", "DUST small, single stream (no world model)"),
    "dita": ("dita", "Dita small"),
}


def vlastack(argv: list[str]) -> tuple[int, float]:
    """Run ``vlastack <argv>`` in a child process; returns (exit code, seconds)."""
    from vlastack.quickstart import run_vlastack

    print(f"\n$ vlastack {shlex.join(argv)}", flush=True)
    return run_vlastack(argv)


def build_feature_cache(store_path: Path) -> float:
    """Cache efficientnet_lite0 features of every camera of the store (what all three policies read)."""
    import torch

    from vlastack.datasets.store import TrajectoryStore
    from vlastack.policies import feature_cache as fc
    from vlastack.policies.encoders import make_vision_encoder

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    store = TrajectoryStore.open(store_path, mode="a", verify="none")
    enc = make_vision_encoder("efficientnet_lite0")
    for r in fc.cache_features(store, enc, progress=False).values():
        print(f"feature cache: {r.key} {r.status} {r.shape} in {r.seconds:.1f} s", flush=True)
    store.close()
    return time.perf_counter() - t0


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def cell(b: dict) -> str:
    """'k/n = p% [lo-hi]' of a success block from eval_info.json."""
    return f"{b['successes']}/{b['episodes']} = {_pct(b['success_rate'])} [{_pct(b['ci_low'])}-{_pct(b['ci_high'])}]"


def results_markdown(rows: list[dict], tasks: list[str], header: dict, commands: list[str]) -> str:
    """The benchmark's markdown: settings, the success table, training figures, wall times, commands."""
    lines = ["# Learning benchmark: DUST vs single-stream ablation vs Dita (kitchen, CPU)", "",
             f"Run {header['date']} on {header['machine']} with `bench/learning.py {header['args']}`.", "",
             f"- Demos: {header['demos']} scripted-expert demos per task ({', '.join(tasks)}), cameras "
             f"{header['cameras']} at 128x128, one multi-task store; validation: 10% of episodes.",
             f"- Training: each policy for {header['minutes']:g} min wall clock (`train.max_minutes`, set-up "
             "included; features cached beforehand), `experiment=learning` (batch 32, 1 thread, EMA).",
             f"- Evaluation: {header['eval_episodes']} episodes per task on held-out seeds 100000+, receding "
             f"horizon ({header['n_action_steps']} of 16 actions per chunk), 2 env workers; 95% Wilson intervals in "
             "brackets.", ""]
    lines += ["| policy | " + " | ".join(tasks) + " | overall | steps | samples/s | final val loss (own objective) |",
              "| --- | " + " | ".join("---" for _ in tasks) + " | --- | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("eval") is None:
            lines.append(f"| {r['label']} | " + " | ".join("-" for _ in tasks) + f" | failed ({r['error']}) | | | |")
            continue
        s, t = r["eval"]["summary"], r["train"]
        vl = f"{t['val_loss']:.4f}" if isinstance(t.get("val_loss"), (int, float)) else "-"
        lines.append(f"| {r['label']} | " + " | ".join(cell(s["per_task"][k]) for k in tasks)
                     + f" | **{cell(s['overall'])}** | {t['step']} | {t['samples_per_s']:.1f} | {vl} |")
    lines += ["", "Wall time per stage:", "", "| stage | wall |", "| --- | ---: |"]
    lines += [f"| {name} | {sec / 60:.1f} min |" for name, sec in header["walls"]]
    lines += ["", "Commands:", "", "```"] + commands + ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Collect, cache, train and evaluate each policy; write the results markdown."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/learning")
    p.add_argument("--tasks", nargs="+", default=["OpenDrawer", "CloseDrawer"])
    p.add_argument("--demos", type=int, default=30, help="demos per task")
    p.add_argument("--cameras", default="left,wrist")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget per policy")
    p.add_argument("--eval-episodes", type=int, default=10, help="per task")
    p.add_argument("--n-action-steps", type=int, default=16, help="actions executed per 16-action chunk")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--results", default="bench/learning_results.md")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "demos.zarr"
    tasks = f"[{','.join(a.tasks)}]"
    commands: list[str] = []
    walls: list[tuple[str, float]] = []

    def run(name: str, args: list[str]) -> int:
        commands.append("vlastack " + shlex.join(args))
        rc, sec = vlastack(args)
        walls.append((name, sec))
        return rc

    if run("collect", ["collect", "env=kitchen", f"task={tasks}", f"episodes={a.demos}", f"cameras=[{a.cameras}]",
                       f"out={store}"]):
        raise SystemExit("learning: collection failed")
    summary = json.loads(Path(f"{store}.summary.json").read_text())
    walls.append(("collect: every run that filled the store", sum(r["seconds"] for r in summary["runs"])))
    walls.append(("feature cache (efficientnet_lite0)", build_feature_cache(store)))
    rows = []
    for name in a.policies:
        group, label = POLICIES[name]
        run_dir = out / name
        row = {"policy": name, "label": label, "eval": None, "error": None}
        rc = run(f"train {name}", ["train", "experiment=learning", f"policy={group}", f"dataset.path={store}",
                                   f"run_dir={run_dir}", f"train.max_minutes={a.minutes:g}"])
        if rc:
            row["error"] = f"train exit {rc}"
            rows.append(row)
            continue
        row["train"] = json.loads((run_dir / "summary.json").read_text())
        rc = run(f"eval {name}", ["eval", f"checkpoint={run_dir / 'checkpoints' / 'last'}", "env=kitchen",
                                  f"tasks={tasks}", f"episodes={a.eval_episodes}", "videos=1",
                                  f"n_action_steps={a.n_action_steps}",
                                  f"out={run_dir / 'eval'}"])
        if rc:
            row["error"] = f"eval exit {rc}"
        else:
            row["eval"] = json.loads((run_dir / "eval" / "eval_info.json").read_text())
        rows.append(row)
    header = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} CPU cores (shared with other jobs; load average "
                         f"{os.getloadavg()[0]:.1f} at the end)",
              "args": " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)) or "(defaults)",
              "demos": a.demos, "cameras": a.cameras, "n_action_steps": a.n_action_steps, "minutes": a.minutes,
              "eval_episodes": a.eval_episodes,
              "walls": walls}
    md = results_markdown(rows, a.tasks, header, commands)
    res = Path(a.results)
    tmp = res.with_name(res.name + ".tmp")
    tmp.write_text(md)
    os.replace(tmp, res)
    doc = {"header": header, "rows": [{k: v for k, v in r.items() if k != "eval"}
                                      | {"summary": r["eval"]["summary"] if r["eval"] else None} for r in rows]}
    from vlastack.rollout.common import write_json_atomic

    write_json_atomic(out / "learning_results.json", doc)
    print("\n" + md)
    return 0 if all(r["eval"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
