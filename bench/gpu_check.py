"""The CUDA path end to end, on a GPU machine: training, resume, NCCL, checkpoints, sampling.

    python bench/gpu_check.py --out /tmp/gpu_check            # DUST small + Dita small
    python bench/gpu_check.py --policies dust --steps 200

What it runs, each step printing its figures:

1. a synthetic store (3 cameras 128x128, 9-D state, 7-D action; smooth random episodes);
2. ``vlastack train train=gpu`` (bf16 autocast, AdamW, EMA, atomic checkpoints) for each
   policy, steady samples/s from the run's summary;
3. a resume: the run continued to more steps from ``checkpoints/last`` on the GPU;
4. the same training launched through ``torchrun`` with two DDP ranks (one per GPU over NCCL;
   on a one-GPU machine both on cuda:0 over gloo);
5. the checkpoint loaded onto the GPU and sampled at batch 1 (median latency, chunk finite
   and reproducible with a seed).

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


def main() -> int:
    """Run every check; print figures; write them to ``--out``/gpu_check.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--policies", default="dust,dita")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="check this script itself on the CPU (tiny presets, fp32, gloo, small store)")
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
    preset = "tiny" if smoke else "small"
    for name in [p.strip() for p in a.policies.split(",") if p.strip()]:
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
