"""Learning benchmark: the DUST ablation grid, Dita and Diffusion Policy on the same demos and budget.

Two suites:

- ``--suite group`` (the multi-task benchmark): at least four tasks of one kitchen task group
  (``vlastack.envs.kitchen.TASK_GROUPS``), every task starting from the group's shared scene so that
  only the instruction says which task is meant. One demo store (the same demos per task for every
  policy); every row trained for the same wall-clock budget (``--minutes``) and, separately, the
  same number of optimizer steps (``--steps``); evaluated on held-out seeds with swapped
  instructions (``language=swap``: per-task success, language-grounded success against the
  ignore-language bound), with a blank instruction (the control), and on the held-out
  layouts/styles (``split=heldout``); DUST's test-time scaling (N_o = 4, 8, 16 at N_A = 4).
  Rows: the five DUST grid rows, Dita small, and LeRobot's Diffusion Policy through
  ``bench/peers`` (when its side venv exists). Writes ``bench/learning_results.md``. The
  world-model rows (``WM_ROWS``: DUST with its loss weight, future offset, target normalisation or
  future-token grid changed) are run only when named in ``--rows``.
- ``--suite drawers`` (the default; the earlier 2-task benchmark): OpenDrawer + CloseDrawer in
  their own scenes, DUST vs the no-world-model baseline vs Dita, one wall-clock budget. Writes
  ``bench/learning_drawers_results.md``.

    .venv/bin/python bench/learning.py                                   # --suite drawers
    .venv/bin/python bench/learning.py --suite group                     # group sink_stove, 4 tasks
    .venv/bin/python bench/learning.py --suite group --full              # 50 demos, 50 episodes per task
    .venv/bin/python bench/learning.py --suite group --smoke             # the plumbing, in minutes
    .venv/bin/python bench/learning.py --suite group --experiment quickstart_group --executor ensemble
        # the quickstart's recipe and executor (DUST rows; a chunk every 2 steps, temporally ensembled)

Stages (each a ``vlastack`` command; reruns resume: the store tops up, finished trainings and
evaluations are reused):

    vlastack collect env=kitchen task=[...] scene=group group=G episodes=N cameras=[left,wrist] out=OUT/demos.zarr
    (feature cache)  efficientnet_lite0 over every camera of the store, once, before any clock starts
    vlastack train experiment=learning policy=P dataset.path=OUT/demos.zarr run_dir=OUT/minutes/P
        train.max_minutes=M train.steps=1000000            (same wall clock)
    vlastack train ... run_dir=OUT/steps/P train.max_minutes=null train.steps=S   (same steps)
    vlastack eval checkpoint=OUT/<budget>/P/checkpoints/last env=kitchen tasks=[...] scene=group group=G
        language=swap | language=blank | split=heldout ... out=OUT/<budget>/P/eval_<kind>
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

HERE = Path(__file__).resolve().parent

#: drawers suite: name -> (policy config group, label)
POLICIES = {
    "dust": ("dust", "DUST small (dual-stream, world model)"),
    "dust_no_wm": ("dust_no_wm", "DUST small, no world model"),
    "dita": ("dita", "Dita small"),
}
#: group suite rows: name -> (policy config group or None for the LeRobot peer, label)
ROWS = {
    "dust": ("dust", "DUST: MMDiT, decoupled noise"),
    "dust_mmdit_joint": ("dust_mmdit_joint", "MMDiT, joint noise"),
    "dust_dit_decoupled": ("dust_dit_decoupled", "DiT, decoupled noise"),
    "dust_dit_joint": ("dust_dit_joint", "DiT, joint noise"),
    "dust_no_wm": ("dust_no_wm", "no world model"),
    "dita": ("dita", "Dita small"),
    "diffusion": (None, "LeRobot Diffusion Policy (no language input)"),
}
#: the world-model investigation (the issue's "if DUST does not lead, find out why"): DUST with one knob of its
#: world-model stream changed; not in the default rows, pick them with --rows. name -> (label, train overrides).
#: The paper's sweep of the loss weight (RoboCasa-100): 0.2 -> .343, 0.5 -> .489, 1.0 -> .501, 2.0 -> .496.
WM_ROWS = {
    "dust_wm_0.2": ("DUST, world-model loss weight 0.2", ("policy.lambda_wm=0.2",)),
    "dust_wm_2": ("DUST, world-model loss weight 2.0", ("policy.lambda_wm=2.0",)),
    "dust_offset_8": ("DUST, future offset k = 8 (was 16)", ("policy.future_offset=8",)),
    "dust_target_raw": ("DUST, raw target features (no per-token LayerNorm)", ("policy.future_target_norm=none",)),
    "dust_grid_4": ("DUST, 4x4 future tokens per camera (was 2x2)", ("policy.future_grid=[4,4]",)),
}
ROWS.update({name: ("dust", label) for name, (label, _) in WM_ROWS.items()})
DEFAULT_ROWS = [r for r in ROWS if r not in WM_ROWS]  # the grid, Dita and Diffusion Policy
DEFAULT_GROUP = "sink_stove"
DEFAULT_TASKS = ("TurnOnStove", "TurnOnSinkFaucet", "OpenSingleDoor", "PnPCounterToStove")
BUDGETS = ("minutes", "steps")
EVALS = ("swap", "blank", "heldout")
SCALING_N_A = 4  # DUST small's N_A, held fixed while N_o varies
SCALING_N_O = (4, 8, 16)
TRAIN_BATCH = 32  # src/vlastack/configs/train/cpu.yaml (experiment=learning): samples per optimizer step
FULL = {"demos": 50, "eval_episodes": 50, "blank_episodes": 50, "minutes": 30.0, "steps": 3000}
SMOKE = {"tasks": ["TurnOnStove", "TurnOnSinkFaucet"], "demos": 2, "minutes": 0.5, "steps": 20,
         "eval_episodes": 1, "blank_episodes": 1, "rows": ["dust", "dust_no_wm", "diffusion"], "max_steps": 50}
NOT_RUN_PEER = "not run: side environment absent"


def vlastack(argv: list[str]) -> tuple[int, float]:
    """Run ``vlastack <argv>`` in a child process; returns (exit code, seconds)."""
    from vlastack.quickstart import run_vlastack

    print(f"\n$ vlastack {shlex.join(argv)}", flush=True)
    return run_vlastack(argv)


def build_feature_cache(store_path: Path) -> float:
    """Cache efficientnet_lite0 features of every camera of the store (what our policies read), on every usable core."""
    import torch

    from vlastack.datasets.store import TrajectoryStore
    from vlastack.policies import feature_cache as fc
    from vlastack.policies.encoders import make_vision_encoder
    from vlastack.train.distributed import usable_cores

    torch.set_num_threads(usable_cores())  # before any clock starts: nothing else runs yet
    t0 = time.perf_counter()
    store = TrajectoryStore.open(store_path, mode="a", verify="none")
    enc = make_vision_encoder("efficientnet_lite0")
    for r in fc.cache_features(store, enc, progress=False).values():
        print(f"feature cache: {r.key} {r.status} {r.shape} in {r.seconds:.1f} s", flush=True)
    store.close()
    return time.perf_counter() - t0


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ report


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def cell(b: Mapping[str, Any]) -> str:
    """'k/n = p% [lo-hi]' of a success block from eval_info.json."""
    return f"{b['successes']}/{b['episodes']} = {_pct(b['success_rate'])} [{_pct(b['ci_low'])}-{_pct(b['ci_high'])}]"


def failure(doc: Mapping[str, Any]) -> str | None:
    """The first error of an evaluation that did not finish (from its eval_info.json), else None."""
    if doc.get("complete", True):
        return None
    errors = [e for r in doc.get("runs", []) for e in r.get("errors", [])]
    return (errors[0].get("error") or "error")[:160].replace("|", "/") if errors else "incomplete"


def grounded_cell(sw: Mapping[str, Any] | None) -> str:
    """Language-grounded success with its interval, from ``summary.language_swap``."""
    if not sw:
        return "-"
    lo, hi = sw["grounded_ci"]
    return f"{sw['grounded_successes']}/{sw['pairs']} = {_pct(sw['grounded_success'])} [{_pct(lo)}-{_pct(hi)}]"


def half_width(n: int, p: float = 0.5) -> float:
    """Half the width of the 95% Wilson interval of ``p`` over ``n`` episodes (0 < n)."""
    from vlastack.rollout.stats import wilson_interval

    lo, hi = wilson_interval(round(p * n), n)
    return (hi - lo) / 2


def episodes_for(h: float, p: float = 0.5) -> int:
    """Episodes needed for a 95% interval of half-width ``h`` around ``p`` (normal approximation)."""
    return math.ceil(1.96 ** 2 * p * (1 - p) / h ** 2)


def resolution_lines(tasks: Sequence[str], eval_episodes: int) -> list[str]:
    """What the run's episode counts can and cannot resolve (interval widths at 50% success)."""
    n_task, n_all = eval_episodes, eval_episodes * len(tasks)
    h_task, h_all = half_width(n_task), half_width(n_all)
    need = episodes_for(0.06)
    return [
        "## What this budget can and cannot resolve", "",
        f"- Per task: {n_task} episodes give a 95% Wilson interval of about +-{100 * h_task:.0f} points at 50% "
        f"success; over the {len(tasks)} tasks ({n_all} episodes per row) about +-{100 * h_all:.0f} points. "
        f"Two rows whose overall rates differ by less than about {200 * h_all:.0f} points have overlapping "
        "intervals: this run cannot order them.",
        f"- The DUST paper's grid differs by about 12 points (RoboCasa-100: DUST .501, DiT-joint .380, GR00T-style "
        f"no world model .417); separating 12 points needs intervals of +-6 points, about {need} episodes per row "
        "(overall), i.e. the `--full` mode's 50 per task over at least 4 tasks gets close (200 per row).",
        "- The language-grounded success is measured over shared start states (every task from the same "
        "seeds); a margin over the ignore-language bound larger than the grounded interval's half-width is "
        "evidence the policy follows the instruction; a smaller one is not.",
        "- Same wall clock is not the same number of steps (rows differ in samples/s); the same-steps table "
        "separates learning per step from speed. Neither says how the rows rank at convergence.", ""]


def _eval_rate(doc: Mapping[str, Any]) -> float | None:
    """Seconds per env step of an evaluation, from its own eval_info.json: the wall time of its runs over
    the env steps they ran (start-up, resets and every worker included: an upper bound for longer runs)."""
    runs = doc.get("runs") or []
    steps = sum(int(r.get("env_steps", 0)) for r in runs)
    secs = sum(float(r.get("seconds", 0.0)) for r in runs)
    return secs / steps if steps > 0 and secs > 0 else None


def task_horizons(tasks: Sequence[str]) -> dict[str, int]:
    """Each kitchen task's own episode horizon (the step cap an uncapped evaluation runs to)."""
    from vlastack.envs.kitchen.tasks import TASKS

    return {t: int(TASKS[t].horizon) for t in tasks}


def full_cost(rows: Sequence[Mapping[str, Any]], horizons: Mapping[str, int], collect_rate: float | None,
              demos_have: int, full: Mapping[str, Any] = FULL) -> tuple[list[str], float]:
    """The ``--full`` mode's expected cost from this run's measured rates: markdown lines and total seconds.

    Rates: collection (stored demos per second, from the store's summary), training (seconds per
    optimizer step and set-up, from each row's same-steps ``summary.json``; a wall-clock row costs
    ``full["minutes"]`` plus a minute of start), evaluation (seconds per env step from each
    eval_info.json, times every episode running to its task's horizon in ``horizons``: an upper
    bound, since successes end early and start-up is paid once).
    """
    n_rows = sum(1 for r in rows if not r.get("skipped"))
    lines = ["## Expected cost of `--full` (from this run's measured rates)", "",
             f"For this run's {len(horizons)} tasks and {n_rows} trained rows, at {full['demos']} demos and "
             f"{full['eval_episodes']} episodes per task ({full['blank_episodes']} blank), {full['minutes']:g} min "
             f"or {full['steps']} steps of training; more tasks or rows scale it. A short run's evaluations are "
             "dominated by start-up, so their per-step rate overstates a long run's.", ""]
    total, missing = 0.0, []
    n_tasks, horizon_sum = len(horizons), sum(horizons.values())
    if collect_rate:
        more = max(0, full["demos"] * n_tasks - demos_have)
        total += more / collect_rate
        lines.append(f"- collect: {more} more demos at {collect_rate:.3f} stored demos/s = {more / collect_rate / 60:.1f} min")
    else:
        missing.append("collection rate")

    def eval_s(doc: Mapping[str, Any] | None, per_task: int, what: str) -> float:
        rate = _eval_rate(doc) if doc else None
        if rate is None:
            missing.append(what)
            return 0.0
        return per_task * horizon_sum * rate

    for r in rows:
        if r.get("skipped"):
            continue
        label, parts = r["label"], []
        for b in r["budgets"].values():
            t = b.get("train")
            if b["budget"] == "minutes":
                sec = 60 * full["minutes"] + 60
                parts.append(f"train {full['minutes']:g} min")
            elif t and t.get("samples_per_s"):
                per_step = TRAIN_BATCH / t["samples_per_s"]
                setup = max(0.0, float(t.get("elapsed_s", 0.0)) - int(t["step"]) * per_step)
                sec = setup + full["steps"] * per_step
                parts.append(f"train {full['steps']} steps at {per_step:.2f} s/step = {sec / 60:.0f} min")
            else:
                missing.append(f"{label} {b['budget']} training rate")
                continue
            if not b.get("evals"):  # trained (or partly) but never evaluated
                missing.append(f"{label} {b['budget']} evaluation rates")
                parts.append("its evaluations: no rate measured")
                total += sec
                continue
            ev = sum(eval_s(doc, full["blank_episodes"] if kind == "blank" else full["eval_episodes"],
                            f"{label} {b['budget']} eval {kind} rate") for kind, doc in b.get("evals", {}).items())
            ev += sum(eval_s(doc, full["eval_episodes"], f"{label} N_o={n_o} rate")
                      for n_o, doc in b.get("scaling", {}).items())
            total += sec + ev
            parts.append(f"its evaluations <= {ev / 60:.0f} min")
        lines.append(f"- {label}: " + (", ".join(parts) or "no rate measured"))
    lines += ["", f"**Expected total: at most {total / 3600:.1f} h** on this machine"
              + (f" (not counted, no rate measured: {', '.join(missing)})" if missing else "")
              + ". Evaluation seconds per env step are read from each eval_info.json (`runs[].seconds` over "
              "`runs[].env_steps`, start-up included), every episode "
              f"counted to its task's horizon ({', '.join(f'{t} {h}' for t, h in horizons.items())} steps); "
              "a GPU shortens training, not the simulation.", ""]
    return lines, total


def group_markdown(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str], header: Mapping[str, Any],
                   commands: Sequence[str]) -> str:
    """The group suite's markdown: settings, one table per budget, test-time scaling, resolution, cost, commands.

    ``rows``: ``{"name", "label", "skipped" (a reason or None), "budgets": {budget: {"budget", "train"
    (summary.json or None), "error", "evals": {swap|blank|heldout: eval_info.json doc or None},
    "scaling": {N_o: doc}}}}``.
    """
    lines = [f"# Learning benchmark: task group `{header['group']}`, {len(tasks)} tasks (kitchen, CPU)", ""]
    if header.get("smoke"):
        lines += ["**A smoke run** (`--smoke`): it proves the plumbing end to end; its figures rank nothing.", ""]
    lines += [f"Run {header['date']} on {header['machine']} with `bench/learning.py {header['args']}`"
              + (f" (this file rendered again from the run's learning_results.json with `bench/learning.py "
                 f"{header['rendered']}`)" if header.get("rendered") else "") + ".", "",
              f"- Demos: {header['demos']} scripted-expert demos per task ({', '.join(tasks)}) in the group's shared "
              f"scene (train split of layouts x styles), cameras {header['cameras']} at 128x128, one store for every "
              "row; validation: 10% of episodes.",
              f"- Training: every row `experiment={header.get('experiment', 'learning')}` of vlastack's (batch "
              f"{TRAIN_BATCH}, 1 thread, EMA, features cached beforehand"
              + (f"; Diffusion Policy: LeRobot's own loop through `bench/peers`, batch {TRAIN_BATCH}, 1 thread, from "
                 "the images" if any(r["name"] == "diffusion" for r in rows) else "")
              + ("; the world-model rows: DUST with the one override their label names"
                 if any(r["name"] in WM_ROWS for r in rows) else "") + "), " + " and ".join(
                  f"once for {header['minutes']:g} min of wall clock" if b == "minutes"
                  else f"once for {header['steps']} optimizer steps" for b in header["budgets"])
              + (f"; {header['jobs']} rows side by side (each evaluation one env worker)"
                 if header.get("jobs", 1) > 1 else "") + ".",
              f"- Evaluation on held-out seeds (100000+): `language=swap` ({header['eval_episodes']} shared start "
              f"states per task, every task from each), `language=blank` ({header['blank_episodes']} per task), "
              f"`split=heldout` (held-out layouts/styles, {header.get('heldout_episodes', header['eval_episodes'])} per task); "
              f"{header_executor_words(header)}"
              + (f", episodes cut at {header['max_steps']} steps" if header.get("max_steps") else "")
              + "; 95% Wilson intervals in brackets.", ""]
    for budget in header["budgets"]:
        what = f"{header['minutes']:g} min of training" if budget == "minutes" else f"{header['steps']} optimizer steps"
        lines += [f"## Same budget: {what}", "",
                  "| policy | " + " | ".join(tasks) + " | language-grounded | ignore-language bound | blank "
                  "instruction | held-out split | steps | samples/s |",
                  "| --- | " + " | ".join("---" for _ in tasks) + " | --- | ---: | --- | --- | ---: | ---: |"]
        for r in rows:
            dash = " | ".join("-" for _ in tasks)
            if r.get("skipped"):
                lines.append(f"| {r['label']} | {dash} | {r['skipped']} | | | | | |")
                continue
            b = r["budgets"].get(budget)
            if b is None:
                continue
            ev, t = b.get("evals", {}), b.get("train") or {}
            swap = ev.get("swap")
            if swap is None or failure(swap):
                why = b.get("error") or (failure(swap) if swap else "no evaluation")
                # "stopped": a training ended by hand (say why and how far), written into the run's JSON
                lines.append(f"| {r['label']} | {dash} | {b.get('stopped') or f'failed ({why})'} | | | | | |")
                continue
            sw = swap["summary"].get("language_swap")
            per_task = " | ".join(cell(swap["summary"]["per_task"][k]) if k in swap["summary"]["per_task"] else "-"
                                  for k in tasks)
            other = [(f"failed ({failure(ev[k])})" if failure(ev[k]) else cell(ev[k]["summary"]["overall"]))
                     if ev.get(k) else "-" for k in ("blank", "heldout")]
            sps = f"{t['samples_per_s']:.1f}" if isinstance(t.get("samples_per_s"), (int, float)) else "-"
            lines.append(f"| {r['label']} | {per_task} | **{grounded_cell(sw)}** | "
                         f"{_pct(sw['ignore_bound']) if sw else '-'} | {other[0]} | {other[1]} | "
                         f"{t.get('step', '-')} | {sps} |")
        lines.append("")
    scaled = [(r, budget, r["budgets"][budget]["scaling"]) for r in rows if not r.get("skipped")
              for budget in header["budgets"] if r["budgets"].get(budget, {}).get("scaling")]
    if scaled:
        lines += [f"## DUST test-time scaling (N_A = {SCALING_N_A}, `language=swap`)", "",
                  "| policy | budget | N_o | language-grounded | overall | seconds per env step (whole evaluation) |",
                  "| --- | --- | ---: | --- | --- | ---: |"]
        for r, budget, sc in scaled:
            for n_o, doc in sorted(sc.items(), key=lambda kv: int(kv[0])):
                if doc is None or failure(doc):
                    lines.append(f"| {r['label']} | {budget} | {n_o} | failed ({failure(doc) if doc else 'no evaluation'}) | | |")
                    continue
                rate = _eval_rate(doc)
                lines.append(f"| {r['label']} | {budget} | {n_o} | {grounded_cell(doc['summary'].get('language_swap'))} "
                             f"| {cell(doc['summary']['overall'])} | {f'{rate:.3f}' if rate else '-'} |")
        lines.append("")
    lines += resolution_lines(tasks, header["eval_episodes"])
    lines += header.get("cost_lines", [])
    lines += ["## Wall time per stage", "", "| stage | wall |", "| --- | ---: |"]
    lines += [f"| {name} | {sec / 60:.1f} min |" for name, sec in header["walls"]]
    lines += ["", "## Commands", "", "```", f".venv/bin/python bench/learning.py {header['args']}", "# stage by stage:"]
    lines += list(commands) + ["```", ""]
    return "\n".join(lines)


def group_plot(rows: Sequence[Mapping[str, Any]], budgets: Sequence[str], path: Path) -> Path | None:
    """PNG beside the results: per budget, each row's language-grounded success (95% Wilson whiskers) and
    its ignore-language bound (a red tick); None when no row has a swap evaluation."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from vlastack.rollout.common import save_figure_atomic

    panels = []
    for budget in budgets:
        bars = []  # (label, rate, lo, hi, bound, "k/n")
        for r in rows:
            b = r.get("budgets", {}).get(budget) or {}
            swap = (b.get("evals") or {}).get("swap")
            sw = swap["summary"].get("language_swap") if swap and not failure(swap) else None
            if sw:
                lo, hi = sw["grounded_ci"]
                bars.append((r["label"], sw["grounded_success"], lo, hi, sw["ignore_bound"],
                             f"{sw['grounded_successes']}/{sw['pairs']}"))
        if bars:
            panels.append((budget, bars))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 3.8), dpi=110, squeeze=False)
    for ax, (budget, bars) in zip(axes[0], panels):
        x = list(range(len(bars)))
        rate = [b[1] for b in bars]
        ax.bar(x, rate, color="#4C72B0")
        ax.errorbar(x, rate, yerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]], fmt="none",
                    ecolor="black", capsize=3, linewidth=1.1)
        ax.hlines([b[4] for b in bars], [i - 0.35 for i in x], [i + 0.35 for i in x], color="#C44E52", linewidth=2,
                  label="ignore-language bound")
        for i, b in zip(x, bars):
            ax.text(i, 1.02, b[5], ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [b[0] for b in bars], rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1.12)
        ax.set_title(f"same {budget}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("grounded success, 95% CI")
    axes[0][0].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def with_plot(md: str, rows: Sequence[Mapping[str, Any]], budgets: Sequence[str], results: Path) -> str:
    """``md`` with the plot of :func:`group_plot` (written beside ``results``, same stem, .png) linked at its end."""
    plot = group_plot(rows, budgets, results.with_suffix(".png"))
    return md + (f"\n![language-grounded success per row]({plot.name})\n" if plot else "")


def drawers_markdown(rows: list[dict], tasks: list[str], header: dict, commands: list[str]) -> str:
    """The drawers suite's markdown: settings, the success table, training figures, wall times, commands."""
    lines = ["# Learning benchmark: DUST vs no-world-model baseline vs Dita (kitchen, CPU)", "",
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


# ------------------------------------------------------------------------------------ stages


class Runner:
    """Runs ``vlastack`` stages, recording each command and its wall time."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.walls: list[tuple[str, float]] = []

    def __call__(self, name: str, args: list[str]) -> int:
        """Run one stage; returns its exit code."""
        self.commands.append("vlastack " + shlex.join(args))
        rc, sec = vlastack(args)
        self.walls.append((name, sec))
        return rc


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_rate(store: Path) -> tuple[float | None, int, float]:
    """(stored demos per second, demos stored, seconds) over every collection run that filled ``store``."""
    doc = _load_json(Path(f"{store}.summary.json")) or {"runs": []}
    n = sum(int(r.get("succeeded", 0)) for r in doc["runs"])
    secs = sum(float(r.get("seconds", 0.0)) for r in doc["runs"])
    return (n / secs if n and secs > 0 else None), n, secs


def _peer_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def side_python(venv: Path | None) -> Path | None:
    """The LeRobot side venv's python (``bench/peers/.venv*``) when one exists, else None (never built here)."""
    cands = [venv] if venv is not None else sorted(HERE.joinpath("peers").glob(".venv*"))
    for v in cands:
        py = Path(v) / "bin" / "python"
        if py.exists():
            return py
    return None


def train_peer(py: Path, store: Path, run_dir: Path, budget: str, a, run: Runner) -> dict:
    """Diffusion Policy in the side venv: the store as a LeRobotDataset, then bench/peers' LeRobot trainer."""
    lerobot = store.parent / "demos_lerobot"
    if not (lerobot / "meta" / "info.json").is_file():
        if run("convert to LeRobotDataset", ["convert", str(store), str(lerobot), "--to", "lerobot", "--quiet"]):
            raise RuntimeError("convert failed")
    peers = _peer_module("peers_run", HERE / "peers" / "run.py")
    ckpt = run_dir / "lerobot_ckpt"
    limit = ["--seconds", str(60 * a.minutes)] if budget == "minutes" else ["--seconds", "1e9", "--max-steps", str(a.steps)]
    cmd = [str(py), str(HERE / "peers" / "lerobot_worker.py"), "train", "--policy", "diffusion", "--dataset", str(lerobot),
           "--overrides", json.dumps(peers.THEIRS["diffusion"]), "--batch", str(TRAIN_BATCH), "--train-threads", "1",
           *limit, "--out", str(ckpt)]
    run.commands.append(shlex.join(cmd))
    t0 = time.perf_counter()
    res = peers.last_json(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout)
    run.walls.append((f"train diffusion ({budget})", time.perf_counter() - t0))
    res["checkpoint"] = str(ckpt)
    wall = float(res.get("wall_s") or 0.0)
    return {"step": res.get("steps"), "samples_per_s": res["samples"] / wall if wall > 0 else None,
            "elapsed_s": wall, "proxy": peers.proxy_for("diffusion", py, res, store, run_dir)}


def chunk_args(a) -> list[str]:
    """How the group suite's evaluations turn chunks into actions: receding (``--n-action-steps`` of each
    chunk) or ACT's temporal ensembling over a chunk planned every ``--replan-every`` steps (the quickstart's)."""
    from vlastack.rollout.executors import eval_overrides

    return eval_overrides(a.executor, a.replan_every if a.executor == "ensemble" else a.n_action_steps)


def header_executor_words(header: Mapping[str, Any]) -> str:
    """The evaluation's executor in words, from a results header (older headers: receding)."""
    from vlastack.rollout.executors import executor_words

    ensemble = header.get("executor") == "ensemble"
    return executor_words(header.get("executor"), header["replan_every"] if ensemble else header["n_action_steps"])


def eval_args(a, ckpt: str, kind: str, out: Path, episodes: int) -> list[str]:
    """The ``vlastack eval`` overrides of one evaluation kind (swap, blank, heldout)."""
    args = ["eval", f"checkpoint={ckpt}", "env=kitchen", f"tasks=[{','.join(a.tasks)}]", "scene=group",
            f"group={a.group}", f"episodes={episodes}", *chunk_args(a), "videos=0", f"out={out}"]
    if a.jobs > 1:  # the rows' jobs share the cores: one env worker per evaluation
        args.append("workers=1")
    if a.max_steps is not None:
        args.append(f"max_steps={a.max_steps}")
    if kind == "swap":
        args.append("language=swap")
        if a.instructions:
            args.append(f"instructions={a.instructions}")
    elif kind == "blank":
        args.append("language=blank")
    elif kind == "heldout":
        args.append("split=heldout")
    else:
        raise ValueError(f"eval kind {kind!r}; valid: {EVALS}")
    return args


def eval_dir(run_dir: Path, kind: str, vision_steps: int | None = None) -> Path:
    """Where a row's evaluation of ``kind`` (at ``vision_steps`` for the test-time scaling) writes."""
    return run_dir / (f"eval_{kind}" if vision_steps is None else f"eval_{kind}_vision{vision_steps}")


def run_eval(args: list[str], name: str, run: Runner, in_process: bool) -> dict | None:
    """One evaluation (a child ``vlastack eval``, or in this process for the LeRobot proxy); its eval_info.json."""
    out = Path(next(x for x in args if x.startswith("out="))[4:])
    if in_process:  # the proxy policy is registered by importing bench/peers/lerobot_proxy here
        _peer_module("lerobot_proxy", HERE / "peers" / "lerobot_proxy.py")
        from vlastack.rollout.evaluate import evaluate

        run.commands.append("(in process) vlastack " + shlex.join(args) + " workers=0")
        t0 = time.perf_counter()
        try:
            evaluate([*args[1:], "workers=0", "progress=false"])
        except Exception as e:  # noqa: BLE001 - the row reports the failure
            print(f"learning: {name} failed: {e}", file=sys.stderr)
        run.walls.append((name, time.perf_counter() - t0))
    else:
        run(name, args)  # a failed evaluation still leaves eval_info.json with its errors (see failure())
    return _load_json(out / "eval_info.json")


def run_row(name: str, a, store: Path, py: Path | None, run: Runner) -> dict[str, Any]:
    """One row of the group suite: train under each budget, then its evaluations (and DUST's scaling)."""
    out = Path(a.out)
    group, label = ROWS[name]
    row: dict[str, Any] = {"name": name, "label": label, "skipped": None, "budgets": {}}
    if group is None and py is None:
        row["skipped"] = NOT_RUN_PEER
        return row
    for budget in a.budgets:
        run_dir = out / budget / name
        b: dict[str, Any] = {"budget": budget, "train": None, "error": None, "evals": {}, "scaling": {}}
        row["budgets"][budget] = b
        limit = ([f"train.max_minutes={a.minutes:g}", "train.steps=1000000"] if budget == "minutes"
                 else ["train.max_minutes=null", f"train.steps={a.steps}"])
        if group is None:
            try:
                b["train"] = train_peer(py, store, run_dir, budget, a, run)
            except Exception as e:  # noqa: BLE001 - the row reports the failure
                b["error"] = f"{type(e).__name__}: {e}"[:200]
                continue
            ckpt = b["train"]["proxy"]
        else:
            overrides = list(WM_ROWS[name][1]) if name in WM_ROWS else []
            if run(f"train {name} ({budget})", ["train", f"experiment={a.experiment}", f"policy={group}",
                                                f"dataset.path={store}", f"run_dir={run_dir}", *limit, *overrides]):
                b["error"] = "train failed"
                continue
            b["train"] = _load_json(run_dir / "summary.json")
            ckpt = str(run_dir / "checkpoints" / "last")
        for kind in EVALS:
            eps = {"blank": a.blank_episodes, "heldout": a.heldout_episodes}.get(kind, a.eval_episodes)
            b["evals"][kind] = run_eval(eval_args(a, ckpt, kind, eval_dir(run_dir, kind), eps),
                                        f"eval {name} {kind} ({budget})", run, in_process=group is None)
        if name == "dust" and budget == a.budgets[0]:
            for n_o in a.scaling:
                args = eval_args(a, ckpt, "swap", eval_dir(run_dir, "swap", n_o), a.eval_episodes)
                args += [f"sampling.action_steps={SCALING_N_A}", f"sampling.vision_steps={n_o}"]
                b["scaling"][n_o] = run_eval(args, f"eval {name} N_o={n_o} ({budget})", run, in_process=False)
    return row


def run_group(a, run: Runner) -> tuple[list[dict], dict]:
    """Collect, cache, train every row under each budget, evaluate; returns (rows, extra header fields)."""
    out = Path(a.out)
    store = out / "demos.zarr"
    tasks = f"[{','.join(a.tasks)}]"
    if run("collect", ["collect", "env=kitchen", f"task={tasks}", "scene=group", f"group={a.group}",
                       f"episodes={a.demos}", f"cameras=[{a.cameras}]", f"out={store}"]):
        raise SystemExit("learning: collection failed")
    rate, n_demos, secs = collect_rate(store)
    run.walls.append(("collect: every run that filled the store", secs))
    run.walls.append(("feature cache (efficientnet_lite0)", build_feature_cache(store)))
    py = side_python(a.peer_venv)
    # rows side by side (--jobs): each row's stages stay in order; pool.map keeps the rows' order
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        rows = list(pool.map(lambda name: run_row(name, a, store, py, run), a.rows))
    cost, _ = full_cost(rows, task_horizons(a.tasks), rate, n_demos)
    return rows, {"cost_lines": cost, "collect_rate": rate}


def run_drawers(a, run: Runner) -> list[dict]:
    """The 2-task drawer suite: collect, cache, train each policy for the wall-clock budget, evaluate."""
    out = Path(a.out)
    store = out / "demos.zarr"
    tasks = f"[{','.join(a.tasks)}]"
    if run("collect", ["collect", "env=kitchen", f"task={tasks}", f"episodes={a.demos}", f"cameras=[{a.cameras}]",
                       f"out={store}"]):
        raise SystemExit("learning: collection failed")
    run.walls.append(("collect: every run that filled the store", collect_rate(store)[2]))
    run.walls.append(("feature cache (efficientnet_lite0)", build_feature_cache(store)))
    rows = []
    for name in a.rows:
        group, label = POLICIES[name]
        run_dir = out / name
        row = {"policy": name, "label": label, "eval": None, "error": None}
        rows.append(row)
        if run(f"train {name}", ["train", "experiment=learning", f"policy={group}", f"dataset.path={store}",
                                 f"run_dir={run_dir}", f"train.max_minutes={a.minutes:g}"]):
            row["error"] = "train failed"
            continue
        row["train"] = _load_json(run_dir / "summary.json")
        if run(f"eval {name}", ["eval", f"checkpoint={run_dir / 'checkpoints' / 'last'}", "env=kitchen",
                                f"tasks={tasks}", f"episodes={a.eval_episodes}", "videos=1",
                                f"n_action_steps={a.n_action_steps}", f"out={run_dir / 'eval'}"]):
            row["error"] = "eval failed"
        else:
            row["eval"] = _load_json(run_dir / "eval" / "eval_info.json")
    return rows


# ------------------------------------------------------------------------------------ main


def experiment_policy(name: str) -> str | None:
    """The policy config group a configs/experiment file pins (``override /policy: X``, followed through
    the experiments it builds on), or None when it leaves the policy to the command line."""
    import importlib.resources

    import yaml

    path = Path(str(importlib.resources.files("vlastack.configs"))) / "experiment" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"learning: --experiment: no {path}")
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, Mapping) and "override /policy" in entry:
            return str(entry["override /policy"])
        if isinstance(entry, str) and entry not in ("_self_",) and "/" not in entry:
            found = experiment_policy(entry)
            if found is not None:
                return found
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, with the suite's, ``--full``'s and ``--smoke``'s defaults filled in; checked."""
    from vlastack.rollout.executors import EVAL_EXECUTORS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--suite", choices=("drawers", "group"), default="drawers")
    p.add_argument("--group", default=DEFAULT_GROUP, help="kitchen task group (--suite group)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help=f"default: drawers OpenDrawer CloseDrawer; group {' '.join(DEFAULT_TASKS)}")
    p.add_argument("--rows", "--policies", dest="rows", nargs="+", default=None,
                   help=f"drawers: {list(POLICIES)}; group: {list(ROWS)} (default: all but the world-model "
                        f"rows {list(WM_ROWS)})")
    p.add_argument("--full", action="store_true", help=f"group: {FULL}")
    p.add_argument("--smoke", action="store_true", help=f"group: {SMOKE}")
    p.add_argument("--out", default=None)
    p.add_argument("--demos", type=int, default=None, help="demos per task (drawers 30, group 25)")
    p.add_argument("--cameras", default="left,wrist")
    p.add_argument("--minutes", type=float, default=None, help="training wall-clock budget per policy (default 8)")
    p.add_argument("--steps", type=int, default=None, help="group: optimizer steps per policy (default 1000)")
    p.add_argument("--budgets", nargs="+", choices=BUDGETS, default=list(BUDGETS), help="group: which budgets")
    p.add_argument("--eval-episodes", type=int, default=None, help="per task (default 10)")
    p.add_argument("--blank-episodes", type=int, default=None, help="group: per task, blank instruction (default 5)")
    p.add_argument("--heldout-episodes", type=int, default=None,
                   help="group: per task, held-out layouts/styles (default: --eval-episodes)")
    p.add_argument("--experiment", default="learning",
                   help="group: the training recipe of our rows (a configs/experiment name; quickstart_group: the "
                        "quickstart's trimmed DUST at lr 1e-3; DUST rows only: others named in --rows are refused, "
                        "and left out of the default rows)")
    p.add_argument("--scaling", default=",".join(map(str, SCALING_N_O)),
                   help=f"group: DUST's test-time scaling, N_o values at N_A = {SCALING_N_A} (comma list; none: skip)")
    p.add_argument("--jobs", type=int, default=1,
                   help="group: rows run side by side (each training one thread, each evaluation one env worker)")
    p.add_argument("--instructions", default=None, help="group: JSON task -> phrasings for the swap evaluation")
    p.add_argument("--n-action-steps", type=int, default=16, help="actions executed per 16-action chunk")
    p.add_argument("--executor", choices=EVAL_EXECUTORS, default="receding",
                   help="group: receding (--n-action-steps of each chunk) or ensemble (ACT's temporal ensembling, a "
                        "chunk every --replan-every steps, as the quickstart evaluates)")
    p.add_argument("--replan-every", type=int, default=2, help="group, --executor ensemble: steps between chunks")
    p.add_argument("--max-steps", type=int, default=None,
                   help="group: per-episode step cap of the evaluations (default: each task's horizon; --smoke 50)")
    p.add_argument("--peer-venv", type=Path, default=None, help="LeRobot side venv (default bench/peers/.venv*)")
    p.add_argument("--results", default=None)
    p.add_argument("--render-from", type=Path, default=None,
                   help="write --results again from a finished run's learning_results.json (runs no stage)")
    a = p.parse_args(argv)
    if (a.full or a.smoke) and a.suite != "group":
        p.error("--full and --smoke belong to --suite group")
    if a.full and a.smoke:
        p.error("--full and --smoke exclude each other")
    preset = FULL if a.full else SMOKE if a.smoke else {}
    group = a.suite == "group"
    rows_given = a.rows is not None
    defaults = {"tasks": list(DEFAULT_TASKS) if group else ["OpenDrawer", "CloseDrawer"],
                "rows": list(DEFAULT_ROWS if group else POLICIES), "demos": 25 if group else 30, "minutes": 8.0,
                "steps": 1000, "eval_episodes": 10, "blank_episodes": 5, "max_steps": None,
                "out": "runs/learning_smoke" if a.smoke else "runs/learning_group" if group else "runs/learning"}
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, preset.get(k, v))
    if a.results is None:
        a.results = (str(Path(a.out) / "learning_results.md") if a.smoke else
                     "bench/learning_results.md" if group else "bench/learning_drawers_results.md")
    valid = ROWS if group else POLICIES
    bad = [r for r in a.rows if r not in valid]
    if bad:
        p.error(f"--rows: unknown {bad}; valid for --suite {a.suite}: {list(valid)}")
    if group:
        from vlastack.envs.kitchen import TASK_GROUPS

        pinned = experiment_policy(a.experiment)
        foreign = [r for r in a.rows if pinned and ROWS[r][0] is not None
                   and ROWS[r][0] != pinned and not ROWS[r][0].startswith(pinned + "_")]
        if foreign and not rows_given:  # the default rows: those this recipe can train
            a.rows = [r for r in a.rows if r not in foreign]
        elif foreign:
            p.error(f"--rows: {foreign} cannot train with --experiment {a.experiment} (it sets up policy "
                    f"{pinned!r}); leave them out or use --experiment learning")

        if a.group not in TASK_GROUPS:
            p.error(f"--group: unknown {a.group!r}; valid: {list(TASK_GROUPS)}")
        outside = [t for t in a.tasks if t not in TASK_GROUPS[a.group]]
        if outside or len(a.tasks) < 2:
            p.error(f"--tasks: need at least two tasks of group {a.group!r} ({', '.join(TASK_GROUPS[a.group])}); "
                    f"not in it: {outside}")
    try:
        a.scaling = [] if a.scaling.strip().lower() == "none" else [int(x) for x in a.scaling.split(",") if x.strip()]
    except ValueError:
        p.error(f"--scaling: comma-separated positive integers or none, got {a.scaling!r}")
    if any(n < 1 for n in a.scaling):
        p.error(f"--scaling: N_o values must be >= 1, got {a.scaling}")
    if a.heldout_episodes is None:
        a.heldout_episodes = a.eval_episodes
    if (a.demos < 2 or min(a.eval_episodes, a.blank_episodes, a.heldout_episodes, a.steps, a.jobs) < 1
            or a.minutes <= 0):
        p.error("--demos must be >= 2 (validation holds one out); --eval-episodes, --blank-episodes, "
                "--heldout-episodes, --steps, --jobs >= 1; --minutes > 0")
    if a.executor == "ensemble" and (a.suite != "group" or not 1 <= a.replan_every <= 16):
        p.error("--executor ensemble belongs to --suite group, with --replan-every 1..16 (a chunk holds 16 actions)")
    return a


def render_again(a: argparse.Namespace, args: str) -> int:
    """``--render-from``: the results markdown of a finished run, from its learning_results.json, with the
    ``--full`` cost recomputed from its rates by this version of the script."""
    doc = json.loads(a.render_from.read_text())
    if doc.get("suite") != a.suite or "tasks" not in doc:
        raise SystemExit(f"learning: {a.render_from} holds suite {doc.get('suite')!r}"
                         + ("" if "tasks" in doc else " without its tasks (written by an older version)")
                         + f"; asked for --suite {a.suite}")
    header, rows = doc["header"], doc["rows"]
    if a.suite == "group":  # evaluations as their files now stand (a failed stage still left eval_info.json)
        for r in rows:
            for budget, b in r["budgets"].items():
                run_dir = a.render_from.parent / budget / r["name"]
                for kind in b.get("evals", {}):
                    b["evals"][kind] = _load_json(eval_dir(run_dir, kind) / "eval_info.json")
                for n_o in b.get("scaling", {}):
                    b["scaling"][n_o] = _load_json(eval_dir(run_dir, "swap", int(n_o)) / "eval_info.json")
        rate, n_demos, _ = collect_rate(a.render_from.parent / "demos.zarr")
        header["cost_lines"] = full_cost(rows, task_horizons(doc["tasks"]), rate, n_demos)[0]
        header["rendered"] = args
        md = group_markdown(rows, doc["tasks"], header, doc["commands"])
        md = with_plot(md, rows, header["budgets"], Path(a.results))
    else:
        md = drawers_markdown(rows, doc["tasks"], header, doc["commands"])
    write_text_atomic(Path(a.results), md)
    print(md + f"\nresults: {a.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suite; write the results markdown (atomically) and a JSON beside the runs."""
    a = parse_args(argv)
    if a.render_from is not None:
        return render_again(a, " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    run = Runner()
    header: dict[str, Any] = {
        "args": " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)) or "(defaults)",
        "demos": a.demos, "cameras": a.cameras, "n_action_steps": a.n_action_steps, "minutes": a.minutes,
        "executor": a.executor, "replan_every": a.replan_every,
        "eval_episodes": a.eval_episodes}
    if a.suite == "group":
        rows, extra = run_group(a, run)
        header.update(extra, group=a.group, steps=a.steps, blank_episodes=a.blank_episodes, budgets=a.budgets,
                      heldout_episodes=a.heldout_episodes, jobs=a.jobs, experiment=a.experiment,
                      smoke=a.smoke, max_steps=a.max_steps)
        ok = all(r.get("skipped") or all(b.get("evals", {}).get("swap") is not None and all(
            d is not None and not failure(d) for d in [*b["evals"].values(), *b["scaling"].values()])
            for b in r["budgets"].values()) for r in rows)
    else:
        rows = run_drawers(a, run)
        ok = all(r["eval"] is not None for r in rows)
    header.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), walls=run.walls,
                  machine=f"{os.cpu_count()} CPU cores (shared with other jobs; load average "
                          f"{os.getloadavg()[0]:.1f} at the end)")
    render: Callable[..., str] = group_markdown if a.suite == "group" else drawers_markdown
    md = render(rows, a.tasks, header, run.commands)
    if a.suite == "group":
        md = with_plot(md, rows, a.budgets, Path(a.results))
    write_text_atomic(Path(a.results), md)
    from vlastack.rollout.common import write_json_atomic

    write_json_atomic(Path(a.out) / "learning_results.json", {"header": header, "rows": rows, "suite": a.suite,
                                                               "tasks": a.tasks, "commands": run.commands})
    print("\n" + md)
    print(f"results: {a.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
