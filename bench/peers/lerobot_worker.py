"""LeRobot's side of the side-by-side benchmark: run with the LeRobot venv's python, never ours.

    <venv>/bin/python bench/peers/lerobot_worker.py measure --policy diffusion --dataset DIR ...
    <venv>/bin/python bench/peers/lerobot_worker.py train   --policy act --dataset DIR --seconds 600 --out CKPT
    <venv>/bin/python bench/peers/lerobot_worker.py serve   --checkpoint CKPT     (framed messages on stdin/stdout)

``measure`` and ``train`` print one JSON object as the last line of stdout. Policies are built
the way ``lerobot-train`` builds them (``make_policy`` from the dataset's metadata,
``make_pre_post_processors`` with the dataset's stats, the policy's optimizer preset, grad-norm
clipping, ``EpisodeAwareSampler`` where the config drops last frames), with
``pretrained_backbone_weights=None`` (no downloads here). The dataset is a LeRobotDataset v3.0
directory read by LeRobot's own ``LeRobotDataset`` with ``video_backend="pyav"``.

One patch: LeRobot 0.4.4's "pyav" backend goes through ``torchvision.io.VideoReader``, which
torchvision 0.29 (the only one installable beside this torch) removed, and torchcodec does not
install here. ``vlastack_lerobot.video.decode_video_frames_pyav`` (integrations/lerobot, shared with
the plugins) does what that backend did (seek to the key frame before the first requested timestamp,
decode forward to the last one, take the closest frame within the tolerance, float32 (N, 3, H, W)
in [0, 1]) with PyAV directly, and replaces ``decode_video_frames`` inside LeRobot.

Only the standard library, numpy, torch, av and lerobot are imported (plus ``wire.py`` beside
this file and the plugins' ``vlastack_lerobot.video``, which imports nothing of vlastack).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
POLICIES = ("diffusion", "act", "dust", "dita")  # dust, dita: vlastack's LeRobot plugins (make test-lerobot)


def rss_peak_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- video decoding

# the PyAV decoder lives with the LeRobot plugins' glue (it imports only numpy, torch, av and lerobot)
sys.path.insert(0, str(HERE.parents[1] / "integrations" / "lerobot" / "vlastack_lerobot" / "src"))
from vlastack_lerobot import video as _video  # noqa: E402
from vlastack_lerobot.video import decode_video_frames_pyav  # noqa: E402,F401  (bench/peers/test_peers.py)


def patch_video_decoding() -> None:
    """Route LeRobotDataset's video reads through :func:`decode_video_frames_pyav`."""
    _video.install(force=True)


# ----------------------------------------------------------------------------- building


def policy_config(name: str, overrides: dict[str, Any]):
    """LeRobot's config for ``name`` with ``overrides`` (no pretrained backbone, CPU)."""
    if name == "diffusion":
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig as C
    elif name == "act":
        from lerobot.policies.act.configuration_act import ACTConfig as C
    elif name in ("dust", "dita"):  # the plugin, found the way lerobot-train finds it
        from lerobot.policies.factory import make_policy_config
        from lerobot.utils.import_utils import register_third_party_plugins

        register_third_party_plugins()
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
        return make_policy_config(name, device="cpu", push_to_hub=False, **kw)
    else:
        raise SystemExit(f"policy {name!r} unknown; choose one of {POLICIES}")
    kw = {"pretrained_backbone_weights": None, "device": "cpu", "push_to_hub": False}
    kw.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()})
    return C(**kw)


def build(name: str, root: str, overrides: dict[str, Any]):
    """(config, policy, preprocessor, postprocessor, dataset metadata) as lerobot-train builds them."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    meta = LeRobotDatasetMetadata(repo_id=f"local/{Path(root).name}", root=root)
    cfg = policy_config(name, overrides)
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    return cfg, policy, pre, post, meta


def make_loader(cfg, meta, root: str, batch_size: int, seed: int = 0, num_workers: int = 0):
    """LeRobotDataset (pyav video) and its DataLoader, as lerobot-train makes them."""
    import torch
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.sampler import EpisodeAwareSampler

    patch_video_decoding()
    ds = LeRobotDataset(repo_id=meta.repo_id, root=root, delta_timestamps=resolve_delta_timestamps(cfg, meta),
                        video_backend="pyav")
    torch.manual_seed(seed)
    sampler = None
    if hasattr(cfg, "drop_n_last_frames"):
        sampler = EpisodeAwareSampler(ds.meta.episodes["dataset_from_index"], ds.meta.episodes["dataset_to_index"],
                                      episode_indices_to_use=ds.episodes, drop_n_last_frames=cfg.drop_n_last_frames,
                                      shuffle=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                         num_workers=num_workers, drop_last=True)
    return ds, loader


def cycle(loader):
    """Endless iteration over a DataLoader (a new epoch when one ends)."""
    while True:
        yield from loader


def optimizer_for(cfg, policy):
    """The policy's optimizer preset (LeRobot's default when use_policy_training_preset)."""
    preset = cfg.get_optimizer_preset()
    return preset.build(policy.get_optim_params()), float(preset.grad_clip_norm)


def update(policy, opt, clip: float, batch) -> float:
    """One lerobot-train update: forward, backward, grad-norm clip, optimizer step."""
    import torch

    loss, _ = policy.forward(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), clip, error_if_nonfinite=False)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def count_params(policy) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in policy.parameters() if p.requires_grad),
            sum(p.numel() for p in policy.parameters()))


# ----------------------------------------------------------------------------- one chunk


def frame_batch(frame: dict[str, Any], cfg) -> dict[str, Any]:
    """One env frame (uint8 (H, W, 3) images, state (D,), task) as LeRobot's batch of 1."""
    import torch

    b: dict[str, Any] = {}
    for key in cfg.image_features:
        img = np.asarray(frame[key])  # (H, W, 3) uint8
        b[key] = torch.from_numpy(img).permute(2, 0, 1)[None].float().div_(255.0)  # (1, 3, H, W)
    if cfg.robot_state_feature is not None:
        b["observation.state"] = torch.from_numpy(np.asarray(frame["observation.state"], np.float32))[None]  # (1, D)
    b["task"] = [frame.get("task", "")]
    return b


def chunk(policy, pre, post, cfg, frames: list[dict[str, Any]]):
    """The chunk LeRobot executes after the observations ``frames`` (oldest first): (1, n_action_steps, D_a).

    Diffusion Policy: its observation queues get the frames in order (the first copied to fill
    them, as ``select_action`` does at an episode's start), then ``predict_action_chunk``. ACT:
    ``predict_action_chunk`` on the newest frame, cut to ``n_action_steps``. Normalisation and
    unnormalisation are LeRobot's processors.
    """
    import torch

    policy.reset()
    with torch.inference_mode():
        batch = None
        for frame in frames:
            batch = {k: v for k, v in pre(frame_batch(frame, cfg)).items() if k != "action"}  # as select_action
            if cfg.type == "diffusion":
                from lerobot.policies.utils import populate_queues

                batch["observation.images"] = torch.stack([batch[k] for k in cfg.image_features], dim=-4)
                policy._queues = populate_queues(policy._queues, batch)
            elif hasattr(policy, "_history"):  # vlastack's plugins keep their own observation history
                batch = policy._history(batch)
        actions = policy.predict_action_chunk(batch)[:, :cfg.n_action_steps]  # (1, n_action_steps, D_a)
        return post(actions)


def item_frames(item: dict[str, Any], cfg, n_obs: int) -> list[dict[str, Any]]:
    """A dataset item (float images (T, 3, H, W) or (3, H, W), state (T, D) or (D,)) as ``n_obs`` env frames."""
    state = item["observation.state"].reshape(-1, item["observation.state"].shape[-1])  # (T, D)
    frames = []
    for t in range(n_obs):
        f = {"observation.state": state[min(t, len(state) - 1)].numpy(), "task": item.get("task", "")}
        for key in cfg.image_features:
            img = item[key].reshape(-1, *item[key].shape[-3:])  # (T, 3, H, W)
            f[key] = (img[min(t, len(img) - 1)].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        frames.append(f)
    return frames


# ----------------------------------------------------------------------------- commands


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    return float(np.percentile(np.asarray(xs, np.float64), q))


def cmd_measure(a) -> dict[str, Any]:
    """Parameters, training samples/s (end to end and update only), peak RSS, chunk latency."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(a.train_threads)
    t0 = time.perf_counter()
    cfg, policy, pre, post, meta = build(a.policy, a.dataset, json.loads(a.overrides))
    ds, loader = make_loader(cfg, meta, a.dataset, a.batch)
    trainable, total = count_params(policy)
    out: dict[str, Any] = {"side": "lerobot", "policy": a.policy, "params_trainable": trainable, "params_total": total,
                           "batch": a.batch, "build_s": time.perf_counter() - t0, "rss_built_mib": rss_peak_mib(),
                           "config": {k: v for k, v in json.loads(a.overrides).items()}}
    opt, clip = optimizer_for(cfg, policy)
    policy.train()
    it = cycle(loader)
    # warm-up (first batch, first update: allocator, lazy init)
    update(policy, opt, clip, pre(next(it)))
    # end to end: data loading (LeRobotDataset, video decoding) + preprocessing + update
    load_s = step_s = 0.0
    t_start = time.perf_counter()
    for _ in range(a.steps):
        t1 = time.perf_counter()
        batch = pre(next(it))
        t2 = time.perf_counter()
        update(policy, opt, clip, batch)
        t3 = time.perf_counter()
        load_s += t2 - t1
        step_s += t3 - t2
    e2e = time.perf_counter() - t_start
    # update only, on one batch already in memory
    t1 = time.perf_counter()
    for _ in range(a.steps):
        update(policy, opt, clip, batch)
    upd = time.perf_counter() - t1
    out["train"] = {"threads": a.train_threads, "steps": a.steps, "e2e_sps": a.batch * a.steps / e2e,
                    "update_sps": a.batch * a.steps / upd, "load_ms_per_batch": 1000 * load_s / a.steps,
                    "update_ms_in_e2e": 1000 * step_s / a.steps}
    out["rss_peak_train_mib"] = rss_peak_mib()
    del opt
    policy.zero_grad(set_to_none=True)

    # chunk latency at batch 1: real frames of the dataset (as uint8, like an env gives them)
    policy.eval()
    n_obs = int(getattr(cfg, "n_obs_steps", 1))
    frames = item_frames(ds[len(ds) // 2], cfg, n_obs)
    out["latency"] = {}
    for n in a.threads:
        torch.set_num_threads(n)
        for _ in range(a.warmup):
            chunk(policy, pre, post, cfg, frames)
        ms = []
        for _ in range(a.repeats):
            t1 = time.perf_counter()
            chunk(policy, pre, post, cfg, frames)
            ms.append(1000 * (time.perf_counter() - t1))
        out["latency"][str(n)] = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms),
                                  "min_ms": min(ms)}
    a_shape = tuple(chunk(policy, pre, post, cfg, frames).shape)
    out["chunk_shape"] = list(a_shape)
    out["rss_peak_mib"] = rss_peak_mib()
    return out


def cmd_train(a) -> dict[str, Any]:
    """Train for ``--seconds`` of wall clock (or ``--max-steps``), then save policy and processors."""
    import torch

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.train_threads)
    cfg, policy, pre, post, meta = build(a.policy, a.dataset, json.loads(a.overrides))
    ds, loader = make_loader(cfg, meta, a.dataset, a.batch, seed=a.seed)
    opt, clip = optimizer_for(cfg, policy)
    policy.train()
    it = cycle(loader)
    steps, losses = 0, []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < a.seconds and (a.max_steps is None or steps < a.max_steps):
        losses.append(update(policy, opt, clip, pre(next(it))))
        steps += 1
        if steps % 50 == 0:
            print(f"[lerobot {a.policy}] step {steps} loss {statistics.fmean(losses[-50:]):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    (out_dir / "peers_train.json").write_text(json.dumps({"policy": a.policy, "overrides": json.loads(a.overrides)}))
    return {"side": "lerobot", "policy": a.policy, "steps": steps, "wall_s": wall, "samples": steps * a.batch,
            "loss_first": losses[0] if losses else None, "loss_last50": statistics.fmean(losses[-50:]) if losses else None,
            "checkpoint": str(out_dir), "rss_peak_mib": rss_peak_mib()}


def load_checkpoint(path: str):
    """(config, policy, preprocessor, postprocessor) from a ``train`` checkpoint directory."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    info = json.loads((Path(path) / "peers_train.json").read_text())
    cls = get_policy_class(info["policy"])
    policy = cls.from_pretrained(path)
    policy.eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
    return policy.config, policy, pre, post


def cmd_serve(a) -> None:
    """Answer framed requests on stdin: {"op": "info"} | {"op": "chunk", "frames": [...]} | {"op": "close"}."""
    import torch

    sys.path.insert(0, str(HERE))
    import wire

    torch.set_num_threads(a.threads)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed by libraries must not corrupt the stream
    cfg, policy, pre, post = load_checkpoint(a.checkpoint)
    wire.write(stdout, {"ok": True, "n_obs": int(getattr(cfg, "n_obs_steps", 1)), "n_action_steps": cfg.n_action_steps,
                        "cameras": [k.split(".")[-1] for k in cfg.image_features], "policy": cfg.type,
                        "params_trainable": count_params(policy)[0]})
    while True:
        try:
            msg = wire.read(stdin)
        except EOFError:
            return
        op = msg.get("op")
        try:
            if op == "close":
                wire.write(stdout, {"ok": True})
                return
            if op == "seed":
                torch.manual_seed(int(msg["seed"]))
                wire.write(stdout, {"ok": True})
            elif op == "chunk":
                acts = chunk(policy, pre, post, cfg, msg["frames"])  # (1, n_action_steps, D_a)
                wire.write(stdout, {"ok": True, "actions": acts.float().numpy().astype(np.float32)})
            else:
                wire.write(stdout, {"ok": False, "error": f"unknown op {op!r}; ops: seed, chunk, close"})
        except Exception as e:  # report to the client instead of dying silently
            wire.write(stdout, {"ok": False, "error": f"{type(e).__name__}: {e}"})


def main(argv: list[str] | None = None) -> None:
    """Parse the command and run it; JSON results go to stdout's last line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("measure", "train"):
        p = sub.add_parser(name)
        p.add_argument("--policy", required=True, choices=POLICIES)
        p.add_argument("--dataset", required=True, help="LeRobotDataset v3.0 directory")
        p.add_argument("--overrides", default="{}", help="JSON dict of config fields")
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--train-threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
    m = sub.choices["measure"]
    m.add_argument("--steps", type=int, default=5)
    m.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    m.add_argument("--repeats", type=int, default=20)
    m.add_argument("--warmup", type=int, default=2)
    t = sub.choices["train"]
    t.add_argument("--seconds", type=float, required=True)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--out", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.cmd == "serve":
        cmd_serve(a)
        return
    res = cmd_measure(a) if a.cmd == "measure" else cmd_train(a)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
