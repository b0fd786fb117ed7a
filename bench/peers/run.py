"""Side by side with LeRobot: DUST and Dita against LeRobot's Diffusion Policy and ACT, one run, one machine.

    .venv/bin/python bench/peers/run.py                       # everything (venv, data, speed, success)
    .venv/bin/python bench/peers/run.py --skip-success        # speed and memory only
    .venv/bin/python bench/peers/run.py --quick               # small budgets end to end (a smoke run)
    .venv/bin/python bench/peers/run.py --venv /tmp/lerobot-venv   # reuse a side venv built elsewhere
    .venv/bin/python bench/peers/run.py --trainer lerobot     # DUST and Dita trained by LeRobot's step too

What one run does:

1. Side venv (``setup_venv.sh``, cached in ``bench/peers/.venv``): torch 2.14.1, LeRobot 0.4.4's
   requirements, ``lerobot==0.4.4 --no-deps``. LeRobot never enters our ``.venv``.
2. Data (cached in ``data/peers/``): ``vlastack collect env=kitchen`` scripted demos of ``--tasks``
   into a Zarr store, its statistics, our frozen encoder's feature cache, and the same episodes
   as a LeRobotDataset v3.0 (AV1 mp4) written by our converter (``vlastack convert --to lerobot``).
3. Speed: every policy in its own process (so ``ru_maxrss`` is its own peak), interleaved
   LeRobot / ours / LeRobot / ours and repeated ``--rounds`` times with the order reversed every
   other round, on the same data, cameras (3 x 128x128), batch size and threads: trainable
   parameters, training samples/s (end to end through each side's own loader, and the update alone
   on a batch in memory; ours also from the feature cache), peak RSS, and the chunk latency at
   batch 1 (p50 and p99 over ``--repeats`` calls, image encoding and normalisation included) on
   1 and 2 threads; ours also exported (``vlastack export``) and timed in ONNX Runtime, OpenVINO and
   OpenVINO with bf16 inference (``--runtimes``), as extra rows, with the chunk's floating-point work
   and the share of the measured fp32 matmul peak each row reaches. Ratios are taken within a round
   (adjacent runs) and their median reported.
4. Success: every policy trained for the same wall-clock budget (``--budget-min``; ours with
   ``vlastack train``, LeRobot's with its own training step in its venv), then evaluated on the
   same tasks and seeds through our harness (``vlastack.rollout.evaluate``; LeRobot's policies
   through :mod:`lerobot_proxy`), success with a 95% Wilson interval.
5. Prints the tables and writes ``bench/peers/results.md`` (with this command) and ``results.json``.

``--trainer lerobot``: DUST and Dita go through LeRobot's side as well, as the ``lerobot_policy_dust``
/ ``lerobot_policy_dita`` plugins (``integrations/lerobot``, installed into the side venv by
``setup_side.sh``): the same worker, loader, processors, update and wall-clock budget as Diffusion
Policy and ACT, the frozen encoders running inside every step (no feature cache). Their checkpoints
are vlastack checkpoints, evaluated directly (no proxy).

Matched sizes (trainable parameters, 16-D state, 7-D actions, 3 cameras at 128x128): DUST ``small``
and Dita ``small`` (frozen EfficientNet-lite0 and MiniLM are not trainable and are not counted);
Diffusion Policy with a from-scratch ResNet-18 (GroupNorm) and ``down_dims=(96, 192, 384)``, DDIM
with 10 inference steps (the issue's comparison point); ACT with ``dim_model=256``,
``dim_feedforward=1536``, chunk 16. The printed counts are what was measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OURS_PY = sys.executable  # run.py itself runs with the project's .venv python
LOG_DIR = ROOT / "data" / "peers" / "logs"  # every worker's stderr (set from --data in main)

#: LeRobot policies and their config overrides (matched to ~21M trainable parameters)
THEIRS: dict[str, dict[str, Any]] = {
    "diffusion": {"down_dims": [96, 192, 384], "noise_scheduler_type": "DDIM", "num_inference_steps": 10},
    "act": {"dim_model": 256, "dim_feedforward": 1536, "chunk_size": 16, "n_action_steps": 16},
}
#: our policies: preset and overrides (norm_on_constant: the drawer tasks never move the gripper)
OURS: dict[str, dict[str, Any]] = {
    "dust": {"preset": "small", "overrides": {"norm_on_constant": "unit"}},
    "dita": {"preset": "small", "overrides": {"norm_on_constant": "unit"}},
}
LABELS = {"dust": "DUST small", "dita": "Dita small", "diffusion": "LeRobot Diffusion Policy", "act": "LeRobot ACT"}
PAIRS = [("dust", "diffusion"), ("dita", "diffusion"), ("dust", "act"), ("dita", "act")]
#: exported-runtime rows (``--runtimes``; ``bench/policy_speed.py``'s ``EXPORTED_ROWS``, which the worker runs)
#: -> (the modules they need, the extra that installs them)
RUNTIMES: dict[str, tuple[tuple[str, ...], str]] = {
    "onnxruntime": (("onnx", "onnxruntime"), "onnx"),
    "openvino": (("onnx", "openvino"), "openvino"),
    "openvino-bf16": (("onnx", "openvino"), "openvino"),
}


def available_runtimes() -> tuple[list[str], list[str]]:
    """(the :data:`RUNTIMES` rows whose packages this python has, a note per row left out)."""
    have, notes = [], []
    for rt, (modules, extra) in RUNTIMES.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            notes.append(f"{rt} left out: {', '.join(missing)} not installed (pip install 'vlastack[{extra}]')")
        else:
            have.append(rt)
    return have, notes


def log(msg: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_avg() -> str:
    """The 1-minute load average and core count."""
    try:
        return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- set-up


def ensure_venv(venv: Path, plugins: bool = False) -> Path:
    """Build (or reuse) the LeRobot side venv (with ``plugins``: vlastack's LeRobot plugins too); returns its python."""
    py = venv / "bin" / "python"
    if plugins:
        subprocess.run(["bash", str(ROOT / "integrations" / "lerobot" / "setup_side.sh"), str(venv)], check=True)
        return py
    stamp = venv / ".peers-recipe"
    if py.exists() and not stamp.exists():
        # a venv built by hand elsewhere (e.g. /tmp/lerobot-venv): use it if LeRobot imports
        ok = subprocess.run([str(py), "-c", "import lerobot.policies.diffusion.modeling_diffusion, av"],
                            capture_output=True).returncode == 0
        if ok:
            log(f"side venv {venv}: LeRobot imports, reusing it")
            return py
    subprocess.run(["bash", str(HERE / "setup_venv.sh"), str(venv)], check=True)
    return py


def run(cmd: list[str], what: str, timeout: float | None = None) -> str:
    """Run a command (stderr to a log file beside the results), return stdout; raises with the log's tail."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / (what.replace(" ", "_").replace("/", "_") + ".log")
    with open(log_path, "w") as err:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, timeout=timeout)
    if p.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{what} failed (exit {p.returncode}): {shlex.join(cmd)}\n{tail}")
    return p.stdout


def last_json(out: str) -> dict[str, Any]:
    """The JSON object on the last non-empty line of a worker's stdout."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError("worker printed nothing")
    return json.loads(lines[-1])


def ensure_data(data: Path, tasks: list[str], episodes: int, workers: int) -> tuple[Path, Path]:
    """Kitchen demos in a store (with stats and feature cache) and as a LeRobotDataset v3.0; both cached."""
    from vlastack.datasets.store import TrajectoryStore

    store, lerobot = data / "kitchen.zarr", data / "kitchen_lerobot"
    data.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    if (store / "zarr.json").exists():
        st = TrajectoryStore.open(store, mode="r")
        for doc in st.episodes:
            counts[doc.get("task_id", "")] = counts.get(doc.get("task_id", ""), 0) + 1
        st.close()
    if any(counts.get(t, 0) < episodes for t in tasks):
        log(f"collecting {episodes} demos per task of {tasks} into {store} (have {counts})")
        run([OURS_PY, "-m", "vlastack.cli", "collect", "env=kitchen", f"task=[{','.join(tasks)}]",
             f"episodes={episodes}", f"out={store}", f"workers={workers}", "progress=false"], "collect")
    st = TrajectoryStore.open(store, mode="a")
    if st.stats is None:
        log("computing the store's statistics")
        st.compute_stats()
    n_frames, n_eps = st.num_frames, st.num_episodes
    st.close()
    for name in OURS:
        log(f"feature cache for {name} (skipped when current)")
        last_json(run([OURS_PY, str(HERE / "ours_worker.py"), "cache", "--policy", name, "--store", str(store),
                       "--preset", OURS[name]["preset"], "--overrides", json.dumps(OURS[name]["overrides"])],
                      f"cache {name}"))
    info = lerobot / "meta" / "info.json"
    fresh = info.exists() and json.loads(info.read_text()).get("total_frames") == n_frames and \
        json.loads(info.read_text()).get("total_episodes") == n_eps
    if not fresh:
        log(f"converting {store} to a LeRobotDataset v3.0 with vlastack convert")
        run([OURS_PY, "-m", "vlastack.cli", "convert", str(store), str(lerobot), "--to", "lerobot", "--overwrite",
             "--quiet"], "convert")
    return store, lerobot


# ----------------------------------------------------------------------------- speed


def by_lerobot(name: str, a) -> bool:
    """Whether LeRobot's side trains and measures ``name`` (theirs always; ours with ``--trainer lerobot``)."""
    return name in THEIRS or a.trainer == "lerobot"


def lerobot_overrides(name: str) -> dict[str, Any]:
    """The LeRobot config fields of ``name`` (ours: the plugin's ``preset`` and our overrides)."""
    return THEIRS[name] if name in THEIRS else {"preset": OURS[name]["preset"], **OURS[name]["overrides"]}


def measure_one(name: str, lr_py: Path, store: Path, lerobot: Path, a) -> dict[str, Any]:
    """One policy's speed figures from its own worker process."""
    common = ["--batch", str(a.batch), "--steps", str(a.steps), "--repeats", str(a.repeats),
              "--threads", ",".join(str(t) for t in a.threads), "--train-threads", str(max(a.threads))]
    if by_lerobot(name, a):
        cmd = [str(lr_py), str(HERE / "lerobot_worker.py"), "measure", "--policy", name, "--dataset", str(lerobot),
               "--overrides", json.dumps(lerobot_overrides(name)), *common]
    else:
        cmd = [OURS_PY, str(HERE / "ours_worker.py"), "measure", "--policy", name, "--store", str(store),
               "--preset", OURS[name]["preset"], "--overrides", json.dumps(OURS[name]["overrides"]),
               "--feature-cache", *(["--runtimes", ",".join(a.runtimes)] if a.runtimes else []), *common]
    t0 = time.perf_counter()
    res = last_json(run(cmd, f"measure {name}"))
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg"] = load_avg()
    return res


def measure_all(policies: list[str], lr_py: Path, store: Path, lerobot: Path, a) -> list[dict[str, dict]]:
    """Rounds of interleaved measurements: round r runs LeRobot/ours alternately, reversed every other round."""
    theirs = [p for p in policies if p in THEIRS]
    ours = [p for p in policies if p in OURS]
    order: list[str] = []
    for i in range(max(len(theirs), len(ours))):
        order += theirs[i:i + 1] + ours[i:i + 1]
    rounds = []
    for r in range(a.rounds):
        seq = order if r % 2 == 0 else order[::-1]
        res: dict[str, dict] = {}
        for name in seq:
            log(f"round {r + 1}/{a.rounds}: measuring {LABELS[name]} (load {load_avg()})")
            try:
                res[name] = measure_one(name, lr_py, store, lerobot, a)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"{name} failed: {e}")
                res[name] = {"error": str(e)[-2000:]}
        rounds.append(res)
    return rounds


def _get(d: dict | None, *path: str) -> float | None:
    for k in path:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return float(d)


#: figure -> (path in a worker result, better when higher)
METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "params_trainable": (("params_trainable",), False),
    "train_update_sps": (("train", "update_sps"), True),
    "train_e2e_sps": (("train", "e2e_sps"), True),
    "rss_peak_train_mib": (("rss_peak_train_mib",), False),
    "lat1_p50_ms": (("latency", "1", "p50_ms"), False),
    "lat1_p99_ms": (("latency", "1", "p99_ms"), False),
    "lat2_p50_ms": (("latency", "2", "p50_ms"), False),
    "lat2_p99_ms": (("latency", "2", "p99_ms"), False),
}


def metric(res: dict, key: str, cache: bool = False) -> float | None:
    """A figure of one worker result; ``cache`` reads our feature-cache training figures instead."""
    path = METRICS[key][0]
    if cache and path[0] == "train":
        path = ("train_cache",) + path[1:]
    return _get(res, *path)


def runtime_rows(rounds: list[dict[str, dict]], threads: list[int]) -> dict[str, dict[str, float | None]]:
    """Our exported runtimes' chunk p50 per thread count (median over rounds), and the ratio to Diffusion
    Policy's torch p50 of the same round: ``{"dust/onnxruntime": {"lat1_p50_ms": ..., "ratio1": ...}}``."""
    out: dict[str, dict[str, float | None]] = {}
    for p in OURS:
        rts = sorted({rt for r in rounds for rt in (r.get(p, {}).get("latency_runtime") or {})
                      if isinstance((r[p]["latency_runtime"] or {}).get(rt), dict)})
        for rt in rts:
            row: dict[str, float | None] = {}
            for n in threads:
                mine = [_get(r.get(p, {}), "latency_runtime", rt, str(n), "p50_ms") for r in rounds]
                theirs = [metric(r.get("diffusion", {}), f"lat{n}_p50_ms") for r in rounds]
                row[f"lat{n}_p50_ms"] = median(mine)
                row[f"ratio{n}"] = median([x / y if x is not None and y else None for x, y in zip(mine, theirs)])
            row["max_abs_diff"] = median([_get(r.get(p, {}), "latency_runtime", rt, "max_abs_diff_vs_torch")
                                          for r in rounds])
            ran = [((r.get(p, {}).get("latency_runtime") or {}).get(rt) or {}) for r in rounds]
            row["precision"] = next((x["precision"] for x in ran if x.get("precision")), None)
            row["precision_asked"] = next((x["precision_asked"] for x in ran if x.get("precision_asked")), None)
            row["error"] = next((x["error"] for x in ran if x.get("error")), None)  # e.g. its extra is missing
            out[f"{p}/{rt}"] = row
    return out


def runtime_label(rt: str, row: dict) -> str:
    """A runtime row's name, saying so when it computed in another precision than it asked for
    (OpenVINO runs bf16 as f32 on a CPU without avx512_bf16 / AMX)."""
    asked, ran = row.get("precision_asked"), row.get("precision")
    return rt if not asked or not ran or asked == ran else f"{rt}, computed in {ran}"


def flop_rows(rounds: list[dict[str, dict]], absolute: dict, runtimes: dict, threads: list[int]) -> dict[str, dict]:
    """Per policy of ours: the chunk's GFLOP (median over rounds), the fp32 matmul peak per thread count (the
    best any round measured: an idle moment's), and for torch and each exported runtime the GFLOP/s its p50
    reaches and that rate's share of the peak on the same threads:
    ``{"dust": {"chunk_gflop": g, "peak_gflops": {1: ...}, "rows": {"torch": {"gflops1": ..., "share1": ...}}}}``."""
    out: dict[str, dict] = {}
    for p in OURS:
        gflop = median([_get(r.get(p, {}), "chunk_gflop") for r in rounds])
        if gflop is None:
            continue
        peaks = {n: max((x for x in (_get(r.get(p, {}), "matmul_peak_gflops", str(n)) for r in rounds)
                         if x is not None), default=None) for n in threads}
        p50 = {"torch": {n: (absolute.get(p) or {}).get(f"lat{n}_p50_ms") for n in threads}}
        p50.update({runtime_label(k.split("/")[1], v): {n: v.get(f"lat{n}_p50_ms") for n in threads}
                    for k, v in runtimes.items() if k.startswith(f"{p}/")})
        rows: dict[str, dict[str, float | None]] = {}
        for rt, ms in p50.items():
            rows[rt] = {}
            for n in threads:
                rate = gflop / (ms[n] / 1e3) if ms[n] else None
                rows[rt][f"gflops{n}"] = rate
                rows[rt][f"share{n}"] = rate / peaks[n] if rate is not None and peaks[n] else None
        out[p] = {"chunk_gflop": gflop, "peak_gflops": peaks, "rows": rows}
    return out


def median(xs: list[float | None]) -> float | None:
    """Median of the figures that exist (None when none does)."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize_speed(rounds: list[dict[str, dict]], policies: list[str]) -> tuple[dict, dict]:
    """(absolute medians per policy, ratio medians per pair) over the rounds."""
    absolute: dict[str, dict[str, float | None]] = {}
    for p in policies:
        row = {k: median([metric(r.get(p, {}), k) for r in rounds]) for k in METRICS}
        if p in OURS:
            row["train_update_sps_cache"] = median([metric(r.get(p, {}), "train_update_sps", True) for r in rounds])
            row["train_e2e_sps_cache"] = median([metric(r.get(p, {}), "train_e2e_sps", True) for r in rounds])
        row["params_total"] = median([_get(r.get(p, {}), "params_total") for r in rounds])
        absolute[p] = row
    ratios: dict[str, dict[str, float | None]] = {}
    for o, t in PAIRS:
        if o not in policies or t not in policies:
            continue
        row = {}
        for k in METRICS:
            per = []
            for r in rounds:
                x, y = metric(r.get(o, {}), k), metric(r.get(t, {}), k)
                per.append(x / y if x is not None and y else None)
            row[k] = median(per)
        for k in ("train_update_sps", "train_e2e_sps"):
            per = []
            for r in rounds:
                x, y = metric(r.get(o, {}), k, cache=True), metric(r.get(t, {}), k)
                per.append(x / y if x is not None and y else None)
            row[k + "_cache"] = median(per)
        ratios[f"{o}/{t}"] = row
    return absolute, ratios


# ----------------------------------------------------------------------------- success


def train_one(name: str, lr_py: Path, store: Path, lerobot: Path, out: Path, a) -> dict[str, Any]:
    """Train ``name`` for ``a.budget_min`` minutes of wall clock; returns the run's summary and checkpoint."""
    t0 = time.perf_counter()
    if by_lerobot(name, a):
        ckpt = out / "lerobot_ckpt"
        res = last_json(run([str(lr_py), str(HERE / "lerobot_worker.py"), "train", "--policy", name,
                             "--dataset", str(lerobot), "--overrides", json.dumps(lerobot_overrides(name)),
                             "--batch", str(a.success_batch), "--seconds", str(60 * a.budget_min),
                             "--train-threads", str(max(a.threads)), "--out", str(ckpt)], f"train {name}"))
        res["wall_total_s"] = time.perf_counter() - t0
        return res
    run_dir = out / "run"
    ov = [f"policy={name}", f"policy.preset={OURS[name]['preset']}", f"dataset.path={store}", f"run_dir={run_dir}",
          "train=cpu", f"train.max_minutes={a.budget_min}", f"train.batch_size={a.success_batch}", "progress=false",
          "resume=never"]
    ov += [f"policy.{k}={v}" for k, v in OURS[name]["overrides"].items()]
    run([OURS_PY, "-m", "vlastack.cli", "train", *ov], f"train {name}")
    res: dict[str, Any] = {"side": "ours", "policy": name, "checkpoint": str(run_dir), "overrides": ov,
                           "wall_total_s": time.perf_counter() - t0}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
        steps = [r.get("step") for r in rows if isinstance(r.get("step"), int)]
        res["steps"] = max(steps) if steps else None
    return res


def proxy_for(name: str, lr_py: Path, trained: dict[str, Any], store: Path, out: Path) -> str:
    """A vlastack checkpoint directory that serves LeRobot's trained ``name`` to our harness."""
    sys.path.insert(0, str(HERE))
    from lerobot_proxy import LeRobotProxyConfig, write_proxy_checkpoint
    from vlastack.datasets.store import TrajectoryStore

    st = TrajectoryStore.open(store, mode="r")
    spec = st.spec
    cfg_t = json.loads((Path(trained["checkpoint"]) / "config.json").read_text())
    cfg = LeRobotProxyConfig(checkpoint=str(trained["checkpoint"]), python=str(lr_py), cameras=tuple(spec.cameras),
                             image_size=tuple(spec.features[spec.image_keys[0]].shape[:2]), state_dim=spec.state_dim,
                             action_dim=spec.action_dim, n_obs_steps=int(cfg_t.get("n_obs_steps", 1)),
                             horizon=int(cfg_t.get("n_action_steps", 8)), label=name)
    st.close()
    return str(write_proxy_checkpoint(out / "proxy", cfg))


def evaluate_one(name: str, checkpoint: str, out: Path, a) -> dict[str, Any]:
    """Success on ``a.tasks`` x ``a.eval_episodes`` through vlastack's evaluation harness."""
    sys.path.insert(0, str(HERE))
    import lerobot_proxy  # noqa: F401 - registers the "lerobot" policy for LeRobot checkpoints
    from vlastack.rollout.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(suite="kitchen", tasks=list(a.tasks), checkpoint=checkpoint, episodes=a.eval_episodes,
                     out=str(out / "eval"), overwrite=True, workers=0, videos=0, progress=False,
                     n_action_steps=a.n_action_steps, torch_threads=1)
    t0 = time.perf_counter()
    doc = evaluate(cfg)
    s = doc["summary"]
    return {"overall": s["overall"], "per_task": s["per_task"], "eval_s": time.perf_counter() - t0}


def success_all(policies: list[str], lr_py: Path, store: Path, lerobot: Path, a, on_each=None) -> dict[str, dict]:
    """Train each policy for the same budget (one at a time, all cores), then evaluate each.

    ``on_each(results_so_far)`` is called after every policy (to save progress).
    """
    out: dict[str, dict] = {}
    base = ROOT / "runs" / "peers"
    for name in policies:
        d = base / name
        log(f"training {LABELS[name]} for {a.budget_min} min (load {load_avg()})")
        try:
            trained = train_one(name, lr_py, store, lerobot, d, a)
            ckpt = proxy_for(name, lr_py, trained, store, d) if name in THEIRS else trained["checkpoint"]
            log(f"evaluating {LABELS[name]}: {len(a.tasks)} tasks x {a.eval_episodes} episodes")
            out[name] = {"train": trained, **evaluate_one(name, ckpt, d, a)}
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            log(f"{name}: success part failed: {e}")
            out[name] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
        if on_each is not None:
            on_each(out)
    return out


# ----------------------------------------------------------------------------- report


def fmt(x: float | None, nd: int = 1, suffix: str = "") -> str:
    """A number for the table ('n/a' when missing)."""
    return "n/a" if x is None else f"{x:.{nd}f}{suffix}"


def tables(absolute: dict, ratios: dict, success: dict | None, runtimes: dict | None = None,
           threads: list[int] = (1, 2), flops: dict | None = None) -> str:
    """The markdown tables: absolute figures, ratios ours/theirs, our exported runtimes, FLOPs, success."""
    lines = ["| policy | trainable params | train samples/s (update) | train samples/s (end to end) | "
             "peak RSS MiB | chunk p50 / p99 ms, 1 thread | chunk p50 / p99 ms, 2 threads |",
             "|---|---|---|---|---|---|---|"]
    for p, r in absolute.items():
        upd = fmt(r["train_update_sps"])
        e2e = fmt(r["train_e2e_sps"])
        if p in OURS:
            upd += f" (cache {fmt(r.get('train_update_sps_cache'))})"
            e2e += f" (cache {fmt(r.get('train_e2e_sps_cache'))})"
        params = "n/a" if r["params_trainable"] is None else f"{r['params_trainable'] / 1e6:.2f}M"
        if p in OURS and r.get("params_total"):
            params += f" (+{(r['params_total'] - r['params_trainable']) / 1e6:.1f}M frozen)"
        lines.append(f"| {LABELS[p]} | {params} | {upd} | {e2e} | {fmt(r['rss_peak_train_mib'], 0)} | "
                     f"{fmt(r['lat1_p50_ms'])} / {fmt(r['lat1_p99_ms'])} | {fmt(r['lat2_p50_ms'])} / {fmt(r['lat2_p99_ms'])} |")
    lines += ["", "Ratios ours / theirs (median over rounds of the ratio of adjacent runs; "
              "throughput: > 1 is ours faster; memory and latency: < 1 is ours smaller / faster):", "",
              "| pair | params | train update (images) | train update (feature cache) | train end to end (images) | "
              "train end to end (cache) | peak RSS | p50 1 thr | p99 1 thr | p50 2 thr | p99 2 thr |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, r in ratios.items():
        o, t = pair.split("/")
        lines.append(f"| {LABELS[o]} / {LABELS[t]} | {fmt(r['params_trainable'], 2)} | {fmt(r['train_update_sps'], 2)} | "
                     f"{fmt(r.get('train_update_sps_cache'), 2)} | {fmt(r['train_e2e_sps'], 2)} | "
                     f"{fmt(r.get('train_e2e_sps_cache'), 2)} | {fmt(r['rss_peak_train_mib'], 2)} | "
                     f"{fmt(r['lat1_p50_ms'], 2)} | {fmt(r['lat1_p99_ms'], 2)} | {fmt(r['lat2_p50_ms'], 2)} | "
                     f"{fmt(r['lat2_p99_ms'], 2)} |")
    if runtimes:
        lines += ["", "Our chunk exported (`vlastack export`) and run by another runtime, batch 1, same observation "
                  "(ratio: to Diffusion Policy's p50 in the same round):", "",
                  "| policy (runtime) | " + " | ".join(f"chunk p50 ms, {n} thr | / Diffusion Policy, {n} thr"
                                                      for n in threads) + " | max abs diff vs torch | computes in |",
                  "|---|" + "---|---|" * len(threads) + "---|---|"]
        for key, r in runtimes.items():
            p, rt = key.split("/")
            diff = "n/a" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.2g}"
            ran = r.get("precision") or (f"failed: {r['error']}" if r.get("error") else "n/a")
            lines.append(f"| {LABELS[p]} ({rt}) | " + " | ".join(
                f"{fmt(r.get(f'lat{n}_p50_ms'))} | {fmt(r.get(f'ratio{n}'), 2)}" for n in threads)
                + f" | {diff} | {ran} |")
    if flops:
        lines += ["", "Floating-point work of our chunk (torch's FlopCounterMode: matmuls, convolutions, attention; "
                  "batch 1) and the rate each row's p50 above reaches, as a share of the fp32 matmul peak measured "
                  "in the same worker on the same threads (best of 256/512/1024 square products over the rounds; "
                  "bf16 inference can pass the fp32 peak):", "",
                  "| policy (runtime) | chunk GFLOP | " + " | ".join(f"GFLOP/s at p50, {n} thr | share of "
                                                                       f"{n}-thr peak" for n in threads) + " |",
                  "|---|---|" + "---|---|" * len(threads)]
        for p, f in flops.items():
            for rt, r in f["rows"].items():
                lines.append(f"| {LABELS[p]} ({rt}) | {f['chunk_gflop']:.3f} | " + " | ".join(
                    f"{fmt(r.get(f'gflops{n}'))} | "
                    f"{fmt(None if r.get(f'share{n}') is None else 100 * r[f'share{n}'], 0, '%')}" for n in threads)
                    + " |")
        lines.append("")
        lines += [f"fp32 matmul peak measured by {LABELS[p]}'s worker: "
                  + ", ".join(f"{fmt(f['peak_gflops'].get(n))} GFLOP/s on {n} thread{'s' if n > 1 else ''}"
                              for n in threads) for p, f in flops.items()]
    if success:
        lines += ["", "| policy | steps in budget | success | 95% Wilson interval | per task |", "|---|---|---|---|---|"]
        for p, s in success.items():
            if "error" in s:
                lines.append(f"| {LABELS[p]} | n/a | failed: {s['error'][:120]} | | |")
                continue
            o = s["overall"]
            per = ", ".join(f"{t} {v['successes']}/{v['episodes']}" for t, v in s["per_task"].items())
            lines.append(f"| {LABELS[p]} | {s['train'].get('steps', 'n/a')} | {o['successes']}/{o['episodes']} "
                         f"({100 * o['success_rate']:.0f}%) | [{100 * o['ci_low']:.0f}%, {100 * o['ci_high']:.0f}%] | {per} |")
    return "\n".join(lines)


def targets(ratios: dict, success: dict | None, runtimes: dict | None = None,
            absolute: dict | None = None) -> list[str]:
    """The issue's targets, checked against the measured ratios."""
    out = []
    for key, row in (runtimes or {}).items():
        if not key.startswith("dust/"):
            continue
        for n in (1, 2):
            x = row.get(f"ratio{n}")
            if x is not None:
                out.append(f"DUST chunk latency <= 1/4 of Diffusion Policy's ({runtime_label(key.split('/')[1], row)}, "
                           f"{n} thread"
                           f"{'s' if n == 2 else ''}, p50): ratio {x:.2f} -> {'MET' if x <= 0.25 else 'NOT MET'}")
    walls = {"torch": (absolute or {}).get("dust", {}).get("lat1_p50_ms")}
    walls.update({runtime_label(k.split("/")[1], v): v.get("lat1_p50_ms") for k, v in (runtimes or {}).items()
                  if k.startswith("dust/")})
    walls = {k: v for k, v in walls.items() if v is not None}
    if walls:
        best = min(walls, key=walls.get)
        out.append("DUST small chunk under 50 ms wall on 1 thread, 3 cameras 128x128: "
                   + ", ".join(f"{k} {v:.1f} ms" for k, v in walls.items())
                   + f" -> {'MET' if walls[best] < 50 else 'NOT MET'} (best: {best})")
    r = ratios.get("dust/diffusion")
    if r:
        for thr in ("1", "2"):
            x = r.get(f"lat{thr}_p50_ms")
            if x is not None:
                out.append(f"DUST chunk latency <= 1/4 of Diffusion Policy's ({thr} thread{'s' if thr == '2' else ''}, "
                           f"p50): ratio {x:.2f} -> {'MET' if x <= 0.25 else 'NOT MET'}")
        for key, what in (("train_update_sps", "images, encoder in the step"),
                          ("train_update_sps_cache", "feature cache")):
            x = r.get(key)
            if x is not None:
                out.append(f"DUST training throughput >= 2x Diffusion Policy's ({what}): ratio {x:.2f} -> "
                           f"{'MET' if x >= 2 else 'NOT MET'}")
    if success and all(k in success and "overall" in success[k] for k in ("dust", "diffusion")):
        a, b = success["dust"]["overall"], success["diffusion"]["overall"]
        verdict = "MET" if a["success_rate"] >= b["success_rate"] else "NOT MET"
        if a["successes"] == 0 and b["successes"] == 0:
            verdict = "NOT SHOWN (neither succeeded once: the budget is too short to tell)"
        out.append(f"DUST success >= Diffusion Policy's after the same budget: {a['successes']}/{a['episodes']} vs "
                   f"{b['successes']}/{b['episodes']} -> {verdict}")
    return out


QUICK = {"tasks": ["OpenDrawer"], "budget_min": 5.0, "eval_episodes": 10, "rounds": 2, "repeats": 20, "steps": 4}
QUICK_NOTE = ("one easy task (OpenDrawer), 5 min of training per policy, 10 evaluation episodes, 2 speed rounds of "
              "4 timed steps and 20 chunks per latency figure")
SMOKE = {"tasks": ["OpenDrawer"], "budget_min": 1.0, "eval_episodes": 2, "rounds": 1, "repeats": 5, "steps": 2}
SMOKE_NOTE = "OpenDrawer, 1 min of training, 2 episodes, 1 round, 2 steps, 5 chunks (checks the plumbing only)"
FULL = {"budget_min": 10.0, "eval_episodes": 10}


def apply_presets(a: argparse.Namespace, argv: list[str]) -> None:
    """Fill in ``--quick`` / ``--smoke`` / default budgets; options given on the command line win."""
    if a.quick and a.smoke:
        raise SystemExit("--quick and --smoke exclude each other")
    given = {x.split("=")[0].lstrip("-").replace("-", "_") for x in argv if x.startswith("--")}
    given |= {"budget_min"} if "budget_minutes" in given else set()
    preset = QUICK if a.quick else SMOKE if a.smoke else FULL
    for k, v in preset.items():
        if k not in given or getattr(a, k) is None:
            setattr(a, k, v)
    a.preset_name = "quick" if a.quick else "smoke" if a.smoke else "full"
    if a.budget_min <= 0 or a.eval_episodes < 1 or a.rounds < 1 or a.repeats < 1 or a.steps < 1:
        raise SystemExit(f"budgets must be positive: --budget-minutes {a.budget_min}, --eval-episodes "
                         f"{a.eval_episodes}, --rounds {a.rounds}, --repeats {a.repeats}, --steps {a.steps}")


def load_rounds(path: Path, policies: list[str]) -> tuple[list[dict[str, dict]], str]:
    """(speed rounds, the command that measured them) from a run's ``results.json`` or progress file."""
    if not path.exists():
        raise SystemExit(f"--speed-from {path}: no such file (is the speed run finished?)")
    doc = json.loads(path.read_text())
    rounds = doc.get("rounds")
    if not isinstance(rounds, list) or not rounds:
        raise SystemExit(f"--speed-from {path}: holds no speed rounds")
    missing = [p for p in policies if not any(p in r for r in rounds)]
    if missing:
        raise SystemExit(f"--speed-from {path}: no measurement of {missing}")
    return rounds, str(doc.get("command", "unknown"))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_rev() -> str:
    """HEAD's short hash, with '+dirty' when the working tree has changes."""
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return h + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the ``--quick`` / ``--smoke`` presets filled in (explicit options win)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=HERE / ".venv", help="LeRobot side venv (built when missing)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "peers", help="cache of the store and LeRobot copy")
    ap.add_argument("--tasks", type=lambda s: s.split(","), default=["OpenDrawer", "CloseDrawer"])
    ap.add_argument("--episodes", type=int, default=25, help="demos per task")
    ap.add_argument("--policies", type=lambda s: s.split(","), default=["diffusion", "dust", "act", "dita"])
    ap.add_argument("--batch", type=int, default=16, help="training batch for the throughput figures")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per figure")
    ap.add_argument("--repeats", type=int, default=30, help="timed chunks per latency figure")
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the speed measurements")
    ap.add_argument("--runtimes", type=lambda s: [x for x in s.split(",") if x], default=None,
                    help=f"our chunk exported and timed in these runtimes too, from {list(RUNTIMES)} ('' for none; "
                         "openvino-bf16 is OpenVINO with bf16 inference, f32 on CPUs without avx512_bf16 / AMX, and "
                         "the table says so). Default: every one whose extra is installed in this python "
                         "(onnxruntime: vlastack[onnx]; openvino, openvino-bf16: vlastack[openvino]); the others "
                         "are left out with a note in the report. Named here without its extra, a row fails and "
                         "says which extra to install")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--speed-from", type=Path, default=None,
                    help="take the speed rounds from another run's results.json / progress file instead of measuring "
                         "(read after the success part, so that run may still be going)")
    ap.add_argument("--skip-success", action="store_true")
    ap.add_argument("--budget-minutes", "--budget-min", dest="budget_min", type=float, default=None,
                    help="wall-clock training budget per policy (default 10; --quick: 5)")
    ap.add_argument("--success-batch", type=int, default=32)
    ap.add_argument("--eval-episodes", type=int, default=None, help="evaluation episodes per task (default 10)")
    ap.add_argument("--n-action-steps", type=int, default=8, help="actions executed per chunk (all policies)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a run that fits a shared 2-core machine in about an hour: {QUICK_NOTE}")
    ap.add_argument("--smoke", action="store_true", help=f"a smoke run of every part: {SMOKE_NOTE}")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    ap.add_argument("--speed-wait-min", type=float, default=30.0, help="how long to wait for --speed-from's file")
    ap.add_argument("--trainer", choices=("ours", "lerobot"), default="ours",
                    help="who trains DUST and Dita: vlastack's loop (feature cache) or LeRobot's, through the plugins")
    ap.add_argument("--note", default="", help="a sentence for the report's header (e.g. how the machine was shared)")
    a = ap.parse_args(argv)
    apply_presets(a, argv if argv is not None else sys.argv[1:])
    a.runtime_notes = []
    if a.runtimes is None:
        a.runtimes, a.runtime_notes = available_runtimes()
    bad = [r for r in a.runtimes if r not in RUNTIMES]
    if bad:
        ap.error(f"--runtimes: unknown {bad}; choose from {', '.join(RUNTIMES)} (or '' for none)")
    unknown = [p for p in a.policies if p not in THEIRS and p not in OURS]
    if unknown:
        ap.error(f"--policies: unknown {unknown}; choose from {sorted(THEIRS) + sorted(OURS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the report."""
    a = parse_args(argv)
    # every worker (ours, LeRobot's, the proxy servers) inherits the same OpenMP wait policy; `vlastack`
    # commands default to PASSIVE, so without this LeRobot's workers alone would spin on busy cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = shlex.join([".venv/bin/python", "bench/peers/run.py", *(argv if argv is not None else sys.argv[1:])])
    global LOG_DIR
    LOG_DIR = a.data / "logs"
    t_start = time.time()
    if a.trainer == "lerobot":
        for p in OURS:
            LABELS[p] += " (LeRobot's step)"
    lr_py = ensure_venv(a.venv, plugins=a.trainer == "lerobot") \
        if any(by_lerobot(p, a) for p in a.policies) else Path(sys.executable)
    store, lerobot = ensure_data(a.data, a.tasks, a.episodes, workers=2)

    rounds: list = []
    absolute, ratios = {}, {}
    partial = a.data / f"{a.out.stem}.partial.json"  # what is done so far, in case the run is cut short
    speed_command = command
    if not a.skip_speed and a.speed_from is None:
        rounds = measure_all(a.policies, lr_py, store, lerobot, a)
        absolute, ratios = summarize_speed(rounds, a.policies)
        write_atomic(partial, json.dumps({"command": command, "rounds": rounds}, indent=1, default=str))
    success = None if a.skip_success else success_all(a.policies, lr_py, store, lerobot, a,
                                                      on_each=lambda s: write_atomic(partial, json.dumps(
                                                          {"command": command, "rounds": rounds, "success": s},
                                                          indent=1, default=str)))
    if a.speed_from is not None:
        deadline = time.time() + 60 * a.speed_wait_min
        while not a.speed_from.exists() and time.time() < deadline:
            log(f"waiting for {a.speed_from} (the speed run is still measuring)")
            time.sleep(30)
        rounds, speed_command = load_rounds(a.speed_from, a.policies)
        absolute, ratios = summarize_speed(rounds, a.policies)

    errors = {p: r["error"] for rr in rounds for p, r in rr.items() if "error" in r}
    errors.update({f"{p} export": r["latency_runtime"]["error"] for rr in rounds for p, r in rr.items()
                   if isinstance((r.get("latency_runtime") or {}).get("error"), str)})
    runtimes = runtime_rows(rounds, a.threads)
    flops = flop_rows(rounds, absolute, runtimes, a.threads)
    table = tables(absolute, ratios, success, runtimes, a.threads, flops)
    goals = targets(ratios, success, runtimes, absolute)
    success_part = ("success skipped" if a.skip_success else
                    f"{a.budget_min:g} min of training per policy, {a.eval_episodes} evaluation episodes per task")
    speed_part = ("speed skipped" if a.skip_speed and a.speed_from is None else
                  f"{a.rounds} speed round(s) of {a.steps} timed training steps and {a.repeats} chunks per latency "
                  f"figure")
    budget = f"Budget ({a.preset_name} run): tasks {','.join(a.tasks)}; {success_part}; {speed_part}."
    if a.runtimes or a.runtime_notes:
        budget += f" Exported runtimes: {', '.join(a.runtimes) or 'none'}"
        budget += f" ({'; '.join(a.runtime_notes)})." if a.runtime_notes else "."
    print(budget)
    if speed_command != command:
        print(f"Speed rounds read from {a.speed_from}, measured by: {speed_command}")
    print()
    print(table)
    print()
    for g in goals:
        print(g)
    for p, e in errors.items():
        print(f"{p}: FAILED: {e.splitlines()[0] if e else e}")
    header = [
        "# vlastack vs LeRobot, side by side", "",
        f"Command: `{command}`", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t_start))} UTC, {time.time() - t_start:.0f} s; "
        f"vlastack {git_rev()}; LeRobot 0.4.4 (torch 2.14.1) beside vlastack (torch "
        f"{__import__('torch').__version__}); {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at the end {load_avg()}. Tasks {a.tasks}, {a.episodes} demos each, 3 cameras 128x128; "
        f"speed: batch {a.batch}, {a.steps} timed steps, {a.repeats} chunks per latency figure, {a.rounds} interleaved "
        f"round(s); success: {a.budget_min:g} min of training each (batch {a.success_batch}), "
        f"{a.eval_episodes} episodes per task, {a.n_action_steps} actions executed per chunk; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} for every worker; DUST and Dita trained by "
        f"{'LeRobot (the lerobot_policy_* plugins)' if a.trainer == 'lerobot' else 'vlastack'}.", "", budget, ""]
    if speed_command != command:
        header += [f"Speed rounds read from `{a.speed_from}`, measured by `{speed_command}`.", ""]
    if a.note:
        header += [a.note, ""]
    write_atomic(a.out, "\n".join(header + [table, ""] + [f"- {g}" for g in goals] +
                                  [f"- {p}: FAILED: {e.splitlines()[0]}" for p, e in errors.items()]) + "\n")
    write_atomic(a.out.with_suffix(".json"), json.dumps(
        {"command": command, "speed_command": speed_command, "preset": a.preset_name, "budget_min": a.budget_min, "tasks": a.tasks,
         "eval_episodes": a.eval_episodes, "rounds": rounds, "absolute": absolute, "ratios": ratios,
         "runtimes": runtimes, "flops": flops,
         "success": success, "targets": goals}, indent=1, default=str))
    partial.unlink(missing_ok=True)
    log(f"wrote {a.out} and {a.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
