"""Policy speed: parameters, training throughput and sample_actions latency, per policy entry.

    python bench/policy_speed.py                          # every entry (tiny, small, bf16, paper_sized)
    python bench/policy_speed.py --entries dust-small     # one entry
    python bench/policy_speed.py --device cpu --entries dust-tiny,dust-small,dust-small-bf16,dita-tiny,dita-small
    python bench/policy_speed.py --json out.json          # also write the figures as JSON
    python bench/policy_speed.py --runtimes dust-small    # torch vs ONNX Runtime vs OpenVINO, FLOPs, matmul peak
    python bench/policy_speed.py --train                  # DUST small vs its no-world-model ablation, training

For each entry in ``ENTRIES`` it prints: trainable / total / denoiser parameters; training
samples per second with images (encoder in the step) and with the feature cache (batch keys
``features.<encoder>.observation.images.<cam>``, no image encoding); ``sample_actions`` latency
(batch 1, image encoding included, median of repeats) for each sampling point on 1 and 2 CPU
threads (and CUDA when present); for entries with a ``no_skip`` switch, the latency without
skipping and the ratio no-skip / skip (Dita: without / with the prefix key/value cache); for
entries with a ``breakdown``, the process-CPU time of each part of a chunk on 1 thread (DUST:
image encoding, instruction, conditioning stack, sampling plan, one network step with and without
the action blocks; Dita: prefix encoding, the first full pass, a cached and an uncached step).
Another policy is added by appending an :class:`Entry` with its own sampling points.

``--train`` measures only DUST small's training against its no-world-model ablation (preset
``small_no_wm``) at equal batch, interleaved in one process (:func:`train_comparison`): samples/s
per wall-clock and per process-CPU second, their ratio, the step's phases, the forward time of
each part of the network and the FLOPs of forward + backward.

Timings on a shared machine swing with the load; the load average is printed with the figures,
and each timing comes with the process-CPU time it took (for a 1-thread run close to what an
unloaded machine would give). Unless ``OMP_WAIT_POLICY`` is already set, this script sets it to
``PASSIVE`` before torch loads: on an oversubscribed machine, OpenMP threads that spin at every
barrier wait for a partner the scheduler has parked, and a 2-thread DUST small chunk measured
6.8 s that way instead of about 0.3 s. ``OMP_WAIT_POLICY=ACTIVE python bench/policy_speed.py``
measures the spinning default (faster on an idle machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP (see the docstring)

import torch  # noqa: E402

from vlastack.policies.base import Policy, feature_key, make_policy  # noqa: E402
from vlastack.types import ACTION, STATE, DatasetSpec, fake_batch, fake_observation, image_key  # noqa: E402


# ---------------------------------------------------------------- entries


def _spec(cfg) -> DatasetSpec:
    return DatasetSpec.robot(cameras=tuple(cfg.cameras), image_size=tuple(cfg.image_size), state_dim=cfg.state_dim,
                             action_dim=cfg.action_dim)


def generic_stats(cfg) -> dict[str, dict[str, list[float]]]:
    """Plausible statistics for state and action (every field the normalizer modes use)."""
    def one(d):
        return {"mean": [0.0] * d, "std": [1.0] * d, "min": [-2.0] * d, "max": [2.0] * d,
                "q01": [-1.5] * d, "q99": [1.5] * d}
    return {STATE: one(cfg.state_dim), ACTION: one(cfg.action_dim)}


def generic_batch(cfg, batch_size: int) -> dict[str, Any]:
    """A data-contract batch for a config with cameras, image_size, state/action dims, horizon."""
    return fake_batch(_spec(cfg), batch_size=batch_size, n_obs=getattr(cfg, "n_obs_steps", 1),
                      horizon=cfg.horizon, future_offset=getattr(cfg, "future_offset", None))


def generic_obs(cfg):
    """One observation (batch 1) for a config."""
    return fake_observation(_spec(cfg), batch_size=1, n_obs=getattr(cfg, "n_obs_steps", 1), as_torch=True)


def cached_batch(policy: Policy, batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch with images replaced by the frozen vision encoder's grids (None without one)."""
    enc = getattr(policy, "vision", None)
    if enc is None or not getattr(enc, "frozen", False):
        return None
    out = {k: v for k, v in batch.items() if not k.startswith("observation.images.") or k.endswith("_is_pad")}
    with torch.no_grad():
        for cam in policy.config.cameras:
            imgs = batch[image_key(cam)]  # (B, T, H, W, 3) uint8
            grid, _ = enc(imgs.flatten(0, 1).permute(0, 3, 1, 2).float().div(255))  # (B*T, C, h, w)
            out[feature_key(enc.name, image_key(cam))] = grid.view(*imgs.shape[:2], *grid.shape[1:]).half()
    return out


@dataclass
class Entry:
    """One policy configuration to measure."""

    label: str
    policy: str  # registry name
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    train: bool = True  # measure training throughput
    train_batch: int = 16
    train_steps: int = 5
    optimizer: bool = True  # include an AdamW step in the training step
    sampling: list[dict[str, Any]] = field(default_factory=list)  # sample_actions kwargs per latency point
    point_label: Callable[[dict[str, Any]], str] = lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())
    no_skip: dict[str, Any] | None = None  # extra kwargs that turn the skipping off (ratio measured when set)
    no_skip_at: tuple[int, ...] | None = None  # indices into ``sampling`` where the ratio is measured (None: all)
    no_skip_name: str = "no-skip"  # how the printout names the no_skip variant (Dita: "no-cache")
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 7
    warmup: int = 1
    target: tuple[dict[str, Any], int, float] | None = None  # (sampling kwargs, threads, ms) to check
    prepare: Callable[[Policy], Policy] | None = None  # applied before the latency pass (e.g. bf16 cast)
    breakdown: Callable[[Policy, Any], list[tuple[str, Callable[[], Any]]]] | None = None  # chunk parts to time
    breakdown_summary: Callable[[dict[str, float]], str] | None = None  # a line derived from the parts' times
    notes: str = ""


def dust_parts(policy, obs) -> list[tuple[str, Callable[[], Any]]]:
    """The pieces of one DUST chunk (N_A = N_o = 4), each a callable, in the order sampling runs them."""
    data, cfg, net = obs.to_flat(), policy.config, policy.net
    want = {c: list(range(cfg.n_obs_steps)) for c in cfg.cameras}
    frames = policy._camera_frames(data, want, 1)
    tasks = list(data["task"])
    ctx, valid, y = policy._condition(frames, tasks)  # y: pooled instruction (instruction_adaln) or None
    state = policy._state(data)
    steps = policy.strategy.schedule(4, 4)
    taus_a, taus_o = [st.tau_a for st in steps], [st.tau_o for st in steps]
    plan = net.sampling_plan(state, ctx, valid, taus_a, taus_o, y)
    a = torch.randn(1, cfg.horizon, cfg.action_dim)  # (1, H, D_a)
    o = torch.randn(1, cfg.num_future_tokens, policy.feat_dim)  # (1, N_v, C)

    def plan_uncached():
        net._mod_cache.clear()
        return net.sampling_plan(state, ctx, valid, taus_a, taus_o, y)
    return [("encode images", lambda: policy._camera_frames(data, want, 1)),
            ("instruction tokens", lambda: policy.text(tasks)),
            ("conditioning stack", lambda: policy._condition(frames, tasks)),
            ("plan (modulations cached)", lambda: net.sampling_plan(state, ctx, valid, taus_a, taus_o, y)),
            ("plan (modulations recomputed)", plan_uncached),
            ("network step, both streams", lambda: net.step(plan, 0, a, o, True)),
            ("network step, vision only", lambda: net.step(plan, 0, a, o, False))]


def dita_parts(policy, obs) -> list[tuple[str, Callable[[], Any]]]:
    """The pieces of one Dita chunk: prefix encoding, the first (full) pass, a cached step, an uncached step."""
    data, cfg, net = obs.to_flat(), policy.config, policy.net
    prefix, valid = policy.encode_prefix(data)  # (1, P, W), (1, P)
    x, t = torch.randn(1, cfg.horizon, cfg.action_dim), torch.tensor([500])
    _, cache = net.forward_with_cache(prefix, valid, x, t)
    return [("prefix: images, Q-Former, text", lambda: policy.encode_prefix(data)),
            ("first step, full pass keeping prefix K/V", lambda: net.forward_with_cache(prefix, valid, x, t)),
            ("cached step (suffix only)", lambda: net.denoise(x, t, cache)),
            ("uncached step (whole sequence)", lambda: net(prefix, valid, x, t))]


def dita_loop_ratio(parts: dict[str, float], steps: int = 10) -> str:
    """The prefix cache's saving on the denoising loop alone (prefix encoding excluded), from the parts."""
    full, first = parts["uncached step (whole sequence)"], parts["first step, full pass keeping prefix K/V"]
    cached = parts["cached step (suffix only)"]
    no_cache, with_cache = steps * full, first + (steps - 1) * cached
    return (f"denoising loop alone, {steps} steps: no-cache {no_cache:.1f} ms, cache {with_cache:.1f} ms, "
            f"ratio {no_cache / with_cache:.2f}x (process-CPU, 1 thread, from the parts)")


def _dust_points(n_os=(4, 16, 32, 64)):
    return [{"num_action_steps": 4, "num_vision_steps": n} for n in n_os]


ENTRIES: list[Entry] = [
    Entry("dust-tiny", "dust", "tiny", train_batch=16, train_steps=10, sampling=_dust_points(),
          point_label=lambda kw: f"N_A={kw['num_action_steps']} N_o={kw['num_vision_steps']}",
          no_skip={"skip_action_blocks": False}, repeats=15,
          notes="the test preset: tiny random encoders, 32x32 images, width 32"),
    Entry("dust-small", "dust", "small", train_batch=16, train_steps=5, sampling=_dust_points(),
          point_label=lambda kw: f"N_A={kw['num_action_steps']} N_o={kw['num_vision_steps']}",
          no_skip={"skip_action_blocks": False}, repeats=9, breakdown=dust_parts,
          target=({"num_action_steps": 4, "num_vision_steps": 4}, 2, 50.0)),
    Entry("dust-small-bf16", "dust", "small", train=False, sampling=_dust_points((4, 16)),
          point_label=lambda kw: f"N_A={kw['num_action_steps']} N_o={kw['num_vision_steps']}",
          no_skip={"skip_action_blocks": False}, repeats=9, prepare=lambda p: p.for_inference(torch.bfloat16),
          breakdown=dust_parts,
          target=({"num_action_steps": 4, "num_vision_steps": 4}, 2, 50.0),
          notes="sampling with the conditioning stack and denoiser in bfloat16, Linear weights prepacked for "
                "oneDNN (DUSTPolicy.for_inference)"),
    Entry("dust-paper_sized", "dust", "paper_sized", train_batch=1, train_steps=2, optimizer=False,
          sampling=_dust_points(),
          point_label=lambda kw: f"N_A={kw['num_action_steps']} N_o={kw['num_vision_steps']}",
          no_skip={"skip_action_blocks": False}, no_skip_at=(1,), repeats=1, warmup=0,
          notes="single timed run per point, no warm-up; training step is forward + backward only "
                "on the CPU (AdamW state for this size does not fit in 24 GiB; the CUDA pass includes AdamW)"),
    # Dita: the ratio is chunk latency without / with the prefix key/value cache (target >= 2x at small)
    Entry("dita-tiny", "dita", "tiny", train_batch=16, train_steps=10, sampling=[{"num_inference_steps": 10}],
          point_label=lambda kw: f"DDIM {kw['num_inference_steps']}", no_skip={"use_prefix_cache": False},
          no_skip_name="no-cache", repeats=15, notes="the test preset: tiny random encoders, 32x32 images, width 32"),
    Entry("dita-small", "dita", "small", train_batch=16, train_steps=5, sampling=[{"num_inference_steps": 10}],
          point_label=lambda kw: f"DDIM {kw['num_inference_steps']}", no_skip={"use_prefix_cache": False},
          no_skip_name="no-cache", repeats=7, breakdown=dita_parts, breakdown_summary=dita_loop_ratio),
    Entry("dita-paper_sized", "dita", "paper_sized", train_batch=2, train_steps=2,
          sampling=[{"num_inference_steps": 10}],
          point_label=lambda kw: f"DDIM {kw['num_inference_steps']}", no_skip={"use_prefix_cache": False},
          no_skip_name="no-cache", repeats=1, notes="vision backbone trainable (0.1x lr): no feature-cache pass"),
]


# ---------------------------------------------------------------- measurements


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1,
               sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Median wall-clock and median process-CPU milliseconds of ``fn`` over ``repeats`` runs.

    On a loaded machine the CPU time of a 1-thread run is close to its unloaded wall time.
    """
    for _ in range(warmup):
        fn()
    sync()
    ts, cs = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return statistics.median(ts) * 1000.0, statistics.median(cs) * 1000.0


def train_throughput(policy: Policy, batch: dict[str, Any], steps: int, optimizer: bool,
                     device: str = "cpu") -> tuple[float, float]:
    """Samples per wall-clock second and per process-CPU second of forward + backward (+ AdamW step).

    bf16 autocast on CUDA. With n threads on an idle machine the wall-clock rate is at most n
    times the CPU-second rate; on a loaded one the CPU-second rate is the steadier figure.
    """
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if optimizer else None
    b = len(batch["task"])
    cuda = device.startswith("cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss, _ = policy.compute_loss(batch)
        loss.backward()
        if opt is not None:
            opt.step()
        for p in params:
            p.grad = None

    step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    del opt
    return b * steps / dt, b * steps / max(dc, 1e-9)


def load() -> str:
    """The 1-minute load average and core count, for reading the timings."""
    try:
        return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "load n/a"


def run_entry(e: Entry, device: str = "cpu", threads_train: int = 2, train_batch: int | None = None
              ) -> dict[str, Any]:
    """Every figure for one entry (``train_batch`` overrides the entry's training batch, e.g. on a GPU)."""
    out: dict[str, Any] = {"label": e.label, "policy": e.policy, "preset": e.preset, "notes": e.notes}
    torch.manual_seed(0)
    from vlastack.policies.base import policy_class
    cfg = policy_class(e.policy).config_class.preset(e.preset, **e.overrides)
    t0 = time.perf_counter()
    policy = make_policy(e.policy, cfg, stats=generic_stats(cfg)).to(device)
    out["build_s"] = time.perf_counter() - t0
    out["params_trainable"] = policy.num_parameters()
    out["params_total"] = policy.num_parameters(trainable_only=False)
    net = getattr(policy, "net", None)
    out["params_denoiser"] = sum(p.numel() for p in net.parameters()) if net is not None else None
    print(f"\n== {e.label}: {e.policy} preset {e.preset!r}  ({load()})", flush=True)
    if e.notes:
        print(f"note: {e.notes}", flush=True)
    print(f"parameters: trainable {out['params_trainable'] / 1e6:.2f}M, total {out['params_total'] / 1e6:.2f}M, "
          f"denoiser {out['params_denoiser'] / 1e6 if out['params_denoiser'] else float('nan'):.2f}M "
          f"(built in {out['build_s']:.1f} s)", flush=True)

    # training throughput
    if e.train:
        torch.set_num_threads(threads_train)
        n_batch = train_batch or e.train_batch
        batch = generic_batch(cfg, n_batch)
        if device != "cpu":
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        optimizer = e.optimizer or device != "cpu"  # the CPU-only limit is host memory, not the GPU's
        out["train_images_sps"], out["train_images_sps_cpu"] = train_throughput(policy, batch, e.train_steps,
                                                                                optimizer, device)
        cb = cached_batch(policy, batch)
        out["train_cache_sps"], out["train_cache_sps_cpu"] = \
            train_throughput(policy, cb, e.train_steps, optimizer, device) if cb is not None else (None, None)
        what = ("fwd+bwd+AdamW" if optimizer else "fwd+bwd") + (", bf16 autocast" if device != "cpu" else "")
        where = f"{threads_train} threads" if device == "cpu" else device
        out["train_batch"] = n_batch

        def rate(key: str) -> str:
            if out[key] is None:
                return "n/a"
            return f"{out[key]:.1f} samples/s" + (f" ({out[key + '_cpu']:.1f} per CPU-second)" if device == "cpu"
                                                  else "")
        print(f"training ({what}, batch {n_batch}, {where}): images {rate('train_images_sps')}, "
              f"feature cache {rate('train_cache_sps')}", flush=True)
        policy.zero_grad(set_to_none=True)
        del batch, cb

    # sampling latency
    policy.eval()
    if e.prepare is not None:
        policy = e.prepare(policy)
    obs = generic_obs(cfg)
    runs: list[tuple[str, int]] = [("cpu", n) for n in e.threads] if device == "cpu" else [(device, 0)]
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    out["latency"] = []
    for dev, n_threads in runs:
        if n_threads:
            torch.set_num_threads(n_threads)
        for i, kw in enumerate(e.sampling):
            ms, cpu_ms = _median_ms(lambda: policy.sample_actions(obs, seed=0, **kw), e.repeats, e.warmup, sync)
            row = {"device": dev, "threads": n_threads, "point": e.point_label(kw), "ms": ms, "cpu_ms": cpu_ms}
            if e.no_skip is not None and (e.no_skip_at is None or i in e.no_skip_at):
                ms_full, cpu_full = _median_ms(lambda: policy.sample_actions(obs, seed=0, **kw, **e.no_skip),
                                               e.repeats, e.warmup, sync)
                row.update(ms_no_skip=ms_full, ratio_no_skip_over_skip=ms_full / ms, cpu_ms_no_skip=cpu_full,
                           cpu_ratio_no_skip_over_skip=cpu_full / max(cpu_ms, 1e-9))
            out["latency"].append(row)
            where = f"{n_threads} thread{'s' if n_threads > 1 else ''}" if n_threads else dev
            extra = f"   {e.no_skip_name} {row['ms_no_skip']:8.1f} ms (cpu {row['cpu_ms_no_skip']:8.1f} ms)  ratio " \
                    f"{row['ratio_no_skip_over_skip']:.2f}x (cpu {row['cpu_ratio_no_skip_over_skip']:.2f}x)" \
                if "ms_no_skip" in row else ""
            print(f"sample_actions [{where}] {row['point']:<16} {ms:8.1f} ms (cpu {cpu_ms:8.1f} ms){extra}", flush=True)
    if e.breakdown is not None and device == "cpu":
        torch.set_num_threads(1)
        out["breakdown_cpu_ms"] = {}
        with torch.inference_mode():
            for name, fn in e.breakdown(policy, obs):
                out["breakdown_cpu_ms"][name] = _median_ms(fn, e.repeats, 2)[1]
        print("parts of a chunk [1 thread, process-CPU ms]: "
              + ", ".join(f"{k} {v:.1f}" for k, v in out["breakdown_cpu_ms"].items()), flush=True)
        if e.breakdown_summary is not None:
            print(e.breakdown_summary(out["breakdown_cpu_ms"]), flush=True)
    if e.target is not None:
        kw, n_threads, limit = e.target
        hit = [r for r in out["latency"] if r["threads"] == n_threads and r["point"] == e.point_label(kw)]
        if hit:
            ok = hit[0]["ms"] < limit
            out["target"] = {"point": e.point_label(kw), "threads": n_threads, "limit_ms": limit,
                             "ms": hit[0]["ms"], "met": ok}
            print(f"target: {e.point_label(kw)} on {n_threads} threads < {limit:.0f} ms: "
                  f"{hit[0]['ms']:.1f} ms (cpu {hit[0]['cpu_ms']:.1f} ms) -> {'MET' if ok else 'NOT MET'}", flush=True)
            for r in out["latency"]:  # the same point on the other thread counts, for reference
                if r["point"] == e.point_label(kw) and r["threads"] not in (n_threads, 0):
                    print(f"        same point on {r['threads']} thread{'s' if r['threads'] > 1 else ''}: "
                          f"{r['ms']:.1f} ms (cpu {r['cpu_ms']:.1f} ms) -> {'under' if r['ms'] < limit else 'over'} "
                          f"{limit:.0f} ms", flush=True)
    print(f"({load()} at the end)", flush=True)
    del policy
    return out


# ---------------------------------------------------------------- DUST vs its no-world-model ablation, training


def _module_timers(parts: dict[str, list]) -> tuple[dict[str, float], Callable[[], None]]:
    """Forward hooks adding each part's process-CPU seconds (a part: a name and its modules) to a dict.

    Returns the running totals and a function that removes the hooks. Nested parts are not
    subtracted from each other: name disjoint modules.
    """
    totals = {name: 0.0 for name in parts}
    handles = []
    for name, mods in parts.items():
        for m in mods:
            start: list[float] = []
            handles.append(m.register_forward_pre_hook(lambda *_, s=start: s.append(time.process_time())))

            def post(*_, s=start, n=name):
                totals[n] += time.process_time() - s.pop()
            handles.append(m.register_forward_hook(post))
    return totals, lambda: [h.remove() for h in handles]


def dust_train_parts(policy) -> dict[str, list]:
    """The parts of a DUST training forward, each a list of modules (world-model parts only when present)."""
    net = policy.net
    parts = {"conditioning encoder": [policy.condition],
             "timestep embeddings": net.time_embedders(),
             "MMDiT blocks (joint attention, both streams)": list(net.mmdit),
             "action DiT blocks + decoder": list(net.action_blocks) + [net.action_out]}
    if policy.config.world_model:
        parts.update({"vision stream encoder (future MLP)": [net.future_enc],
                      "vision DiT blocks": list(net.vision_blocks),
                      "vision decoder (MLP head)": [net.vision_out]})
    return parts


TRAIN_PRECISIONS = ("fp32", "bf16")  # --train-precision: bf16 is the loop's CPU autocast (train.precision=bf16)


def check_precisions(precisions: Sequence[str]) -> tuple[str, ...]:
    """``precisions`` as a tuple when every one is in :data:`TRAIN_PRECISIONS` (and there is one); else ValueError."""
    bad = [x for x in precisions if x not in TRAIN_PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"precisions {list(precisions)}: valid: {', '.join(TRAIN_PRECISIONS)}")
    return tuple(precisions)


class TrainStep:
    """The training loop's optimizer step on one policy (``vlastack.train.loop.Trainer.train_step``'s work):
    ``compute_loss``, backward, gradient clipping, AdamW over the policy's parameter groups (its published
    optimiser settings), and the EMA update; each phase's process-CPU seconds are added up in ``times``."""

    PHASES = ("forward (compute_loss)", "backward", "clip + AdamW", "EMA")

    def __init__(self, policy: Policy, batch: dict[str, Any], grad_clip: float = 1.0, ema_decay: float = 0.995,
                 precision: str = "fp32"):
        from vlastack.train.config import EMAConfig, OptimConfig, TrainConfig, resolve_optim
        from vlastack.train.optim import EMA, make_optimizer

        check_precisions([precision])
        self.policy, self.batch, self.grad_clip, self.precision = policy, batch, grad_clip, precision
        cfg = resolve_optim(TrainConfig(optim=OptimConfig(grad_clip=grad_clip)),
                            getattr(type(policy.config), "OPTIM_DEFAULTS", {}))
        policy.train()
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.opt = make_optimizer(policy, cfg.optim)
        self.ema = EMA(policy, EMAConfig(decay=ema_decay))
        self.times = {k: 0.0 for k in self.PHASES}
        self.steps = 0

    def autocast(self) -> torch.autocast:
        """The forward's context: CPU bf16 autocast for ``bf16`` (as ``train.precision=bf16``), else a no-op."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def __call__(self) -> None:
        """One step."""
        c0 = time.process_time()
        with self.autocast():
            loss, _ = self.policy.compute_loss(self.batch)
        c1 = time.process_time()
        loss.backward()
        c2 = time.process_time()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        c3 = time.process_time()
        self.ema.update(self.policy)
        c4 = time.process_time()
        for k, d in zip(self.PHASES, (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
            self.times[k] += d
        self.steps += 1


def train_comparison(batch_size: int = 32, rounds: int = 5, steps: int = 3, threads: int = 1,
                     cameras: tuple[str, ...] | None = None, preset: str = "small",
                     precisions: Sequence[str] = ("fp32",)) -> dict[str, Any]:
    """DUST (``preset``) vs its no-world-model ablation (the same preset with strategy ``no_wm``):
    training samples/s at equal batch, interleaved in one process, at each of ``precisions``.

    Both train on the same data-contract batch with the frozen encoder's cached features (as the
    training loop does with ``dataset.cache_features``), with the loop's step (:class:`TrainStep`;
    ``bf16``: the forward under CPU autocast, as ``train.precision=bf16``). Each round runs ``steps``
    steps of each run (order alternating per round) after one warm-up step each; the figures are
    medians over every timed step. Prints the forward time of each part of the network, each phase of
    the step, the FLOPs of forward + backward, the ratio DUST / no_wm per precision and, with two
    precisions, each policy's bf16 / fp32 ratio.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from vlastack.policies.dust import DUSTConfig

    precisions = check_precisions(precisions)
    torch.set_num_threads(threads)
    presets = (preset, f"{preset}_no_wm")

    def label(name: str, precision: str) -> str:  # fp32 alone keeps the preset names (older JSON keys)
        return name if precisions == ("fp32",) else f"{name} {precision}"

    print(f"\n== training: DUST {presets[0]} vs {presets[1]}, batch {batch_size}, {threads} thread"
          f"{'s' if threads > 1 else ''}, cached features, {'/'.join(precisions)} ({load()})", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    for name, strategy in zip(presets, (None, "no_wm")):
        gflop = None  # the same network at every precision: counted once (fp32, no autocast)
        for precision in precisions:
            torch.manual_seed(0)
            cfg = DUSTConfig.preset(preset, **({"cameras": list(cameras)} if cameras else {}),
                                    **({"strategy": strategy} if strategy else {}))
            policy = make_policy("dust", cfg, stats=generic_stats(cfg))
            batch = cached_batch(policy, generic_batch(cfg, batch_size))
            step = TrainStep(policy, batch, precision=precision)
            if gflop is None:
                counter = FlopCounterMode(display=False)
                with counter:
                    loss, _ = policy.compute_loss(batch)
                    loss.backward()
                policy.zero_grad(set_to_none=True)
                gflop = counter.get_total_flops() / 1e9
            step()  # warm-up
            step.times, step.steps = {k: 0.0 for k in step.PHASES}, 0
            runs[label(name, precision)] = {"step": step, "wall": [], "cpu": [], "gflop": gflop,
                                            "cfg": cfg, "params": policy.num_parameters(), "precision": precision}
    order = list(runs)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            run = runs[name]
            for _ in range(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                run["step"]()
                run["wall"].append(time.perf_counter() - t0)
                run["cpu"].append(time.process_time() - c0)
    out: dict[str, Any] = {"batch": batch_size, "threads": threads, "rounds": rounds, "steps_per_round": steps,
                           "precisions": list(precisions)}
    for name, run in runs.items():
        step, cfg = run["step"], run["cfg"]
        wall, cpu = statistics.median(run["wall"]), statistics.median(run["cpu"])
        row = {"samples_per_s": batch_size / wall, "samples_per_cpu_s": batch_size / cpu,
               "step_ms": 1e3 * wall, "step_cpu_ms": 1e3 * cpu, "gflop_fwd_bwd": run["gflop"],
               "params_trainable": run["params"], "cameras": list(cfg.cameras), "precision": run["precision"],
               "future_tokens": cfg.num_future_tokens,
               "phases_cpu_ms": {k: 1e3 * v / step.steps for k, v in step.times.items()}}
        totals, remove = _module_timers(dust_train_parts(step.policy))
        n_fwd = 3
        with torch.no_grad(), step.autocast():
            for _ in range(n_fwd):
                step.policy.compute_loss(step.batch)
        remove()
        row["forward_parts_cpu_ms"] = {k: 1e3 * v / n_fwd for k, v in totals.items()}
        out[name] = row
        print(f"{name:<12} ({row['params_trainable'] / 1e6:.2f}M trainable, {len(cfg.cameras)} cameras, "
              f"{cfg.num_future_tokens} future tokens): {row['samples_per_s']:6.1f} samples/s "
              f"({row['samples_per_cpu_s']:.1f} per CPU-second; step {row['step_ms']:.0f} ms, cpu "
              f"{row['step_cpu_ms']:.0f} ms; fwd+bwd {row['gflop_fwd_bwd']:.1f} GFLOP)", flush=True)
        print("    step phases [process-CPU ms]: " + ", ".join(f"{k} {v:.1f}" for k, v in row["phases_cpu_ms"].items()),
              flush=True)
        print("    forward parts, no grad [process-CPU ms]: "
              + ", ".join(f"{k} {v:.1f}" for k, v in row["forward_parts_cpu_ms"].items()), flush=True)
    for precision in precisions:
        a, b = out[label(presets[0], precision)], out[label(presets[1], precision)]
        res = {"ratio": a["samples_per_s"] / b["samples_per_s"],
               "ratio_cpu": a["samples_per_cpu_s"] / b["samples_per_cpu_s"],
               "ratio_flops": b["gflop_fwd_bwd"] / a["gflop_fwd_bwd"]}
        res["target_met"] = {"wall": res["ratio"] >= 0.7, "cpu": res["ratio_cpu"] >= 0.7}
        if precisions == ("fp32",):
            out.update(res)  # the keys of the fp32-only JSON, as before
        else:
            out[f"ratios {precision}"] = res
        print(f"ratio {label(presets[0], precision)} / {label(presets[1], precision)} samples/s: {res['ratio']:.2f}x "
              f"wall, {res['ratio_cpu']:.2f}x per CPU-second (inverse FLOPs ratio {res['ratio_flops']:.2f}x); "
              f"target >= 0.70x: wall {'MET' if res['target_met']['wall'] else 'NOT MET'}, per CPU-second "
              f"{'MET' if res['target_met']['cpu'] else 'NOT MET'} ({load()} at the end)", flush=True)
    if len(precisions) > 1:
        for name in presets:
            lo, hi = out[label(name, precisions[0])], out[label(name, precisions[-1])]
            speed = {"wall": hi["samples_per_s"] / lo["samples_per_s"],
                     "cpu": hi["samples_per_cpu_s"] / lo["samples_per_cpu_s"]}
            out[f"speedup {name} {precisions[-1]} / {precisions[0]}"] = speed
            print(f"speed-up {name} {precisions[-1]} / {precisions[0]}: {speed['wall']:.2f}x wall, "
                  f"{speed['cpu']:.2f}x per CPU-second", flush=True)
    return out


# ---------------------------------------------------------------- exported runtimes, FLOPs and the matmul peak


def matmul_peak_gflops(threads: int, sizes=(256, 512, 1024), repeats: int = 5) -> dict[str, float]:
    """The machine's measured fp32 matmul rate on ``threads`` threads: the best GFLOP/s of any repeat over
    square sizes (the best, not the median: on a shared machine the peak is what an idle moment gives)."""
    torch.set_num_threads(threads)
    best: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            ts.append(time.perf_counter() - t0)
        best[str(n)] = 2 * n ** 3 / min(ts) / 1e9
    best["peak"] = max(best.values())
    return best


#: exported-runtime rows: name -> (runtime, inference precision override or None for the export's own);
#: the same names are ``bench/peers/run.py --runtimes`` choices. bf16 is OpenVINO's bfloat16 inference
#: (avx512_bf16 / AMX CPUs; OpenVINO runs float32 elsewhere, which :func:`inference_precision` shows)
EXPORTED_ROWS: dict[str, tuple[str, str | None]] = {
    "onnxruntime": ("onnxruntime", None),
    "openvino": ("openvino", None),
    "openvino-bf16": ("openvino", "bf16"),
}


def load_exported_row(path: str, row: str, threads: int):
    """The export folder at ``path`` opened as the :data:`EXPORTED_ROWS` row ``row`` on ``threads`` threads
    (an :class:`~vlastack.policies.export.ExportedPolicy`; ImportError when the runtime's extra is missing)."""
    from vlastack.policies.export import ExportedPolicy

    if row not in EXPORTED_ROWS:
        raise ValueError(f"exported-runtime row {row!r}: choose one of {list(EXPORTED_ROWS)}")
    runtime, precision = EXPORTED_ROWS[row]
    return ExportedPolicy.load(path, runtime, threads=threads, precision=precision)


def inference_precision(exported) -> str:
    """The precision an exported policy's runtime actually computes in: OpenVINO's compiled
    ``INFERENCE_PRECISION_HINT`` (``bf16`` only where the CPU has it), ``f32`` for ONNX Runtime."""
    return exported.computes_in


def chunk_flops(policy: Policy, obs) -> int:
    """Floating-point operations of one chunk (batch 1), as torch's FlopCounterMode counts them
    (matmuls, convolutions, attention; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        policy.sample_actions(obs, seed=0)
    return int(counter.get_total_flops())


def runtime_comparison(label: str = "dust-small", threads=(1,), repeats: int = 20, rounds: int = 3,
                       quantize: bool = False) -> dict[str, Any]:
    """Chunk p50 of one entry in torch, ONNX Runtime and OpenVINO, interleaved in one process.

    The entry is exported once (``vlastack.policies.export``); each round times every runtime
    ``repeats`` times in turn (order rotated per round) and the p50 over all rounds is printed,
    with the chunk's FLOPs and the share of the measured fp32 matmul peak on the same threads.
    """
    import tempfile

    from vlastack.policies.base import policy_class
    from vlastack.policies.export import ExportedPolicy, export_policy

    e = {x.label: x for x in ENTRIES}[label]
    torch.manual_seed(0)
    cfg = policy_class(e.policy).config_class.preset(e.preset, **e.overrides)
    policy = make_policy(e.policy, cfg, stats=generic_stats(cfg)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fresh heads are zero: perturb every trainable weight so the diff check sees them all
        for q in policy.parameters():
            if q.requires_grad:
                q.add_(torch.randn(q.shape, generator=g) * 0.02)
    obs = generic_obs(cfg)
    h, w = cfg.image_size
    print(f"\n== exported runtimes: {label} ({len(cfg.cameras)} cameras {h}x{w}, batch 1; {load()})", flush=True)
    out: dict[str, Any] = {"label": label, "cameras": list(cfg.cameras), "image_size": [h, w]}
    flops = chunk_flops(policy, obs)
    out["chunk_gflop"] = flops / 1e9
    tmp = tempfile.mkdtemp(prefix="vlastack-export-")
    t0 = time.perf_counter()
    export_policy(policy, f"{tmp}/onnx", format="onnx")
    out["export_s"] = time.perf_counter() - t0
    if quantize:
        export_policy(policy, f"{tmp}/int8", format="onnx", quantize=True)
    out["threads"] = {}
    for n in threads:
        torch.set_num_threads(n)
        runners: dict[str, Callable[[], Any]] = {"torch": lambda: policy.sample_actions(obs, seed=0)}
        for rt in EXPORTED_ROWS:
            try:
                ex = load_exported_row(f"{tmp}/onnx", rt, n)
            except ImportError as err:
                print(f"{rt}: skipped ({err})", flush=True)
                continue
            if EXPORTED_ROWS[rt][1] and inference_precision(ex) != EXPORTED_ROWS[rt][1]:
                print(f"{rt}: this CPU runs it in {inference_precision(ex)}", flush=True)
            runners[rt] = (lambda ex=ex: ex.sample_actions(obs, seed=0))
        if quantize:
            q = ExportedPolicy.load(f"{tmp}/int8", "onnxruntime", threads=n)
            runners["onnxruntime-int8"] = lambda: q.sample_actions(obs, seed=0)
        ref = policy.sample_actions(obs, seed=0).actions
        diffs = {k: float((f().actions - ref).abs().max()) for k, f in runners.items()}
        times: dict[str, list[float]] = {k: [] for k in runners}
        cpu: dict[str, list[float]] = {k: [] for k in runners}
        names = list(runners)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                runners[k]()  # warm-up of this round
                for _ in range(repeats):
                    t1, c1 = time.perf_counter(), time.process_time()
                    runners[k]()
                    times[k].append((time.perf_counter() - t1) * 1e3)
                    cpu[k].append((time.process_time() - c1) * 1e3)
        peak = matmul_peak_gflops(n)
        row = {"matmul_peak_gflops": peak["peak"], "matmul_gflops_by_size": peak}
        print(f"{n} thread(s): fp32 matmul peak {peak['peak']:.1f} GFLOP/s (best of "
              f"{', '.join(f'{k}: {v:.1f}' for k, v in peak.items() if k != 'peak')}); chunk {flops / 1e9:.3f} GFLOP",
              flush=True)
        for k in names:
            p50, c50 = statistics.median(times[k]), statistics.median(cpu[k])
            rate = flops / (p50 / 1e3) / 1e9
            cpu_rate = flops / (c50 / 1e3) / 1e9 * n  # per CPU-second, scaled to n threads' worth
            row[k] = {"p50_ms": p50, "cpu_p50_ms": c50, "min_ms": min(times[k]), "n": len(times[k]), "gflops": rate,
                      "peak_share": rate / peak["peak"], "gflops_cpu": cpu_rate, "peak_share_cpu": cpu_rate / peak["peak"],
                      "max_abs_diff_vs_torch": diffs[k]}
            print(f"  {k:<17} p50 {p50:7.1f} ms (min {min(times[k]):.1f}, n={len(times[k])}): {rate:5.1f} GFLOP/s = "
                  f"{100 * rate / peak['peak']:4.1f}% of peak | process CPU {c50:6.1f} ms per chunk: "
                  f"{cpu_rate:5.1f} GFLOP/s = {100 * cpu_rate / peak['peak']:4.1f}% of peak | "
                  f"max|diff| vs torch {diffs[k]:.2g}", flush=True)
        out["threads"][str(n)] = row
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the selected entries and print (and optionally save) their figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", default=",".join(e.label for e in ENTRIES),
                    help=f"comma-separated labels from {[e.label for e in ENTRIES]}")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA pass even when a GPU is present")
    ap.add_argument("--device", choices=("both", "cpu", "cuda"), default="both",
                    help="both: CPU, then CUDA when present; cpu or cuda: that device only")
    ap.add_argument("--cuda-train-batch", type=int, default=None,
                    help="training batch on CUDA (default: each entry's CPU batch)")
    ap.add_argument("--runtimes", default=None, metavar="ENTRY",
                    help="only compare torch / ONNX Runtime / OpenVINO chunk latency of ENTRY (e.g. dust-small), "
                         "with its FLOPs and the share of the measured matmul peak")
    ap.add_argument("--runtime-threads", default="1", help="thread counts for --runtimes, e.g. 1,2")
    ap.add_argument("--runtime-repeats", type=int, default=20, help="chunks per runtime and round (--runtimes)")
    ap.add_argument("--quantize", action="store_true", help="--runtimes: also time an int8 (dynamic) export")
    ap.add_argument("--train", action="store_true",
                    help="only compare DUST small's training samples/s with its no-world-model ablation's")
    ap.add_argument("--train-batch", type=int, default=32, help="--train: batch size (both policies)")
    ap.add_argument("--train-rounds", type=int, default=5, help="--train: interleaved rounds")
    ap.add_argument("--train-steps", type=int, default=3, help="--train: steps per policy and round")
    ap.add_argument("--train-threads", type=int, default=1, help="--train: torch threads")
    ap.add_argument("--train-cameras", default=None, help="--train: cameras, e.g. left,wrist (default: the preset's)")
    ap.add_argument("--train-preset", default="small", help="--train: the DUST preset (its no_wm ablation beside it)")
    ap.add_argument("--train-precision", default="fp32",
                    help=f"--train: comma-separated, of {TRAIN_PRECISIONS} (bf16: CPU autocast as train.precision=bf16); "
                         "fp32,bf16 interleaves both and prints the speed-up")
    args = ap.parse_args(argv)
    if args.train:
        print(f"torch {torch.__version__}, {load()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
        cams = tuple(c for c in args.train_cameras.split(",") if c) if args.train_cameras else None
        try:
            precisions = check_precisions([x for x in args.train_precision.split(",") if x])
        except ValueError as e:
            raise SystemExit(f"--train-precision {args.train_precision!r}: {e}") from None
        res = train_comparison(args.train_batch, args.train_rounds, args.train_steps, args.train_threads, cams,
                               args.train_preset, precisions)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return [res]
    if args.runtimes:
        print(f"torch {torch.__version__}, {load()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
        res = runtime_comparison(args.runtimes, [int(t) for t in args.runtime_threads.split(",")],
                                 args.runtime_repeats, quantize=args.quantize)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return [res]
    by_label = {e.label: e for e in ENTRIES}
    chosen = [s.strip() for s in args.entries.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in by_label]
    if unknown:
        raise SystemExit(f"unknown entries {unknown}; choose from {sorted(by_label)}")
    print(f"torch {torch.__version__}, {load()}, cuda {'yes' if torch.cuda.is_available() else 'no'}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    cuda = torch.cuda.is_available() and not args.no_cuda and args.device != "cpu"
    results = []
    for label in chosen:
        if args.device != "cuda":
            results.append(run_entry(by_label[label], "cpu"))
        if cuda:
            results.append(run_entry(by_label[label], "cuda", train_batch=args.cuda_train_batch))
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
