"""`make quickstart`: demos of several tasks in one shared kitchen scene -> DUST ``small`` -> success,
with the instruction deciding which task is meant.

Default: three tasks of task group ``sink_stove`` (TurnOnStove, TurnOnSinkFaucet, OpenSingleDoor),
25 demos each, TurnOnStove's windows read 3 times per epoch, training as two DDP ranks
(``--ranks``), evaluation with temporally ensembled chunks. Measured end to end (``python -m
vlastack.quickstart``, fresh output, 2 cores, 2026-12-06): 19.4 min; 2,956 training steps in 14
minutes; 29/30 = 97% (95% Wilson interval 83-99%) with swapped instructions from shared starts
(the checkpoint over two more blocks of starts: 80/90 = 89%), against an ignore-language bound of
33%; 0/12 with a blank instruction. Earlier recipes: 77% (whole chunks, two future cameras), 63-70%
(no oversampling). From a clean clone, set-up included (``time make quickstart``, the deadline giving
training 12.2 and 11.6 min): 19.3 and 19.4 min, 26/30 = 87% both (80/90 = 89% and 75/90 = 83% over
three blocks of starts), blank 0/12 both.
``--single`` (``make quickstart-drawer``) is the single-task smoke path:
OpenDrawer in its own scene, 40 demos, whole chunks, which reached 18/20 and 20/20 in about 11 min.

Stages (each one ``vlastack`` subcommand in its own process, so every stage is a command a user
can rerun by hand; the report lists them):

1. ``collect``: scripted-expert demos of the default kitchen task (cached: a rerun tops up);
2. ``inspect``: a summary of the store;
3. ``train``: DUST ``small`` (trimmed to 2 MMDiT + 1 stream block) with
   ``configs/experiment/quickstart_group.yaml`` (``quickstart.yaml`` with --single: CPU loop, one
   thread per process, a 14- / 8-minute budget, frozen EfficientNet features cached in the store
   once), as ``--ranks`` DDP processes under torchrun (2 on a machine with 2 or more cores), with
   TurnOnStove's windows read 3 times per epoch (``--oversample``: ``dataset.oversample``); with a
   task group the run keeps a deadline (``--deadline``, 19.5 min from the start of ``make
   quickstart``, set-up included): what set-up and collection took beyond the usual comes out of the
   14 training minutes, 3.5 min are kept for evaluation;
4. ``eval``: held-out seeds in simulation (episodes resume), a 16-action chunk planned every 2 steps
   and temporally ensembled (``--executor``, ``--every``; ``--single``: whole chunks), mp4 of the
   first episode;
5. ``runs/quickstart/report.md``: success rate with its 95% Wilson interval, the loss curve
   (``train_loss.png``), a link to the first video, the wall time of every stage, the commands.

    .venv/bin/python -m vlastack.quickstart                      # the defaults below
    .venv/bin/python -m vlastack.quickstart --out runs/qs2 --minutes 6 --eval-episodes 10

Why these defaults (measured on the 2-core machine, shared with other jobs): OpenDrawer's expert
succeeds on every seed in ~64 steps; two cameras (left overview + wrist) render ~2x faster than
three and halve the feature cache; a 1-thread training process is ~10x faster than torch's
2-thread default when the cores are shared, and two 1-thread DDP ranks trained at 103.6 samples/s
where one process had reached 55.6 (the multi-task run, before and after ``--ranks``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlastack.rollout.executors import EVAL_EXECUTORS, eval_overrides, executor_words

DEFAULT_OUT = "runs/quickstart"
DEFAULT_TASK = "OpenDrawer"  # the single-task smoke path (--single, make quickstart-drawer)
#: the multi-task default: tasks of one kitchen task group, one shared scene, the instruction decides
DEFAULT_GROUP = "sink_stove"
DEFAULT_GROUP_TASKS = ("TurnOnStove", "TurnOnSinkFaucet", "OpenSingleDoor")
DEFAULT_GROUP_DEMOS = 25  # per task
#: training windows read k times per epoch (dataset.oversample), for the tasks of the run that are listed:
#: TurnOnStove's one deciding word (front left / right burner) is not learned from a third of the samples
#: (1/10-3/10 in 9 trainings at 1,500 steps), but is alone (18/20); see bench/learning_results.md
OVERSAMPLE = {"TurnOnStove": 3}
DEFAULT_GROUP_EVAL = 10  # per task, swapped instructions from shared starts
DEFAULT_BLANK_EVAL = 4  # per task, blank instruction (the control)
DEFAULT_DEMOS = 40
DEFAULT_CAMERAS = ("left", "wrist")
DEFAULT_EVAL_EPISODES = 20
# How evaluation turns 16-action chunks into actions (eval's executor). Single task (OpenDrawer): whole
# chunks, receding horizon (7/10 vs 4/10 with 8 of 16 on the same checkpoint). Task group: ACT's temporal
# ensembling over a chunk planned every GROUP_REPLAN steps: 75/90 against 68/90 with whole chunks on one
# checkpoint (bench/learning_results.md, "Executors and one future camera").
N_ACTION_STEPS = 16
EXECUTORS = EVAL_EXECUTORS
GROUP_EXECUTOR = "ensemble"
GROUP_REPLAN = 2
#: the task-group run ends within this many minutes of its start (`make quickstart`: before `make setup`),
#: so a slow set-up or collection comes out of the training budget, not on top of it (--deadline)
GROUP_DEADLINE_MIN = 19.5
#: minutes kept for both evaluations and the report at the default episodes (3 tasks x 10 swap + 4 blank):
#: measured 3.4 and 3.1 (swap 1.9 / 1.8, blank 1.5 / 1.3); scaled by episodes otherwise (eval_reserve)
EVAL_RESERVE_MIN = 3.5
#: the least training a deadline leaves (a later finish, said, rather than an untrained policy)
MIN_TRAIN_MIN = 4.0
#: `make quickstart` sets it (epoch seconds, before its set-up) so the deadline counts set-up too
START_ENV = "VLASTACK_QUICKSTART_T0"
LOSS_PNG = "train_loss.png"
REPORT = "report.md"
HISTORY = "quickstart_runs.json"


@dataclass
class Stage:
    """One finished (or failed) stage: its title, the ``vlastack`` arguments, exit code and wall time."""

    title: str
    argv: list[str]
    rc: int
    seconds: float
    ranks: int = 1  # processes (torchrun DDP ranks) the stage ran as

    @property
    def command(self) -> str:
        """The stage as a shell command line."""
        return launcher(self.ranks) + " " + shlex.join(self.argv)


def launcher(ranks: int = 1) -> str:
    """How a stage is launched, as a user would type it: ``vlastack`` or ``torchrun ... -m vlastack.cli``."""
    return "vlastack" if ranks <= 1 else f"torchrun --standalone --nproc-per-node={ranks} -m vlastack.cli"


def stage_commands(out: Path, task: str | Sequence[str], demos: int, cameras: Sequence[str], eval_episodes: int,
                   minutes: float | None, group: str | None = None,
                   blank_episodes: int = 0, oversample: Mapping[str, int] | None = None,
                   executor: str | None = None, every: int | None = None) -> list[tuple[str, list[str]]]:
    """(title, ``vlastack`` argv) of every stage, in order.

    With ``group``, the tasks run in that task group's shared scene: demos of every task from the
    same kind of start, evaluation with swapped instructions (``language=swap``) and, with
    ``blank_episodes``, the blank-instruction control; ``oversample`` (task -> k) goes to training as
    ``dataset.oversample`` for the tasks of this run. ``executor``: ``receding`` (run ``every``
    actions of each chunk, default 16) or ``ensemble`` (a chunk planned every ``every`` steps, default
    2, ACT's temporal ensembling); default ``ensemble`` with ``group``, else ``receding``.
    """
    tasks = [task] if isinstance(task, str) else list(task)
    executor = executor or ("receding" if group is None else GROUP_EXECUTOR)
    if every is None:
        every = N_ACTION_STEPS if executor == "receding" else GROUP_REPLAN
    chunks = eval_overrides(executor, every)  # an unknown executor: ExecutorError (a ValueError)
    store, train_dir = out / "demos.zarr", out / "train"
    train = ["train", "experiment=quickstart" if group is None else "experiment=quickstart_group",
             f"dataset.path={store}", f"run_dir={train_dir}"]
    if minutes is not None:
        train.append(f"train.max_minutes={minutes:g}")
    over = {t: int(k) for t, k in (oversample or {}).items() if t in tasks and int(k) > 1}
    if over:
        train.append("dataset.oversample={" + ",".join(f"{t}:{k}" for t, k in over.items()) + "}")
    scene = [] if group is None else ["scene=group", f"group={group}"]
    ckpt = f"checkpoint={train_dir / 'checkpoints' / 'last'}"
    evaluate = ["eval", ckpt, "env=kitchen", f"tasks=[{','.join(tasks)}]", *scene,
                *chunks, "videos=1"]
    stages = [
        ("collect demos", ["collect", "env=kitchen", f"task=[{','.join(tasks)}]" if group else f"task={task}",
                           *scene, f"episodes={demos}", f"cameras=[{','.join(cameras)}]", f"out={store}"]),
        ("inspect store", ["inspect", str(store)]),
        ("train DUST small", train),
        ("evaluate", [*evaluate, f"episodes={eval_episodes}", *(["language=swap"] if group else []),
                      f"out={out / 'eval'}"]),
    ]
    if group is not None and blank_episodes:
        stages.append(("evaluate, blank instruction", [*evaluate[:-1], "videos=0", f"episodes={blank_episodes}",
                                                       "language=blank", f"out={out / 'eval_blank'}"]))
    return stages


def run_stage(title: str, argv: list[str], ranks: int = 1) -> Stage:
    """Run ``vlastack <argv>`` in a child process (``ranks`` > 1: as DDP ranks under torchrun); time it."""
    print(f"\n== {title}: {launcher(ranks)} {shlex.join(argv)}", flush=True)
    rc, seconds = run_vlastack(argv, ranks)
    return Stage(title, list(argv), rc, seconds, ranks)


def run_vlastack(argv: Sequence[str], ranks: int = 1) -> tuple[int, float]:
    """Run ``vlastack <argv>`` in a child process with offscreen GL; returns (exit code, seconds).

    With ``ranks`` > 1 the command runs as that many DDP processes on this machine
    (``torch.distributed.run --standalone``; gloo on a CPU), one thread each.
    """
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    run = [sys.executable, "-m", "vlastack.cli"] if ranks <= 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "vlastack.cli"]
    t0 = time.perf_counter()
    rc = subprocess.call([*run, *argv], env=env)
    return int(rc), time.perf_counter() - t0


def experiment_minutes(experiment: str) -> float:
    """``train.max_minutes`` of ``vlastack train experiment=<experiment>`` as the train command composes it
    (its defaults, ``$VLASTACK_CONFIGS``): ``quickstart_group`` -> 14."""
    from vlastack import hydra_app

    return float(hydra_app.compose("train", [f"experiment={experiment}"]).train.max_minutes)


def minutes_since(t0: float) -> float:
    """Wall-clock minutes from ``t0`` (epoch seconds) to now."""
    return (time.time() - t0) / 60


def eval_reserve(tasks: int, eval_episodes: int, blank_episodes: int) -> float:
    """Minutes to keep for the evaluations: :data:`EVAL_RESERVE_MIN` scaled by their episodes, a blank
    one counted twice (it mostly fails, so it runs to the task's horizon: 1.5 min for 12 against
    1.9 for 30 swapped)."""
    default = (DEFAULT_GROUP_EVAL + 2 * DEFAULT_BLANK_EVAL) * len(DEFAULT_GROUP_TASKS)
    return EVAL_RESERVE_MIN * (eval_episodes + 2 * blank_episodes) * tasks / default


def deadline_minutes(elapsed_min: float, deadline_min: float, cap_min: float,
                     reserve_min: float = EVAL_RESERVE_MIN) -> tuple[float, bool]:
    """Training minutes that end the run by ``deadline_min`` when ``elapsed_min`` are spent and
    ``reserve_min`` are kept for evaluation: at most ``cap_min`` (the recipe's budget), at least
    ``MIN_TRAIN_MIN``; (minutes, whether the deadline can still be met)."""
    left = deadline_min - elapsed_min - reserve_min
    return round(max(MIN_TRAIN_MIN, min(cap_min, left)), 1), left >= MIN_TRAIN_MIN


# ------------------------------------------------------------------------------------ report


def read_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``metrics.jsonl`` -> {"train": [(step, loss)], "val": [...], "train_action": [...]}, sorted by step.

    ``train_action`` is the action term of the training loss (``loss_action``) where the policy logs
    one. A resumed run appends again from its checkpoint: the last record of a (split, step) wins.
    """
    curves: dict[str, dict[int, float]] = {"train": {}, "val": {}, "train_action": {}}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
            split, loss = rec.get("split"), rec.get("loss")
            for key, value in ((split, loss), (f"{split}_action", rec.get("loss_action"))):
                if key in curves and isinstance(value, (int, float)) and math.isfinite(value):
                    curves[key][int(rec["step"])] = float(value)
    return {k: sorted(v.items()) for k, v in curves.items()}


def plot_loss(curves: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike, title: str = "") -> Path:
    """Train and validation loss vs step as a PNG (written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from vlastack.rollout.common import save_figure_atomic

    if not curves.get("train") and not curves.get("val"):
        raise ValueError("plot_loss: no train or val loss points to plot")
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    for split, style in (("train", dict(color="#4C72B0", linewidth=1.0, label="train (all terms)")),
                         ("val", dict(color="#DD8452", marker="o", markersize=3, linewidth=1.4,
                                      label="validation (EMA weights)")),
                         ("train_action", dict(color="#55A868", linewidth=1.0, linestyle="--",
                                               label="train, action term"))):
        pts = curves.get(split) or []
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    if title:  # wrapped to the axes' width (a task list runs long)
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def read_history(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every quickstart invocation recorded in ``out/quickstart_runs.json`` (oldest first; [] when none)."""
    path = Path(out) / HISTORY
    return list(json.loads(path.read_text())["runs"]) if path.is_file() else []


def record_run(out: str | os.PathLike, stages: Sequence[Stage]) -> None:
    """Append this invocation's stages (title, command, exit code, seconds) to ``out/quickstart_runs.json``."""
    out = Path(out)
    runs = read_history(out) + [{"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": [
        {"title": s.title, "command": s.command, "rc": s.rc, "seconds": round(s.seconds, 2)} for s in stages]}]
    tmp = out / (HISTORY + ".tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=1))
    os.replace(tmp, out / HISTORY)


def _task_table(doc: Mapping[str, Any]) -> list[str]:
    rows = ["| task | success | 95% Wilson interval |", "| --- | ---: | ---: |"]
    for t, b in doc["summary"]["per_task"].items():
        rows.append(f"| {t} | {b['successes']}/{b['episodes']} = {_pct(b['success_rate'])} | "
                    f"{_pct(b['ci_low'])}-{_pct(b['ci_high'])} |")
    return rows + [""]


def _language_lines(out: Path, doc: Mapping[str, Any]) -> list[str]:
    """The swap block (language-grounded success vs the ignore-language bound) and the blank control."""
    lines: list[str] = []
    sw = doc["summary"].get("language_swap")
    if sw:
        lo, hi = sw["grounded_ci"]
        lines += [f"**Language-grounded success: {sw['grounded_successes']}/{sw['pairs']} = "
                  f"{_pct(sw['grounded_success'])}** ({_pct(lo)}-{_pct(hi)}) over {sw['seeds']} shared start states x "
                  f"{len(sw['tasks'])} instructions, against the **ignore-language bound "
                  f"{_pct(sw['ignore_bound'])}** (a policy that does the same thing whatever it is told solves at most "
                  f"one task per start: at most {_pct(sw['chance_bound'])}); every task solved from "
                  f"{sw['all_solved_seeds']} of {sw['seeds']} starts.", ""]
    blank_path = out / "eval_blank" / "eval_info.json"
    if blank_path.is_file():
        b = json.loads(blank_path.read_text())["summary"]["overall"]
        o = doc["summary"]["overall"]
        lines += [f"Blank-instruction control: {b['successes']}/{b['episodes']} = {_pct(b['success_rate'])} "
                  f"({_pct(b['ci_low'])}-{_pct(b['ci_high'])}) with no instruction, against "
                  f"{_pct(o['success_rate'])} when told the task: the effect of language is "
                  f"{100 * (o['success_rate'] - b['success_rate']):+.0f} points.", ""]
    return lines


def _executor_words(doc: Mapping[str, Any]) -> str:
    """How the evaluation turned chunks into actions, from its settings, in words."""
    st = doc.get("settings", {})
    ensemble = st.get("executor") == "ensemble"
    every = (st.get("executor_options") or {}).get("replan_every", 1) if ensemble else st.get("n_action_steps")
    return executor_words(st.get("executor", "receding"), every)


def write_report(out: str | os.PathLike, task: str | Sequence[str], stages: Sequence[Stage],
                 notes: Sequence[str] = ()) -> str:
    """Write ``out/report.md`` (and ``out/train_loss.png``) from the run's files; returns the markdown.

    Reads ``out/eval/eval_info.json`` (success, Wilson interval, first video), ``out/train/metrics.jsonl``
    (loss curve), ``out/train/summary.json`` (steps, throughput) and ``out/quickstart_runs.json`` (the
    first invocation's wall times, shown beside this one's when they differ); a part whose file is
    missing says so instead of a figure.
    """
    out = Path(out)
    tasks = [task] if isinstance(task, str) else list(task)
    name = tasks[0] if len(tasks) == 1 else f"{len(tasks)} tasks ({', '.join(tasks)})"
    lines = [f"# vlastack quickstart: DUST small on {name}", ""]
    info_path = out / "eval" / "eval_info.json"
    doc: dict[str, Any] | None = json.loads(info_path.read_text()) if info_path.is_file() else None
    if doc is not None:
        o = doc["summary"]["overall"]
        seeds = sorted(int(e["seed"]) for e in doc["episodes"])
        scene = doc.get("settings", {}).get("env_kwargs", {})
        where = f" in task group `{scene['group']}`'s shared scene" if scene.get("scene") == "group" else ""
        lines += [f"**Success: {o['successes']}/{o['episodes']} = {_pct(o['success_rate'])}** "
                  f"(95% Wilson interval {_pct(o['ci_low'])}-{_pct(o['ci_high'])}) on held-out seeds "
                  f"{seeds[0]}-{seeds[-1]}{where}, {o['mean_steps']:.0f} steps per episode on average"
                  + ("" if doc.get("complete") else " (evaluation incomplete)") + f"; {_executor_words(doc)}.", ""]
        if len(doc["summary"]["per_task"]) > 1:
            lines += _task_table(doc)
        lines += _language_lines(out, doc)
    else:
        lines += ["No evaluation result (`eval/eval_info.json` is missing).", ""]
    # stages
    # wall times: this invocation, and the first one in this directory (later ones reuse cached stages)
    history = read_history(out)
    first = history[0]["stages"] if len(history) > 1 else None
    first_s = {d["title"]: d["seconds"] for d in first} if first else {}
    head = "| stage | wall time | exit |" + (" first run here |" if first else "")
    lines += [head, "| --- | ---: | ---: |" + (" ---: |" if first else "")]
    for s in stages:
        extra = f" {_minutes(first_s[s.title])} |" if s.title in first_s else (" - |" if first else "")
        lines.append(f"| {s.title} | {_minutes(s.seconds)} | {s.rc} |{extra}")
    total = _minutes(sum(s.seconds for s in stages))
    lines += [f"| **total** | **{total}** | |" + (f" **{_minutes(sum(first_s.values()))}** |" if first else ""), ""]
    lines += [*notes, ""] if notes else []
    # training
    summary_path, metrics_path = out / "train" / "summary.json", out / "train" / "metrics.jsonl"
    lines += ["## Training", ""]
    if summary_path.is_file():
        ts = json.loads(summary_path.read_text())
        vl = f"{ts['val_loss']:.4f}" if isinstance(ts.get("val_loss"), (int, float)) else "-"
        tl = f"{ts['train_loss']:.4f}" if isinstance(ts.get("train_loss"), (int, float)) else "-"
        lines += [f"{ts['step']} optimizer steps ({ts['ended_by']}), {ts['samples_per_s']:.1f} samples/s, "
                  f"{_minutes(ts['elapsed_s'])} including set-up; final train loss {tl}, validation loss {vl}; "
                  f"features: {ts.get('feature_encoder') or 'images'}.", ""]
    config_path = out / "train" / "config.yaml"
    if config_path.is_file():
        from omegaconf import OmegaConf

        pol = OmegaConf.to_container(OmegaConf.load(config_path)).get("policy") or {}
        changed = ", ".join(f"{k}={v}" for k, v in pol.items() if v is not None and k not in ("name", "preset"))
        lines += [f"Policy: `{pol.get('name')}` preset `{pol.get('preset')}`"
                  + (f" with {changed}" if changed else "") + " (the rest: the preset's values and the data's "
                  "cameras and sizes).", ""]
    if metrics_path.is_file():
        curves = read_metrics(metrics_path)
        if curves["train"] or curves["val"]:
            plot_loss(curves, out / LOSS_PNG, title=f"DUST small on {name}")
            lines += [f"![training loss]({LOSS_PNG})", ""]
    else:
        lines += ["No training metrics (`train/metrics.jsonl` is missing).", ""]
    # video
    if doc is not None:
        videos = [e for e in doc["episodes"] if e.get("video")]
        lines += ["## Video" if len(videos) < 2 else "## Videos", ""]
        for first in videos:  # the first episode of each task
            rel = Path("eval") / first["video"]
            told = f", told \"{first['instruction']}\"" if len(tasks) > 1 and first.get("instruction") else ""
            lines += [f"- [{first['task']}, seed {first['seed']}{told}: {'success' if first['success'] else 'failure'} "
                      f"in {first['steps']} steps]({rel.as_posix()})"]
        if videos:
            lines += [""]
        else:
            lines += ["No video was recorded.", ""]
        lines += ["Per-episode results: `eval/eval_info.json`; summary table: `eval/eval_summary.md`.", ""]
    # reproduce
    lines += ["## Reproduce", "", "```", "make quickstart            # = .venv/bin/python -m vlastack.quickstart",
              "# or stage by stage:"]
    lines += [s.command for s in stages]
    lines += ["```", ""]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (REPORT + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out / REPORT)
    return text


# ------------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlastack.quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("VLASTACK_QUICKSTART_DIR", DEFAULT_OUT),
                   help=f"run directory (default {DEFAULT_OUT}; reruns resume every stage)")
    p.add_argument("--single", action="store_true",
                   help=f"the single-task smoke path: {DEFAULT_TASK} in its own scene (make quickstart-drawer)")
    p.add_argument("--group", default=DEFAULT_GROUP, help="kitchen task group whose shared scene the tasks run in")
    p.add_argument("--task", default=os.environ.get("VLASTACK_QUICKSTART_TASK"),
                   help=f"comma-separated tasks (default: {','.join(DEFAULT_GROUP_TASKS)}; --single: {DEFAULT_TASK})")
    p.add_argument("--demos", type=int, default=None,
                   help=f"expert demos per task (default {DEFAULT_GROUP_DEMOS}; --single: {DEFAULT_DEMOS})")
    p.add_argument("--blank-episodes", type=int, default=DEFAULT_BLANK_EVAL,
                   help="per task, evaluated with a blank instruction (the control); 0 skips it")
    p.add_argument("--cameras", default=",".join(DEFAULT_CAMERAS), help="comma-separated kitchen cameras")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help=f"per task (default {DEFAULT_GROUP_EVAL}; --single: {DEFAULT_EVAL_EPISODES})")
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget in minutes, no deadline (default: the experiment's train.max_minutes, "
                        "quickstart_group 14 / quickstart 8, less when --deadline needs it)")
    p.add_argument("--deadline", type=float, default=None,
                   help=f"task group: end the run within this many minutes of its start (default {GROUP_DEADLINE_MIN}; "
                        f"counted from ${START_ENV} when set, as `make quickstart` does before its set-up): the "
                        f"training budget shrinks by what set-up and collection took, keeping {EVAL_RESERVE_MIN} min "
                        "for evaluation (scaled by its episodes); 0: no deadline; --minutes overrides it")
    p.add_argument("--oversample", default=",".join(f"{t}:{k}" for t, k in OVERSAMPLE.items()),
                   help="TASK:K,... : that task's training windows read K times per epoch, where it is among the "
                        "tasks (default %(default)s; none: every window once)")
    p.add_argument("--executor", choices=EXECUTORS, default=None,
                   help=f"how evaluation turns chunks into actions (default {GROUP_EXECUTOR}; --single: receding)")
    p.add_argument("--every", type=int, default=None,
                   help=f"receding: actions run per chunk (default {N_ACTION_STEPS}); ensemble: steps between "
                        f"chunks (default {GROUP_REPLAN})")
    p.add_argument("--ranks", type=int, default=None,
                   help="training processes (DDP over gloo, one thread each; default: 2 when the machine has "
                        "2 or more cores, else 1)")
    return p


def run_start() -> float:
    """When this run started (epoch seconds): ``$VLASTACK_QUICKSTART_T0`` (`make quickstart` sets it before
    its set-up) or now; a value that is not a time of the last 2 hours is an error that names it."""
    now = time.time()
    raw = os.environ.get(START_ENV)
    if not raw:
        return now
    try:
        t0 = float(raw)
    except ValueError:
        raise SystemExit(f"quickstart: ${START_ENV}={raw!r} is not a time in epoch seconds") from None
    if not now - 7200 <= t0 <= now + 1:
        raise SystemExit(f"quickstart: ${START_ENV}={raw} is not a time of the last 2 hours "
                         f"(now {now:.0f}); unset it or set it to `date +%s`")
    return t0


def parse_oversample(text: str) -> dict[str, int]:
    """``"TASK:K,..."`` (or ``none``) -> {task: k}; a malformed entry is a clear error."""
    if text.strip().lower() in ("", "none"):
        return {}
    out = {}
    for part in text.split(","):
        task, _, k = part.partition(":")
        if not task.strip() or not k.strip().isdigit() or int(k) < 1:
            raise SystemExit(f"quickstart: --oversample: expected TASK:K with K >= 1 (comma-separated) or none, "
                             f"got {part!r}")
        out[task.strip()] = int(k)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the stages in order (stopping at the first failure), then write the report."""
    a = _parser().parse_args(argv)
    started = run_start()
    group = None if a.single else a.group
    task = a.task or (DEFAULT_TASK if a.single else ",".join(DEFAULT_GROUP_TASKS))
    tasks = [t for t in task.split(",") if t]
    if a.demos is None:
        a.demos = int(os.environ.get("VLASTACK_QUICKSTART_EPISODES", DEFAULT_DEMOS if a.single else DEFAULT_GROUP_DEMOS))
    if a.eval_episodes is None:
        a.eval_episodes = DEFAULT_EVAL_EPISODES if a.single else DEFAULT_GROUP_EVAL
    if a.single and len(tasks) != 1:
        raise SystemExit(f"quickstart: --single takes one task, got {tasks}")
    if group is not None:
        from vlastack.envs.kitchen.groups import TASK_GROUPS

        if group not in TASK_GROUPS:
            raise SystemExit(f"quickstart: unknown --group {group!r}; valid: {', '.join(TASK_GROUPS)}")
        outside = [t for t in tasks if t not in TASK_GROUPS[group]]
        if outside or len(tasks) < 2:
            raise SystemExit(f"quickstart: --task needs at least two tasks of group {group!r} "
                             f"({', '.join(TASK_GROUPS[group])}); not in it: {outside}")
    cameras = [c for c in a.cameras.split(",") if c]
    oversample = parse_oversample(a.oversample)
    if a.deadline is not None and a.deadline < 0:
        raise SystemExit(f"quickstart: --deadline must be >= 0 minutes (0: none), got {a.deadline:g}")
    if a.demos < 2:
        raise SystemExit("quickstart: --demos must be >= 2 (one episode is held out for validation)")
    if a.every is not None and not 1 <= a.every <= N_ACTION_STEPS:
        raise SystemExit(f"quickstart: --every must be 1..{N_ACTION_STEPS} (a chunk holds {N_ACTION_STEPS} actions), "
                         f"got {a.every}")
    if a.eval_episodes < 1 or not cameras:
        raise SystemExit("quickstart: --eval-episodes must be >= 1 and --cameras non-empty")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []
    rc = 0
    from vlastack.train.distributed import usable_cores

    ranks = a.ranks if a.ranks is not None else (2 if usable_cores() >= 2 else 1)
    if ranks < 1:
        raise SystemExit(f"quickstart: --ranks must be >= 1, got {ranks}")
    deadline = a.deadline if a.deadline is not None else (None if a.single else GROUP_DEADLINE_MIN)
    notes: list[str] = []
    for title, args in stage_commands(out, tasks[0] if a.single else tasks, a.demos, cameras, a.eval_episodes,
                                      a.minutes, group=group, blank_episodes=a.blank_episodes,
                                      oversample=None if a.single else oversample,
                                      executor=a.executor, every=a.every):
        if args[0] == "train" and a.minutes is None and deadline:
            elapsed = minutes_since(started)
            cap = experiment_minutes("quickstart" if a.single else "quickstart_group")
            reserve = eval_reserve(len(tasks), a.eval_episodes, 0 if a.single else a.blank_episodes)
            minutes, ok = deadline_minutes(elapsed, deadline, cap, reserve)
            args = [*args, f"train.max_minutes={minutes:g}"]
            notes.append(f"Deadline {deadline:g} min: {elapsed:.1f} min spent before training "
                         f"(set-up, collection), {reserve:.1f} kept for evaluation, so training got "
                         f"{minutes:g} of the recipe's {cap:g} min" + ("." if ok else
                         f" (the least it gets): the run will end after the deadline."))
            print(f"quickstart: {notes[-1]}", flush=True)
        stages.append(run_stage(title, args, ranks if args[0] == "train" else 1))
        if stages[-1].rc:
            rc = stages[-1].rc
            print(f"quickstart: {title} failed with exit code {rc}", file=sys.stderr)
            break
    record_run(out, stages)
    text = write_report(out, tasks, stages, notes)
    print("\n" + text.split("\n## Training")[0].strip())
    print(f"\nreport: {out / REPORT}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
