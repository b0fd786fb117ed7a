"""DUST and Dita as LeRobot plugins, in LeRobot's own environment (``make test-lerobot``).

Runs with the side venv's python (LeRobot 0.4.4, torch 2.14.1, vlastack's core and the three
distributions under integrations/lerobot installed); skipped where LeRobot or the plugins are absent.
The data: a tiny synthetic trajectory store (2 cameras at 32x32, 4-D state, 3-D actions, the
``tiny`` presets' shapes) made here and converted to LeRobotDataset v3.0 by vlastack's converter.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

lerobot = pytest.importorskip("lerobot", reason="LeRobot is not installed here: run `make test-lerobot` "
                                                "(the side venv of bench/peers/setup_venv.sh)")
pytest.importorskip("lerobot_policy_dust", reason="the plugin is not installed: run `make test-lerobot`")
pytest.importorskip("lerobot_policy_dita", reason="the plugin is not installed: run `make test-lerobot`")

import torch  # noqa: E402
from lerobot.configs.policies import PreTrainedConfig  # noqa: E402
from lerobot.datasets.factory import resolve_delta_timestamps  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_policy, make_policy_config, \
    make_pre_post_processors  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402

from vlastack.policies.base import Policy  # noqa: E402
from vlastack.types import ACTION, STATE, DatasetSpec  # noqa: E402

POLICIES = ("dust", "dita")
CAMERAS = ("left", "wrist")
TASKS = ("open the drawer", "close the drawer", "turn on the stove")
STEPS, BATCH = 20, 4
LOSS_LINE = re.compile(r"step:(\d+) .*? loss:([-+0-9.eE]+|nan|inf)")

torch.set_num_threads(1)
register_third_party_plugins()


def make_dataset(store: Path, out: Path, episodes: int = 3, length: int = 30) -> Path:
    """A tiny trajectory store (a moving bar in the images, actions a function of the state),
    converted to LeRobotDataset v3.0 by ``vlastack.datasets.convert.convert`` (``vlastack convert``)."""
    from vlastack.datasets.convert import convert
    from vlastack.datasets.store import TrajectoryStore

    spec = DatasetSpec.robot(cameras=CAMERAS, image_size=(32, 32), state_dim=4, action_dim=3, fps=10)
    st = TrajectoryStore.create(store, spec, overwrite=True)
    for e in range(episodes):
        t = np.linspace(0, 1, length, dtype=np.float32)  # (T,)
        state = np.stack([np.sin(2 * np.pi * t + e), np.cos(2 * np.pi * t + e), t, np.full(length, e)], 1)  # (T, 4)
        action = np.stack([state[:, 0] / 2, state[:, 1] / 2, 2 * t - 1], 1)  # (T, 3)
        img = np.zeros((length, 32, 32, 3), np.uint8)  # (T, H, W, 3)
        for i in range(length):
            x = int(t[i] * 28)
            img[i, :, x:x + 4] = 255
        img[..., 2] = 40 * e
        st.append_episode({"observation.images.left": img, "observation.images.wrist": img[:, ::-1].copy(),
                           STATE: state.astype(np.float32), ACTION: action.astype(np.float32)}, task=TASKS[e])
    st.compute_stats()
    st.close()
    convert(store, out, to="lerobot", overwrite=True)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return make_dataset(d / "tiny.zarr", d / "tiny_lerobot")


def lerobot_train(dataset: Path, out: Path, policy: str, *extra: str) -> subprocess.CompletedProcess:
    """``lerobot-train --policy.type=<policy> --dataset.root=<dataset> --steps=20 --batch_size=4`` (tiny preset)."""
    exe = Path(sys.executable).with_name("lerobot-train")
    cmd = [str(exe), f"--policy.type={policy}", "--policy.preset=tiny", "--policy.device=cpu",
           "--policy.push_to_hub=false", "--policy.optimizer_lr=1e-3", f"--dataset.repo_id=local/{dataset.name}",
           f"--dataset.root={dataset}", f"--steps={STEPS}", f"--batch_size={BATCH}", "--log_freq=1",
           f"--save_freq={STEPS}", f"--output_dir={out}", "--num_workers=0", "--wandb.enable=false", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module", params=POLICIES)
def trained(request, dataset, tmp_path_factory):
    """(policy name, pretrained_model dir, per-step losses) of a 20-step lerobot-train run."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    r = lerobot_train(dataset, out, request.param)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    losses = {int(s): float(v) for s, v in LOSS_LINE.findall(log)}
    return request.param, out / "checkpoints" / "last" / "pretrained_model", [losses[i] for i in sorted(losses)]


def observation(ds: LeRobotDataset, index: int) -> dict:
    """One frame of ``ds`` (no time window) as an environment would give it: images (3, H, W), state (D,), task."""
    return {k: v for k, v in ds[index].items() if k.startswith("observation.") or k == "task"}


def reload(ckpt: Path, dataset: Path):
    """(policy, preprocessor, postprocessor, dataset metadata) as lerobot-eval / record load a checkpoint."""
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.pretrained_path = ckpt
    meta = LeRobotDatasetMetadata(f"local/{dataset.name}", root=dataset)
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(ckpt))
    return policy, pre, post, meta


# ---------------------------------------------------------------- lerobot-train


def test_lerobot_train_logs_a_finite_falling_loss_and_saves(trained):
    name, ckpt, losses = trained
    assert len(losses) == STEPS, losses
    assert all(math.isfinite(x) for x in losses), losses
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"{name}: loss first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last < first, f"{name}: loss did not fall over {STEPS} steps: {losses}"
    for f in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (ckpt / f).is_file(), f
    doc = json.loads((ckpt / "config.json").read_text())
    assert doc["type"] == name and doc["preset"] == "tiny"
    assert doc["vlastack"]["config"]["cameras"] == list(CAMERAS)  # resolved from the dataset


def test_make_policy_reloads_and_select_action_gives_actions_in_range(trained, dataset):
    name, ckpt, _ = trained
    policy, pre, post, meta = reload(ckpt, dataset)
    assert type(policy) is get_policy_class(name)
    ds = LeRobotDataset(meta.repo_id, root=dataset)
    lo, hi = np.asarray(meta.stats[ACTION]["min"]), np.asarray(meta.stats[ACTION]["max"])
    policy.reset()
    steps = policy.chunk_steps()
    for i in range(steps + 1):  # past one chunk: the queue refills
        a = post(policy.select_action(pre(observation(ds, i))))
        assert tuple(a.shape) == (1, 3), a.shape
        a = a.numpy()[0]
        assert np.isfinite(a).all()
        # physical units: Dita clamps its normalised chunk to [-1, 1] (q01..q99); DUST's 20-step
        # flow is not clamped, so it gets the data's range widened by its span on each side
        span = hi - lo
        margin = 0.05 * span if name == "dita" else span
        assert ((a >= lo - margin) & (a <= hi + margin)).all(), (a, lo, hi)
    assert len(policy._actions) == steps - 1


# ---------------------------------------------------------------- same weights, same outputs


def test_plugin_outputs_equal_vlastack_outputs(trained, dataset):
    name, ckpt, _ = trained
    policy, pre, post, meta = reload(ckpt, dataset)
    ours = Policy.from_pretrained(ckpt)  # vlastack reads the LeRobot checkpoint directly
    assert ours.name == name
    torch.testing.assert_close(ours.state_dict(), policy.model.state_dict())
    # 20 steps leave DUST's zero-initialised output gates near zero: perturb the (shared) weights so
    # that every input, the images included, moves the chunk well past the tolerance
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in policy.model.parameters():
            if w.requires_grad:
                w.add_(0.05 * torch.randn(w.shape, generator=g))
    ours.load_state_dict(policy.model.state_dict())
    ds = LeRobotDataset(meta.repo_id, root=dataset, delta_timestamps=resolve_delta_timestamps(policy.config, meta))
    # inference: one frame (plus history for Dita's two frames) through LeRobot's preprocessor
    item = ds[7]
    obs = {k: v.unsqueeze(0) for k, v in item.items() if k.startswith("observation.") and not k.endswith("_is_pad")}
    batch = pre({**{k: v[0] for k, v in obs.items()}, "task": item["task"]})
    batch.update({k: v for k, v in obs.items()})  # keep the (1, T, ...) window
    theirs = post(policy.predict_action_chunk(batch, seed=0))  # (1, H, D_a)
    n = ours.config.n_obs_steps
    contract = {k: (v[:, :n] if k == STATE else (v * 255).round().to(torch.uint8).movedim(-3, -1))
                for k, v in obs.items()}  # images as stored: uint8 (1, T, H, W, 3)
    contract["task"] = [item["task"]]
    mine = ours.sample_actions(contract, seed=0).actions  # (1, H, D_a)
    assert theirs.shape == mine.shape
    torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-5)
    # training: the same loss for the same batch and random draws
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False)
    b = pre(next(iter(loader)))
    torch.manual_seed(3)
    loss_theirs, terms = policy.forward(b)
    torch.manual_seed(3)
    loss_mine, _ = ours.compute_loss(policy._contract(b))
    torch.testing.assert_close(loss_theirs, loss_mine)
    assert set(terms) >= {"loss"}


@pytest.mark.parametrize("name", POLICIES)
def test_a_vlastack_checkpoint_loads_in_lerobot(name, dataset, tmp_path):
    """The reverse direction: vlastack's save_pretrained, plus the processor files, is a LeRobot checkpoint."""
    from vlastack.policies.base import make_policy as make_ours
    from vlastack_lerobot.processor import add_processors

    meta = LeRobotDatasetMetadata(f"local/{dataset.name}", root=dataset)
    ours = make_ours(name, "tiny", stats=meta.stats, cameras=list(CAMERAS))
    ours.save_pretrained(tmp_path / "ck")
    add_processors(tmp_path / "ck")
    policy, pre, post, _ = reload(tmp_path / "ck", dataset)
    assert type(policy) is get_policy_class(name)
    torch.testing.assert_close(policy.model.state_dict(), ours.state_dict())
    ds = LeRobotDataset(meta.repo_id, root=dataset, delta_timestamps=resolve_delta_timestamps(policy.config, meta))
    item = ds[9]
    batch = {k: v.unsqueeze(0) for k, v in item.items() if k.startswith("observation.") and not k.endswith("_is_pad")}
    chunk = post(policy.predict_action_chunk(pre({**batch, "task": item["task"]}), seed=1))
    assert tuple(chunk.shape) == (1, ours.config.horizon, 3) and torch.isfinite(chunk).all()


def test_the_policy_sees_the_stored_uint8_frames(dataset):
    """LeRobot's float frames go back to exactly the uint8 frames vlastack's own reader decodes."""
    from vlastack.datasets.lerobot import LeRobotReader
    from vlastack_lerobot.policy import to_contract

    frames, task, _ = LeRobotReader(dataset).read_episode(1)
    ds = LeRobotDataset(f"local/{dataset.name}", root=dataset)
    start = int(ds.meta.episodes["dataset_from_index"][1])
    batch = torch.utils.data.default_collate([ds[start + i] for i in (0, 5, 11)])
    contract = to_contract(batch, CAMERAS, n_obs=1)
    for cam in CAMERAS:
        k = f"observation.images.{cam}"
        assert contract[k].dtype == torch.uint8 and tuple(contract[k].shape) == (3, 32, 32, 3)
        assert torch.equal(contract[k], torch.from_numpy(frames[k][[0, 5, 11]]))
    assert contract["task"] == [task] * 3


def test_select_action_history_is_the_training_window(dataset):
    """Dita reads 2 frames: frame by frame, select_action's history equals the dataset's [-1, 0] window."""
    cfg = make_policy_config("dita", preset="tiny", device="cpu")
    meta = LeRobotDatasetMetadata(f"local/{dataset.name}", root=dataset)
    policy = make_policy(cfg, ds_meta=meta)
    windows = LeRobotDataset(meta.repo_id, root=dataset, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    frames = LeRobotDataset(meta.repo_id, root=dataset)
    policy.reset()
    for t in range(3):  # t = 0: the first frame repeated, as the window's padding repeats the edge frame
        hist = policy._history({k: v.unsqueeze(0) for k, v in observation(frames, t).items() if k != "task"})
        want = windows[t]
        for k in ("observation.images.left", "observation.state"):
            torch.testing.assert_close(hist[k][0], want[k])


# ---------------------------------------------------------------- config and windows


def test_presets_and_fields_reach_the_vlastack_config():
    cfg = make_policy_config("dust", preset="tiny", num_vision_steps=8, device="cpu")
    vc = cfg.policy_config()
    assert vc.num_vision_steps == 8 and vc.width == 32  # the override, and the tiny preset's width
    assert cfg.action_delta_indices == list(range(vc.horizon))
    assert cfg.observation_delta_indices == [0, vc.future_offset]  # current frame + the world model's target
    dita = make_policy_config("dita", preset="tiny", device="cpu").policy_config()
    assert make_policy_config("dita", preset="tiny", device="cpu").observation_delta_indices == [-1, 0]
    assert dita.n_obs_steps == 2
    dust_config = PreTrainedConfig.get_choice_class("dust")
    with pytest.raises(ValueError, match=r"--policy.preset: .*unknown preset 'huge'.*presets: \["):
        dust_config(preset="huge", device="cpu")
    with pytest.raises(ValueError, match="strategy 'nonsense' is not one of"):
        dust_config(preset="tiny", strategy="nonsense", device="cpu")


def test_the_world_model_target_comes_through_delta_timestamps(dataset):
    cfg = make_policy_config("dust", preset="tiny", device="cpu")
    k = cfg.policy_config().future_offset
    meta = LeRobotDatasetMetadata(f"local/{dataset.name}", root=dataset)
    ds = LeRobotDataset(meta.repo_id, root=dataset, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    plain = LeRobotDataset(meta.repo_id, root=dataset)
    item = ds[3]
    img = item["observation.images.left"]  # (2, 3, H, W): frame t, frame t + k
    assert tuple(img.shape[:2]) == (2, 3)
    torch.testing.assert_close(img[1], plain[3 + k]["observation.images.left"])
    assert not item["observation.images.left_is_pad"].any()
    end = ds[29]  # the last frame of episode 0: the future frame is padding
    assert end["observation.images.left_is_pad"].tolist() == [False, True]
