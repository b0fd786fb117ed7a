"""Windows per second: Zarr trajectory store vs LeRobotDataset v3 (mp4) vs the feature cache.

One run builds a store of synthetic camera-like episodes (3 cameras at 128x128, state 9,
action 7), writes the same episodes as a LeRobotDataset v3.0 directory (AV1 mp4, key frame
every 2 frames, as LeRobot writes them) and caches per-frame features shaped like
EfficientNet-lite0's head at 128x128 (1280 x 4 x 4 float16). It then loads random windows
(n_obs=2 images/state, H=16 actions, batch 64) with 0 and 2 DataLoader workers:

    zarr      vlastack's WindowSampler + make_dataloader (images uint8 from the store)
    mp4       a frame-decoding loader over the LeRobot directory: per window and camera, seek to
              the key frame before the first needed frame and decode forward with PyAV (open
              containers cached per worker; state/action from the parquet, in memory)
    features  make_dataloader(feature_encoder=...) (cached features in place of images)

and prints a table with windows/s and the ratios zarr/mp4 and features/zarr, and the CPU time
per window of each path (main process and workers together) with the zarr/mp4 ratio by CPU time,
and the CPU per batch of the main process and of the workers apart.

    .venv/bin/python bench/loader.py                 # defaults: 30 episodes x 100 frames
    .venv/bin/python bench/loader.py --episodes 10 --length 60 --seconds 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlastack.datasets.sampler import WindowSpec
from vlastack.datasets.store import TrajectoryStore
from vlastack.datasets.torch_dataset import make_dataloader
from vlastack.types import ACTION, STATE, DatasetSpec, pad_key

CAMERAS = ("left", "right", "wrist")
FEATURE_SHAPE = (1280, 4, 4)  # EfficientNet-lite0 head on 128x128 images
ENCODER = "efficientnet_lite0_synthetic"


# ----------------------------------------------------------------------------- data


def synthetic_episode(spec: DatasetSpec, length: int, seed: int) -> dict[str, np.ndarray]:
    """Camera-like frames: a shaded background, moving coloured boxes, mild sensor noise."""
    rng = np.random.default_rng(seed)
    h, w = 128, 128
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out: dict[str, np.ndarray] = {}
    for cam in CAMERAS:
        base = rng.uniform(40, 200, 3).astype(np.float32)
        grad = rng.uniform(-0.6, 0.6, (2, 3)).astype(np.float32)
        bg = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]  # (H, W, 3)
        frames = np.broadcast_to(bg, (length, h, w, 3)).copy()  # (T, H, W, 3)
        for _ in range(3):
            size = rng.integers(12, 32, 2)
            p0, v = rng.uniform(0, 96, 2), rng.uniform(-1.0, 1.0, 2)
            color = rng.uniform(0, 255, 3)
            for t in range(length):
                y, x = (p0 + v * t).astype(int) % (h - size)
                frames[t, y:y + size[0], x:x + size[1]] = color
        frames += rng.normal(0, 2.0, frames.shape).astype(np.float32)
        out[f"observation.images.{cam}"] = np.clip(frames, 0, 255).astype(np.uint8)
    t = np.linspace(0, 1, length, dtype=np.float32)[:, None]
    out[STATE] = (np.sin(t * rng.uniform(1, 5, 9)) + rng.normal(0, 0.01, (length, 9))).astype(np.float32)
    out[ACTION] = (np.cos(t * rng.uniform(1, 5, 7)) + rng.normal(0, 0.01, (length, 7))).astype(np.float32)
    return out


def build(root: Path, episodes: int, length: int) -> tuple[Path, Path]:
    """The store (with a feature cache) and the LeRobot v3 directory of the same episodes."""
    from vlastack.datasets.lerobot import store_to_lerobot

    spec = DatasetSpec.robot(cameras=CAMERAS, image_size=(128, 128), state_dim=9, action_dim=7)
    store_path, lerobot_path = root / "store", root / "lerobot"
    t0 = time.perf_counter()
    with TrajectoryStore.create(store_path, spec, overwrite=True) as store:
        for i in range(episodes):
            store.append_episode(synthetic_episode(spec, length, i), task=f"task {i % 4}")
        t1 = time.perf_counter()
        rng = np.random.default_rng(0)
        for key in spec.image_keys:
            feats = rng.standard_normal((store.num_frames, *FEATURE_SHAPE), dtype=np.float32).astype(np.float16)
            store.write_features(ENCODER, key, feats, meta={"note": "synthetic values, real shape"})
    t2 = time.perf_counter()
    store_to_lerobot(store_path, lerobot_path, overwrite=True)
    t3 = time.perf_counter()
    print(f"built {episodes} episodes x {length} frames: store {t1 - t0:.1f}s, features {t2 - t1:.1f}s, "
          f"lerobot v3 mp4 {t3 - t2:.1f}s; sizes: store {_du(store_path / 'data') / 2**20:.1f} MiB, "
          f"feature cache {_du(store_path / 'features') / 2**20:.1f} MiB, mp4 {_du(lerobot_path / 'videos') / 2**20:.1f} MiB")
    return store_path, lerobot_path


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- mp4 baseline


class Mp4WindowDataset(Dataset):
    """Windows decoded from a LeRobotDataset v3.0 directory, frame by frame, as LeRobot's loader does."""

    def __init__(self, root: Path, n_obs: int, horizon: int):
        import pyarrow.parquet as pq

        self.root = Path(root)
        info = json.loads((self.root / "meta" / "info.json").read_text())
        self.fps = float(info["fps"])
        self.video_path = info["video_path"]
        self.video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
        eps = pq.read_table(sorted((self.root / "meta" / "episodes").rglob("*.parquet"))).to_pydict()
        self.ep_from = np.asarray(eps["dataset_from_index"], np.int64)
        self.ep_to = np.asarray(eps["dataset_to_index"], np.int64)
        self.video = {k: [(int(c), int(f), float(ts)) for c, f, ts in zip(eps[f"videos/{k}/chunk_index"],
                                                                           eps[f"videos/{k}/file_index"],
                                                                           eps[f"videos/{k}/from_timestamp"])]
                      for k in self.video_keys}
        data = pq.read_table(sorted((self.root / "data").rglob("*.parquet")), columns=[STATE, ACTION, "episode_index"])
        self.state = np.asarray(data.column(STATE).to_pylist(), np.float32)  # (N, 9)
        self.action = np.asarray(data.column(ACTION).to_pylist(), np.float32)  # (N, 7)
        self.episode = np.asarray(data.column("episode_index").to_pylist(), np.int64)  # (N,)
        self.ep_task = [t[0] if isinstance(t, list) else str(t) for t in eps["tasks"]]  # task strings
        self.n_obs, self.horizon = n_obs, horizon
        self._containers: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.episode)

    def _container(self, path: str):
        import av

        c = self._containers.get(path)
        if c is None:
            c = self._containers[path] = av.open(path)
        return c

    def _decode(self, key: str, ep: int, frames: np.ndarray) -> np.ndarray:
        """Frames (T,) of episode ``ep`` from its mp4 -> (T, H, W, 3) uint8 (seek + decode forward)."""
        chunk, file, from_ts = self.video[key][ep]
        path = str(self.root / self.video_path.format(video_key=key, chunk_index=chunk, file_index=file))
        c = self._container(path)
        stream = c.streams.video[0]
        ts = from_ts + frames / self.fps  # (T,) seconds in the file
        tol = 0.5 / self.fps
        c.seek(int(max(0.0, ts.min() - tol) / stream.time_base), stream=stream, backward=True)
        got_t, got = [], []
        for fr in c.decode(stream):
            t = float(fr.pts * stream.time_base)
            if t >= ts.min() - tol:
                got_t.append(t)
                got.append(fr.to_ndarray(format="rgb24"))
            if t >= ts.max() - tol:
                break
        near = np.abs(np.asarray(got_t)[None] - ts[:, None]).argmin(1)  # (T,)
        return np.stack([got[i] for i in near])

    def __getitem__(self, g: int) -> dict:
        ep = int(self.episode[g])
        s, e = int(self.ep_from[ep]), int(self.ep_to[ep])
        obs = np.arange(g - self.n_obs + 1, g + 1)
        obs_c = np.clip(obs, s, e - 1)
        act = np.arange(g, g + self.horizon)
        act_c = np.clip(act, s, e - 1)
        out = {k: torch.from_numpy(self._decode(k, ep, obs_c - s)) for k in self.video_keys}  # (T, H, W, 3)
        for k in self.video_keys:
            out[pad_key(k)] = torch.from_numpy(obs != obs_c)
        out[STATE] = torch.from_numpy(self.state[obs_c])
        out[pad_key(STATE)] = torch.from_numpy(obs != obs_c)
        out[ACTION] = torch.from_numpy(self.action[act_c])
        out[pad_key(ACTION)] = torch.from_numpy(act != act_c)
        out["task"] = self.ep_task[ep]
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_containers"] = {}
        return d


# ----------------------------------------------------------------------------- timing


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _children() -> list[int]:
    """Pids of this process's live children (Linux /proc; a generator's DataLoader workers)."""
    out: list[int] = []
    for f in Path("/proc/self/task").glob("*/children"):
        try:
            out += [int(p) for p in f.read_text().split()]
        except OSError:
            pass
    return out


def train_readahead(store_path: Path, win: WindowSpec, batch: int, workers: int):
    """The training loop's read-ahead (``vlastack.train.data.step_batches``) over this store: steps of one micro-batch."""
    from vlastack.datasets.sampler import WindowSampler
    from vlastack.train import data as D

    sampler = D.MultiSampler([WindowSampler(store_path, win)])
    data = D.StepBatches(sampler, D.StepOrder(len(sampler), batch, seed=0), rank=0)
    return D.step_batches(data, 0, 1 << 30, num_workers=workers)


def time_loader(loader, seconds: float, max_batches: int, warmup: int = 2) -> tuple[float, int, float, float, float]:
    """Windows per second over at least ``seconds`` (or ``max_batches``), after ``warmup`` batches,
    the CPU milliseconds per window that the main process and the loader's workers spent together
    (on a loaded machine the steadier figure: extra workers cannot take more than their share),
    and the CPU milliseconds per batch of the main process and of the workers apart."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])] or _children()  # the same across epochs
    m0, w0 = time.process_time(), sum(_process_cpu_s(p) for p in pids)
    n, t0 = 0, time.perf_counter()
    batches = 0
    while batches < max_batches:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += sum(len(x["task"]) for x in b) if isinstance(b, list) else len(b["task"])  # micro-batches or a batch
        batches += 1
        if time.perf_counter() - t0 >= seconds and batches >= 3:
            break
    dt = time.perf_counter() - t0
    main, workers = time.process_time() - m0, sum(_process_cpu_s(p) for p in pids) - w0
    del it
    return n / dt, batches, 1e3 * (main + workers) / max(n, 1), 1e3 * main / batches, 1e3 * workers / batches


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-obs", type=int, default=2)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--seconds", type=float, default=8.0, help="timing window per configuration")
    p.add_argument("--dir", type=Path, default=None, help="build here and keep (default: a temp dir, removed)")
    p.add_argument("--reuse", action="store_true", help="with --dir: reuse what an earlier run built there")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = args.dir or Path(tempfile.mkdtemp(prefix="vlastack-bench-loader-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.reuse and (root / "store").is_dir() and (root / "lerobot" / "meta" / "info.json").is_file():
            store_path, lerobot_path = root / "store", root / "lerobot"
            print(f"reusing {store_path} and {lerobot_path}")
        else:
            store_path, lerobot_path = build(root, args.episodes, args.length)
        win = WindowSpec(n_obs=args.n_obs, horizon=args.horizon)
        rows = []
        for nw in args.workers:
            zl = make_dataloader(store_path, win, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=nw)
            z = time_loader(zl, args.seconds, 10_000)
            del zl
            fl = make_dataloader(store_path, win, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=nw,
                                 feature_encoder=ENCODER)
            f = time_loader(fl, args.seconds, 10_000)
            del fl
            # spawned, not forked: a forked worker inherits the parent's PyAV/dav1d decoder state, and
            # freeing it in the child can hang on a lock held by a thread that was not forked
            ml = DataLoader(Mp4WindowDataset(lerobot_path, args.n_obs, args.horizon), batch_size=args.batch,
                            shuffle=True, drop_last=True, num_workers=nw, generator=torch.Generator().manual_seed(0),
                            persistent_workers=nw > 0, multiprocessing_context="spawn" if nw > 0 else None)
            m = time_loader(ml, args.seconds, 10_000, warmup=1)
            del ml
            t = time_loader(train_readahead(store_path, win, args.batch, nw), args.seconds, 10_000) if nw else None
            rows.append((nw, z, m, f, t))
        print(f"\nwindows/s: 3 cameras 128x128, n_obs={args.n_obs}, H={args.horizon}, batch {args.batch}, "
              f"{args.episodes * args.length} frames, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
        print(f"{'workers':>7} | {'zarr':>9} | {'mp4 (AV1)':>9} | {'features':>9} | {'zarr/mp4':>8} | {'feat/zarr':>9}"
              f" | CPU ms per window zarr / mp4 / features | zarr/mp4 by CPU")
        print("-" * 124)
        for nw, z, m, f, _ in rows:
            print(f"{nw:>7} | {z[0]:>9.0f} | {m[0]:>9.1f} | {f[0]:>9.0f} | {z[0] / m[0]:>7.1f}x | {f[0] / z[0]:>8.1f}x"
                  f" | {z[2]:>8.2f} / {m[2]:>7.2f} / {f[2]:>6.2f}{'':>13} | {m[2] / max(z[2], 1e-9):>6.1f}x")
        print(f"(batches timed per row: zarr/mp4/features = "
              + ", ".join(f"{z[1]}/{m[1]}/{f[1]}" for _, z, m, f, _ in rows) + ")")
        print("CPU ms per batch, main process + workers: " + "; ".join(
            f"{nw} workers: zarr {z[3]:.1f} + {z[4]:.1f}, mp4 {m[3]:.1f} + {m[4]:.1f}, features {f[3]:.1f} + {f[4]:.1f}"
            for nw, z, m, f, _ in rows))
        for nw, z, _, _, t in rows:
            if t is not None:
                print(f"training read-ahead (train.data.step_batches, images), {nw} workers: {t[0]:.0f} windows/s, "
                      f"CPU {t[2]:.2f} ms per window, per batch main {t[3]:.1f} + workers {t[4]:.1f} "
                      f"({t[1]} batches; make_dataloader: {z[2]:.2f} ms per window)")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
