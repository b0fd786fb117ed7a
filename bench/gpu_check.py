"""The CUDA path end to end, on a GPU machine: training, resume, NCCL, checkpoints, sampling.

    python bench/gpu_check.py --out /tmp/gpu_check            # DUST small + Dita small
    python bench/gpu_check.py --policies dust --steps 200
    python bench/gpu_check.py --speed-only --out /tmp/gc      # only the speed figures (about 5-10 minutes)
    python bench/gpu_check.py --cpu-smoke --speed-only        # check the script on a CPU (tiny presets)

What it runs, each step printing its figures:

1. a synthetic store (3 cameras 128x128, 9-D state, 7-D action; smooth random episodes);
2. ``vlastack train train=gpu`` (bf16 autocast, AdamW, EMA, atomic checkpoints) for each
   policy, steady samples/s from the run's summary;
3. a resume: the run continued to more steps from ``checkpoints/last`` on the GPU;
4. the same training launched through ``torchrun`` with two DDP ranks (one per GPU over NCCL;
   on a one-GPU machine both on cuda:0 over gloo);
5. the checkpoint loaded onto the GPU and sampled at batch 1 (median latency, chunk finite
   and reproducible with a seed).

6. speed (first; ``--speed-only`` for just these): paper-sized DUST chunks/s at N_A = N_o = 4 in
   bf16, eager and through CUDA graphs (:class:`vlastack.policies.cuda_graphs.GraphedPolicy`);
   Dita's prefix cache vs no cache (small and paper, eager and graphed); training samples/s and
   model FLOP utilisation of DUST and Dita (small and paper) against the measured bf16 matmul
   peak and the data sheet's; each with its target line.

It exits non-zero on the first failure. Paper-size speed figures come from
``bench/policy_speed.py --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vlastack.datasets.store import TrajectoryStore
from vlastack.types import ACTION, STATE, DatasetSpec, image_key

CAMERAS = ("left", "right", "wrist")


def make_store(path: Path, episodes: int = 24, length: int = 60, size=(128, 128), state_dim: int = 9,
               action_dim: int = 7) -> str:
    """A store of smooth random episodes with three cameras (written once; reused when present)."""
    if (path / "zarr.json").exists():
        return str(path)
    spec = DatasetSpec.robot(cameras=CAMERAS, image_size=size, state_dim=state_dim, action_dim=action_dim)
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(str(path), spec)
    tasks = ("open the drawer", "close the drawer", "turn on the stove")
    for e in range(episodes):
        t = np.arange(length, dtype=np.float32)[:, None]
        frames = {STATE: np.sin(t * 0.1 + rng.normal(size=(1, state_dim))).astype(np.float32),
                  ACTION: np.cos(t * 0.1 + rng.normal(size=(1, action_dim))).astype(np.float32)}
        for c in CAMERAS:
            base = rng.integers(0, 255, size=(1, *size, 3))
            frames[image_key(c)] = np.clip(base + (t[:, :, None, None] * 2).astype(int), 0, 255).astype(np.uint8)
        store.append_episode(frames, task=tasks[e % len(tasks)])  # frames: (T, ...) per key
    store.compute_stats([STATE, ACTION])
    store.close()
    return str(path)


def train_cli(args: list[str], torchrun: int = 0) -> dict:
    """Run ``vlastack train`` in a child process; return its summary.json."""
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("run_dir="))
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun}", "-m", "vlastack.cli", "train",
               *args]
    else:
        cmd = [sys.executable, "-m", "vlastack.cli", "train", *args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    print(f"  -> step {summary['step']}, {summary.get('samples_per_s', float('nan')):.1f} samples/s steady, "
          f"{time.perf_counter() - t0:.0f} s wall", flush=True)
    return summary


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def sample_check(ckpt: Path, repeats: int = 20, device: str = "cuda") -> dict:
    """Load a checkpoint onto CUDA and time batch-1 chunks; check finiteness and seeded reproducibility."""
    from vlastack.policies.base import load_policy
    from vlastack.rollout.policy_adapters import resolve_checkpoint
    from vlastack.types import fake_observation

    policy = load_policy(resolve_checkpoint(ckpt), map_location=device).eval()
    cfg = policy.config
    spec = DatasetSpec.robot(cameras=tuple(cfg.cameras), image_size=tuple(cfg.image_size), state_dim=cfg.state_dim,
                             action_dim=cfg.action_dim)
    obs = fake_observation(spec, batch_size=1, n_obs=getattr(cfg, "n_obs_steps", 1), as_torch=True)
    chunk_a = torch.as_tensor(policy.sample_actions(obs, seed=3).actions).cpu()  # (1, H, D_a)
    chunk_b = torch.as_tensor(policy.sample_actions(obs, seed=3).actions).cpu()
    assert torch.isfinite(chunk_a).all(), "non-finite chunk"
    same = torch.equal(chunk_a, chunk_b)
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        policy.sample_actions(obs, seed=0)
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1000)
    out = {"shape": list(chunk_a.shape), "seeded_equal": same, "p50_ms": statistics.median(ts),
           "max_ms": max(ts)}
    print(f"  sample_actions on {device}: chunk {out['shape']}, seeded repeat equal {same}, "
          f"p50 {out['p50_ms']:.1f} ms, max {out['max_ms']:.1f} ms", flush=True)
    return out


# ---------------------------------------------------------------------------------- speed: graphs, cache, MFU

#: dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity), for a second MFU figure
SPEC_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}


def matmul_peak_tflops(device: str, dtype=torch.bfloat16, n: int = 8192, repeats: int = 10) -> float:
    """The measured matmul rate (TFLOP/s) of an n x n x n product in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12


def _policy(name: str, preset: str, device: str, **over):
    from policy_speed import generic_stats  # bench/ is the script's folder, on sys.path

    from vlastack.policies.base import make_policy, policy_class

    torch.manual_seed(0)
    cfg = policy_class(name).config_class.preset(preset, **over)
    return make_policy(name, cfg, stats=generic_stats(cfg)).to(device).eval()


def _chunks_per_s(fn, device: str, repeats: int) -> float:
    for _ in range(3):
        fn()
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(ts)


def sampling_speed(name: str, preset: str, device: str, sampling: dict, bf16: bool, repeats: int,
                   backend: str = "cudagraphs") -> dict:
    """Batch-1 chunks/s eager and through CUDA graphs (GraphedPolicy), and their max difference."""
    from policy_speed import generic_obs

    from vlastack.policies.cuda_graphs import GraphedPolicy

    policy = _policy(name, preset, device)
    if bf16:
        policy.for_inference(torch.bfloat16, prepack=False)
    obs = generic_obs(policy.config)
    eager = _chunks_per_s(lambda: policy.sample_actions(obs, seed=0, **sampling), device, repeats)
    t0 = time.perf_counter()
    graphed = GraphedPolicy(policy, sampling, backend=backend)
    first = graphed.sample_actions(obs, seed=0)  # compiles and records
    compile_s = time.perf_counter() - t0
    fast = _chunks_per_s(lambda: graphed.sample_actions(obs, seed=0), device, repeats)
    diff = float((graphed.sample_actions(obs, seed=5).actions.float()
                  - policy.sample_actions(obs, seed=5, **sampling).actions.float()).abs().max())
    out = {"eager_chunks_per_s": eager, "graph_chunks_per_s": fast, "speedup": fast / eager,
           "graphs_used": bool(first.extras.get("cuda_graphs")), "fallback_reason": graphed.reason,
           "compile_s": compile_s, "max_abs_diff": diff}
    print(f"  {name} {preset} {sampling or ''}{' bf16' if bf16 else ''}: eager {eager:.1f} chunks/s "
          f"({1e3 / eager:.1f} ms), CUDA graphs {fast:.1f} chunks/s ({1e3 / fast:.1f} ms; x{fast / eager:.2f}; "
          f"{'graphs' if out['graphs_used'] else 'EAGER: ' + str(graphed.reason)}; first call {compile_s:.0f} s; "
          f"max|diff| {diff:.2g})", flush=True)
    return out


def train_mfu(name: str, preset: str, device: str, batch: int, steps: int, peak_tflops: float,
              spec_tflops: float | None) -> dict:
    """Training samples/s (fwd + bwd + AdamW, bf16 autocast on CUDA) and model FLOP utilisation.

    FLOPs of one step are counted by torch's FlopCounterMode (matmuls, convolutions, attention;
    forward and backward); MFU = counted FLOPs per second / the peak (measured, and the data sheet's).
    """
    from policy_speed import generic_batch, train_throughput
    from torch.utils.flop_counter import FlopCounterMode

    policy = _policy(name, preset, device)
    b = generic_batch(policy.config, batch)
    b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
    counter = FlopCounterMode(display=False)
    policy.train()
    with counter, torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        loss, _ = policy.compute_loss(b)
    with counter:
        loss.backward()
    policy.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    sps, _ = train_throughput(policy, b, steps, optimizer=True, device=device)
    achieved = flops / batch * sps / 1e12
    out = {"samples_per_s": sps, "tflop_per_step": flops / 1e12, "achieved_tflops": achieved,
           "mfu_measured_peak": achieved / peak_tflops,
           "mfu_spec_peak": achieved / spec_tflops if spec_tflops else None}
    spec = f", {100 * out['mfu_spec_peak']:.1f}% of the data sheet's {spec_tflops:.0f}" if spec_tflops else ""
    print(f"  train {name} {preset} batch {batch}: {sps:.1f} samples/s, {flops / 1e12:.3f} TFLOP/step counted, "
          f"{achieved:.1f} TFLOP/s = MFU {100 * out['mfu_measured_peak']:.1f}% of the measured {peak_tflops:.0f}{spec}",
          flush=True)
    del policy
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def speed_checks(device: str, smoke: bool, repeats: int, train_batch: int, train_steps: int,
                 backend: str = "cudagraphs") -> dict:
    """The issue's GPU figures in one pass: paper DUST chunks/s (N_A = N_o = 4, bf16) eager vs CUDA graphs,
    Dita's prefix cache vs no cache (eager and graphed), training samples/s and MFU for DUST and Dita."""
    big, small = ("tiny", "tiny") if smoke else ("paper", "small")
    name_dev = "cpu" if smoke else torch.cuda.get_device_name(0)
    peak = matmul_peak_tflops(device, torch.float32 if smoke else torch.bfloat16, n=512 if smoke else 8192)
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name_dev), None)
    print(f"\n== speed ({name_dev}): measured {'fp32' if smoke else 'bf16'} matmul peak {peak:.3g} TFLOP/s"
          + (f" (data sheet {spec:.0f})" if spec else ""), flush=True)
    res: dict = {"matmul_peak_tflops": peak, "spec_peak_tflops": spec}
    res["dust_paper_bf16"] = sampling_speed("dust", big, device, {"num_action_steps": 4, "num_vision_steps": 4},
                                            bf16=not smoke, repeats=repeats, backend=backend)
    cps = res["dust_paper_bf16"]["graph_chunks_per_s"]
    print(f"  target: paper DUST >= 100 chunks/s at N_A = N_o = 4 in bf16: {cps:.1f} -> "
          f"{'MET' if cps >= 100 else 'NOT MET'}", flush=True)
    for preset in dict.fromkeys((small, big)):
        cached = sampling_speed("dita", preset, device, {"use_prefix_cache": True}, False, repeats, backend)
        nocache = sampling_speed("dita", preset, device, {"use_prefix_cache": False}, False, repeats, backend)
        ratio_e = cached["eager_chunks_per_s"] / nocache["eager_chunks_per_s"]
        ratio_g = cached["graph_chunks_per_s"] / nocache["graph_chunks_per_s"]
        res[f"dita_{preset}_cache"] = {"cache": cached, "no_cache": nocache, "ratio_eager": ratio_e,
                                       "ratio_graphs": ratio_g}
        print(f"  Dita {preset}: prefix cache / no cache speed {ratio_e:.2f}x eager, {ratio_g:.2f}x with CUDA graphs "
              f"-> target >= 1.5x: {'MET' if max(ratio_e, ratio_g) >= 1.5 else 'NOT MET'}", flush=True)
    for name in ("dust", "dita"):
        for preset in dict.fromkeys((small, big)):
            bsz = train_batch if preset != "paper" else max(train_batch // 4, 1)
            res[f"train_{name}_{preset}"] = train_mfu(name, preset, device, bsz, train_steps, peak, spec)
    return res


def main() -> int:
    """Run every check; print figures; write them to ``--out``/gpu_check.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--policies", default="dust,dita")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="check this script itself on the CPU (tiny presets, fp32, gloo, small store)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the speed figures (CUDA graphs, Dita cache ratio, training MFU); no training runs")
    ap.add_argument("--skip-speed", action="store_true", help="skip the speed figures")
    ap.add_argument("--speed-repeats", type=int, default=20)
    ap.add_argument("--speed-train-steps", type=int, default=10)
    ap.add_argument("--graph-backend", choices=("cudagraphs", "inductor"), default="cudagraphs",
                    help="GraphedPolicy's torch.compile backend (inductor: reduce-overhead, slower to compile)")
    a = ap.parse_args()
    smoke = a.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device (use --cpu-smoke to check the script on a CPU)")
    device = "cpu" if smoke else "cuda"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name_dev = "cpu (smoke)" if smoke else torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__}, {name_dev}", flush=True)
    t0 = time.perf_counter()
    store = make_store(out / "store.zarr", **({"episodes": 4, "length": 12, "size": (32, 32)} if smoke else {}))
    print(f"store: {store} ({time.perf_counter() - t0:.0f} s)", flush=True)
    results: dict = {"torch": torch.__version__, "device": name_dev}
    if not a.skip_speed:
        results["speed"] = speed_checks(device, smoke, 3 if smoke else a.speed_repeats, 4 if smoke else a.batch,
                                        2 if smoke else a.speed_train_steps, a.graph_backend)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    preset = "tiny" if smoke else "small"
    for name in ([] if a.speed_only else [p.strip() for p in a.policies.split(",") if p.strip()]):
        print(f"\n== {name} {preset}", flush=True)
        common = [f"policy={name}", f"policy.preset={preset}", "train=gpu", f"dataset.path={store}",
                  *(["train.precision=auto", "dataset.num_workers=0"] if smoke else []),
                  f"train.batch_size={a.batch}", "train.val_every=100", "train.ckpt_every=100",
                  "train.schedule.warmup_steps=20", "progress=false", "train.log_every=50"]
        half = max(a.steps // 2, 1)
        r = {"train": train_cli([*common, f"train.steps={a.steps}", f"train.stop_after_steps={half}",
                                 f"run_dir={out / name}"])}
        r["resume"] = train_cli([*common, f"train.steps={a.steps}", f"run_dir={out / name}"])
        assert r["resume"]["step"] == a.steps, r["resume"]
        # two DDP ranks; on a one-GPU machine both share cuda:0 over gloo (NCCL needs a GPU per rank)
        n_gpu = 0 if smoke else torch.cuda.device_count()
        ddp = ["train.device=cuda:0", "train.backend=gloo"] if n_gpu == 1 else []
        r["ddp"] = train_cli([*common, *ddp, f"train.steps={max(a.steps // 3, 1)}",
                              f"run_dir={out / (name + '_ddp')}"], torchrun=2 if n_gpu < 2 else n_gpu)
        r["sample"] = sample_check(out / name / "checkpoints" / "last", device=device)
        results[name] = r
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nall {'smoke' if smoke else 'GPU'} checks passed ({time.perf_counter() - t0:.0f} s); {out / 'gpu_check.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
