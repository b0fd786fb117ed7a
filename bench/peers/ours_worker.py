"""vlastack's side of the side-by-side benchmark: run with the project's .venv python.

    .venv/bin/python bench/peers/ours_worker.py measure --policy dust --store STORE [--preset small] ...

Prints one JSON object as the last line of stdout, with the same fields as
``lerobot_worker.py measure``: parameters, training samples/s end to end (our window loader
over the Zarr store + update) and update only (one batch in memory), peak RSS, and chunk
latency at batch 1 on each thread count (``--runtimes``: also the chunk exported and run by ONNX
Runtime / OpenVINO / OpenVINO in bf16, ``latency_runtime``, the rows of ``bench/policy_speed.py``'s
``EXPORTED_ROWS``), the chunk's floating-point work (``chunk_gflop``) and the machine's fp32 matmul
peak per thread count (``matmul_peak_gflops``), both measured by ``bench/policy_speed.py``'s
functions. The update is what a training step does: the
policy's ``compute_loss``, backward, global grad-norm clipping, AdamW over the trainable
parameters (with the policy's own parameter groups when it has them). When the store holds
the frozen vision encoder's feature cache, the same figures are also taken from the cache
(``train_cache``), the fast path our design is built around.

Each measurement runs in its own process so ``ru_maxrss`` is the peak of that policy alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlastack.datasets.store import TrajectoryStore
from vlastack.datasets.torch_dataset import make_dataloader
from vlastack.policies.base import make_policy, policy_class
from vlastack.types import STATE, Observation, image_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: policy_speed's FLOPs, peak, runtime rows
from policy_speed import (  # noqa: E402
    EXPORTED_ROWS, chunk_flops, inference_precision, load_exported_row, matmul_peak_gflops)

POLICIES = ("dust", "dita")


def rss_peak_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(name: str, store: TrajectoryStore, preset: str, overrides: dict[str, Any]):
    """The policy for ``store``'s cameras / sizes / dims, its normaliser fitted to the store's stats."""
    spec = store.spec
    data = {"cameras": list(spec.cameras), "image_size": list(spec.features[spec.image_keys[0]].shape[:2]),
            "state_dim": spec.state_dim, "action_dim": spec.action_dim}
    if name == "dita" and not policy_class(name).config_class.PRESETS[preset].get("state_dim", 0):
        data.pop("state_dim")  # Dita as published reads no state
    cfg = policy_class(name).config_class.preset(preset, **{**data, **overrides})
    stats = store.stats
    if stats is None:
        raise SystemExit(f"{store.path}: no statistics; run TrajectoryStore.open(path, mode='a').compute_stats()")
    return make_policy(name, cfg, stats=stats)


def count_params(policy) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return policy.num_parameters(), policy.num_parameters(trainable_only=False)


def optimizer_for(policy, lr: float = 1e-4, weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the policy's own groups when it defines ``param_groups``)."""
    groups = policy.param_groups(lr=lr, weight_decay=weight_decay) if hasattr(policy, "param_groups") else \
        [{"params": [p for p in policy.parameters() if p.requires_grad]}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.95, 0.999))


def update(policy, opt, batch, clip: float = 1.0) -> float:
    """One training update: compute_loss, backward, grad-norm clip, AdamW step."""
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def cycle(loader):
    """Endless iteration over a DataLoader."""
    while True:
        yield from loader


def throughput(policy, loader, batch_size: int, steps: int) -> dict[str, float]:
    """Samples/s end to end (loader + update) and update only (the last batch, in memory)."""
    opt = optimizer_for(policy)
    policy.train()
    it = cycle(loader)
    update(policy, opt, next(it))  # warm-up
    load_s = step_s = 0.0
    t0 = time.perf_counter()
    batch = None
    for _ in range(steps):
        t1 = time.perf_counter()
        batch = next(it)
        t2 = time.perf_counter()
        update(policy, opt, batch)
        load_s += t2 - t1
        step_s += time.perf_counter() - t2
    e2e = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(steps):
        update(policy, opt, batch)
    upd = time.perf_counter() - t1
    policy.zero_grad(set_to_none=True)
    return {"e2e_sps": batch_size * steps / e2e, "update_sps": batch_size * steps / upd,
            "load_ms_per_batch": 1000 * load_s / steps, "update_ms_in_e2e": 1000 * step_s / steps}


def observation_at(store: TrajectoryStore, cameras, n_obs: int, episode: int, t: int) -> Observation:
    """The batch-of-one observation window ending at frame ``t`` of ``episode`` (edge-padded at its start)."""
    ep = store.episode(episode, keys=[image_key(c) for c in cameras] + [STATE])
    idx = [max(0, t - n_obs + 1 + i) for i in range(n_obs)]
    images = {c: ep[image_key(c)][idx][None] for c in cameras}  # (1, n_obs, H, W, 3) uint8
    state = ep[STATE][idx][None].astype(np.float32)  # (1, n_obs, D_s)
    task = store.episodes[episode]["instruction"]
    return Observation(images=images, state=state, task=[task])


def chunk_latency(lp, obs: Observation, warmup: int, repeats: int) -> dict[str, float]:
    """p50 / p99 / min milliseconds of ``lp.sample_actions(obs)`` over ``repeats`` calls (seeded per call)."""
    for i in range(warmup):
        lp.reset(i)
        lp.sample_actions(obs)
    ms = []
    for i in range(repeats):
        lp.reset(i)
        t1 = time.perf_counter()
        lp.sample_actions(obs)
        ms.append(1000 * (time.perf_counter() - t1))
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms),
            "min_ms": min(ms)}


def runtime_latency(policy, obs: Observation, a) -> dict[str, Any]:
    """The policy exported (``vlastack.policies.export``) and timed in each of ``a.runtimes`` (rows of
    ``EXPORTED_ROWS``) per thread count; also the precision the runtime asked for and the one it computes
    in (OpenVINO runs bf16 as f32 on CPUs without it), and the largest difference to the torch chunk for
    the same seed."""
    import tempfile

    from vlastack.policies.export import export_policy
    from vlastack.rollout.policy_adapters import LoadedPolicy

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vlastack-export-") as tmp:
        t0 = time.perf_counter()
        try:
            export_policy(policy.eval(), f"{tmp}/onnx", format="onnx")
        except ImportError as e:  # the onnx extra is missing: our torch figures still count
            return {"error": str(e)}
        out["export_s"] = time.perf_counter() - t0
        ref = LoadedPolicy(policy)
        ref.reset(0)
        ref_chunk = ref.sample_actions(obs).actions
        for rt in a.runtimes:
            out[rt] = {"precision_asked": (EXPORTED_ROWS[rt][1] or "fp32").replace("fp", "f")}
            for n in a.threads:
                torch.set_num_threads(n)
                try:
                    ex = load_exported_row(f"{tmp}/onnx", rt, n)
                except ImportError as e:
                    out[rt] = {"error": str(e)}
                    break
                out[rt]["precision"] = inference_precision(ex)
                lp = LoadedPolicy(ex)
                out[rt][str(n)] = chunk_latency(lp, obs, a.warmup, a.repeats)
            if "error" in out[rt]:
                continue
            lp.reset(0)
            out[rt]["max_abs_diff_vs_torch"] = float((lp.sample_actions(obs).actions - ref_chunk).abs().max())
    return out


def cmd_measure(a) -> dict[str, Any]:
    """Parameters, training samples/s (images and, when cached, features), peak RSS, chunk latency."""
    torch.manual_seed(0)
    torch.set_num_threads(a.train_threads)
    t0 = time.perf_counter()
    store = TrajectoryStore.open(a.store, mode="r")
    policy = build(a.policy, store, a.preset, json.loads(a.overrides))
    cfg = policy.config
    window = cfg.delta_indices()
    trainable, total = count_params(policy)
    out: dict[str, Any] = {"side": "ours", "policy": a.policy, "preset": a.preset, "params_trainable": trainable,
                           "params_total": total, "batch": a.batch, "build_s": time.perf_counter() - t0,
                           "rss_built_mib": rss_peak_mib(), "config": json.loads(a.overrides)}
    loader = make_dataloader(store, window, batch_size=a.batch, split="all", shuffle=True, num_workers=0,
                             drop_last=True, require_action=True)
    out["train"] = {"threads": a.train_threads, "steps": a.steps, **throughput(policy, loader, a.batch, a.steps)}
    out["rss_peak_train_mib"] = rss_peak_mib()
    enc = getattr(policy, "vision", None)
    out["train_cache"] = None
    if a.feature_cache and enc is not None and getattr(enc, "frozen", False):
        from vlastack.policies.feature_cache import has_cached

        if has_cached(store, enc):
            floader = make_dataloader(store, window, batch_size=a.batch, split="all", shuffle=True, num_workers=0,
                                      drop_last=True, require_action=True, feature_encoder=enc.name)
            out["train_cache"] = {"threads": a.train_threads, "steps": a.steps, "encoder": enc.name,
                                  **throughput(policy, floader, a.batch, a.steps)}
    # latency: one real observation window from the middle of the store
    from vlastack.rollout.policy_adapters import LoadedPolicy

    lp = LoadedPolicy(policy)
    ep = store.num_episodes // 2
    s, e = store.episode_range(ep)
    obs = observation_at(store, cfg.cameras, int(getattr(cfg, "n_obs_steps", 1)), ep, (e - s) // 2)
    out["latency"] = {}
    for n in a.threads:
        torch.set_num_threads(n)
        out["latency"][str(n)] = chunk_latency(lp, obs, a.warmup, a.repeats)
    out["chunk_shape"] = list(lp.sample_actions(obs).actions.shape)
    with torch.inference_mode():
        out["chunk_gflop"] = chunk_flops(policy, obs) / 1e9
    out["matmul_peak_gflops"] = {str(n): matmul_peak_gflops(n)["peak"] for n in a.threads}
    if a.runtimes:
        out["latency_runtime"] = runtime_latency(policy, obs, a)
    out["rss_peak_mib"] = rss_peak_mib()
    return out


def cmd_cache(a) -> dict[str, Any]:
    """Write the policy's frozen vision-encoder features into the store's feature cache (skipped when current)."""
    from vlastack.policies.feature_cache import cache_features

    store = TrajectoryStore.open(a.store, mode="a")
    policy = build(a.policy, store, a.preset, json.loads(a.overrides))
    enc = getattr(policy, "vision", None)
    if enc is None or not getattr(enc, "frozen", False):
        return {"policy": a.policy, "encoder": None, "note": "no frozen vision encoder: nothing to cache"}
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    reports = cache_features(store, enc, progress=False)
    return {"policy": a.policy, "encoder": enc.name, "seconds": time.perf_counter() - t0,
            "keys": sorted(reports)}


def main(argv: list[str] | None = None) -> None:
    """Parse the command and run it; the JSON result is stdout's last line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--policy", required=True, choices=POLICIES)
    m.add_argument("--store", required=True, help="trajectory store (with stats)")
    m.add_argument("--preset", default="small")
    m.add_argument("--overrides", default="{}", help="JSON dict of config fields")
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--train-threads", type=int, default=2)
    m.add_argument("--steps", type=int, default=5)
    m.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    m.add_argument("--repeats", type=int, default=20)
    m.add_argument("--warmup", type=int, default=2)
    m.add_argument("--feature-cache", action="store_true", help="also measure training from the feature cache")
    m.add_argument("--runtimes", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help=f"also time the exported chunk in these runtimes, from {list(EXPORTED_ROWS)}")
    c = sub.add_parser("cache")
    c.add_argument("--policy", required=True, choices=POLICIES)
    c.add_argument("--store", required=True)
    c.add_argument("--preset", default="small")
    c.add_argument("--overrides", default="{}")
    a = ap.parse_args(argv)
    bad = [r for r in getattr(a, "runtimes", []) if r not in EXPORTED_ROWS]
    if bad:
        ap.error(f"--runtimes: unknown {bad}; choose from {list(EXPORTED_ROWS)}")
    print(json.dumps(cmd_measure(a) if a.cmd == "measure" else cmd_cache(a)), flush=True)


if __name__ == "__main__":
    main()
