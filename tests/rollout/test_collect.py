"""Demo collection: worker processes, store round trip, resume after interruption, failures in the summary."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vlastack.datasets.store import TrajectoryStore
from vlastack.envs import registry
from vlastack.envs.metaworld import instructions
from vlastack.rollout import collect as C
from vlastack.types import ACTION, STATE, image_key

SMALL = dict(cameras=["corner"], image_size=(24, 24))


def _cfg(out, **kw):
    base = dict(suite="metaworld", tasks="reach-v3", episodes=2, out=str(out), workers=0, progress=False, **SMALL)
    base.update(kw)
    return C.CollectConfig(**base)


def _seeds(store, task=None):
    return [e["meta"]["seed"] for e in store.episodes if task is None or e["task_id"] == task]


def test_parallel_multitask_collection_round_trip(tmp_path):
    out = tmp_path / "demos.zarr"
    doc = C.collect(_cfg(out, tasks=["reach-v3", "drawer-close-v3"], episodes=2, workers=2, max_steps=150))
    assert doc["complete"] and doc["runs"][-1]["workers"] == 2
    with TrajectoryStore.open(out) as store:
        assert store.num_episodes == 4
        assert sorted(_seeds(store, "reach-v3")) == [0, 1] and sorted(_seeds(store, "drawer-close-v3")) == [0, 1]
        assert store.spec.cameras == ["corner"] and store.spec.state_dim == 21
        for i, ep in enumerate(store.episodes):
            assert ep["success"] and ep["source"] == "expert:metaworld"
            assert ep["meta"]["suite"] == "metaworld" and ep["meta"]["expert"] == "MetaWorldExpert"
            assert ep["instruction"] in instructions(ep["task_id"])
            frames = store.episode(i)
            assert frames[image_key("corner")].shape == (ep["length"], 24, 24, 3)
            assert frames[image_key("corner")].dtype == np.uint8
            assert frames[STATE].shape == (ep["length"], 21) and frames[ACTION].shape == (ep["length"], 4)
            assert ep["length"] == ep["meta"]["steps"] < 150
    # the stored episode replays: same seed, same first observation and expert action
    ep = next(e for e in TrajectoryStore.open(out).episodes if e["task_id"] == "drawer-close-v3")
    env = registry.make_env("metaworld", "drawer-close-v3", seed=0, **SMALL)
    try:
        obs, _ = env.reset(seed=ep["meta"]["seed"])
        with TrajectoryStore.open(out) as store:
            i = store.episodes.index(ep)
            frames = store.episode(i)
        assert obs["task"] == ep["instruction"]
        np.testing.assert_array_equal(frames[STATE][0], obs[STATE])
        np.testing.assert_array_equal(frames[image_key("corner")][0], obs[image_key("corner")])
        expert = registry.make_expert("metaworld", "drawer-close-v3", env)
        np.testing.assert_allclose(frames[ACTION][0], expert.act(obs, env))
    finally:
        env.close()
    summary = json.loads(C.summary_path(out).read_text())
    assert summary["tasks"]["reach-v3"]["succeeded"] == [0, 1] and summary["tasks"]["reach-v3"]["failed"] == []


def test_rerun_tops_up_without_duplicates(tmp_path):
    out = tmp_path / "s.zarr"
    C.collect(_cfg(out, episodes=2))
    doc = C.collect(_cfg(out, episodes=4))
    assert doc["tasks"]["reach-v3"]["this_run"]["attempted"] == 2  # seeds 0 and 1 were skipped
    with TrajectoryStore.open(out) as store:
        assert sorted(_seeds(store)) == [0, 1, 2, 3]
    doc = C.collect(_cfg(out, episodes=4))  # nothing left to do
    assert doc["tasks"]["reach-v3"]["this_run"]["attempted"] == 0 and len(doc["runs"]) == 3


def test_failures_recorded_and_not_retried(tmp_path):
    out = tmp_path / "f.zarr"
    # reach-v3's expert needs roughly 40-55 steps: a 45-step cap makes some seeds fail
    doc = C.collect(_cfg(out, episodes=3, max_steps=45, max_attempts=12))
    t = doc["tasks"]["reach-v3"]
    assert t["failed"], "expected some seeds to exceed the 45-step cap"
    for f in t["failed"]:
        assert f["reason"] == "max_steps" and f["steps"] == 45
    assert set(t["attempted"]) == set(t["succeeded"]) | {f["seed"] for f in t["failed"]}
    with TrajectoryStore.open(out) as store:
        stored = sorted(_seeds(store))
        assert all(e["length"] <= 45 for e in store.episodes)
    assert stored == t["succeeded"] and not set(stored) & {f["seed"] for f in t["failed"]}
    # seeds are attempted in order and the stored ones are the first three that succeed
    assert t["attempted"] == list(range(len(t["attempted"]))) and max(t["attempted"]) == max(stored)
    # a rerun with a larger target skips the failed seeds instead of retrying them
    failed_before = {f["seed"] for f in t["failed"]}
    doc = C.collect(_cfg(out, episodes=4, max_steps=45, max_attempts=12))
    assert doc["tasks"]["reach-v3"]["this_run"]["attempted"] >= 1
    with TrajectoryStore.open(out) as store:
        assert not set(_seeds(store)) & failed_before and len(set(_seeds(store))) == store.num_episodes == 4


def test_errors_and_rejected_episodes_are_recorded(tmp_path, monkeypatch):
    real = C.run_expert_episode

    def flaky(env, expert, seed, max_steps=None):
        if seed == 2:
            raise RuntimeError("simulator exploded")
        res = real(env, expert, seed, max_steps)
        if seed == 1:
            res["frames"][STATE][3, 0] = np.nan  # the store refuses NaN states
        return res

    monkeypatch.setattr(C, "run_expert_episode", flaky)  # workers=0 runs attempts in this process
    doc = C.collect(_cfg(tmp_path / "e.zarr", episodes=2, max_steps=100))
    t = doc["tasks"]["reach-v3"]
    assert t["succeeded"] == [0, 3] and [f["seed"] for f in t["failed"]] == [1, 2]
    assert t["failed"][0]["reason"].startswith("store rejected the episode") and "NaN" in t["failed"][0]["reason"]
    assert t["failed"][1]["reason"] == "error: RuntimeError: simulator exploded"
    assert "simulator exploded" in t["failed"][1]["traceback"]
    with TrajectoryStore.open(tmp_path / "e.zarr") as store:
        assert sorted(_seeds(store)) == [0, 3]


def test_out_of_attempts_is_incomplete(tmp_path):
    out = tmp_path / "x.zarr"
    doc = C.collect(_cfg(out, episodes=2, max_steps=3, max_attempts=3))
    t = doc["tasks"]["reach-v3"]
    assert not doc["complete"] and not t["complete"] and t["in_store"] == 0
    assert [f["seed"] for f in t["failed"]] == [0, 1, 2]


def test_existing_store_with_other_spec_is_refused(tmp_path):
    out = tmp_path / "m.zarr"
    C.collect(_cfg(out, episodes=1))
    with pytest.raises(C.CollectError, match=r"different spec.*observation.images.corner"):
        C.collect(_cfg(out, episodes=2, image_size=(32, 32)))
    doc = C.collect(_cfg(out, episodes=1, image_size=(32, 32), overwrite=True))
    assert doc["complete"] and len(doc["runs"]) == 1


def test_killed_run_resumes(tmp_path):
    out = tmp_path / "k.zarr"
    args = [sys.executable, "-m", "vlastack.rollout.collect", "env=metaworld", "task=reach-v3", "episodes=6",
            f"out={out}", "workers=0", "progress=false", "cameras=[corner]", "image_size=[24,24]"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if (out / "zarr.json").exists():
            try:
                n = json.loads((out / "zarr.json").read_text()).get("attributes", {}).get("num_episodes", 0)
            except ValueError:
                continue
            if n >= 2:
                break
    assert proc.poll() is None, f"collection ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)  # a hard crash, possibly mid-append
    proc.wait()
    with TrajectoryStore.open(out) as store:  # every committed episode is intact
        before = _seeds(store)
        assert 2 <= len(before) < 6 and len(set(before)) == len(before)
    rc = C.main(args[3:])
    assert rc == 0
    with TrajectoryStore.open(out, verify="full") as store:
        seeds = _seeds(store)
        assert sorted(seeds) == list(range(6)) and seeds[: len(before)] == before
    from omegaconf import OmegaConf

    saved = OmegaConf.load(tmp_path / "k.zarr.collect.yaml")  # the resolved config beside the store
    assert saved.task == "reach-v3" and saved.episodes == 6 and saved.env.suite == "metaworld"


def test_hydra_config_and_cli_errors(tmp_path, capsys):
    hcfg = C.compose_config(["env=metaworld", "task=[reach-v3,push]", "episodes=3", f"out={tmp_path}/a.zarr",
                             "image_size=[32,32]"])
    cfg = C.config_from_hydra(hcfg)
    assert cfg.suite == "metaworld" and cfg.tasks == ["reach-v3", "push-v3"] and cfg.episodes == 3
    assert cfg.cameras == ["corner", "behindGripper"] and cfg.image_size == (32, 32)
    assert cfg.max_steps == 500 and cfg.max_attempts == 16 and cfg.env_kwargs == {"state": "full"}
    mt10 = C.config_from_hydra(C.compose_config(["env=metaworld", "task=MT10", f"out={tmp_path}/b.zarr"]))
    assert len(mt10.tasks) == 10
    assert C.compose_config([]).env.suite == "kitchen"  # the default group
    only_env = C.config_from_hydra(C.compose_config(["env=metaworld", f"out={tmp_path}/d.zarr"]))
    assert only_env.tasks == ["reach-v3"]  # the env group's default task
    assert C.main(["env=metaworld", "task=reach-v3"]) == 2
    assert "out: required" in capsys.readouterr().err
    assert C.main(["env=metaworld", "task=reach-v4", f"out={tmp_path}/c.zarr"]) == 2
    assert "unknown MetaWorld task 'reach-v4'" in capsys.readouterr().err
    assert C.main(["env=metaworld", "task=reach-v3", "episodes=0", f"out={tmp_path}/c.zarr"]) == 2
    assert "episodes" in capsys.readouterr().err
    assert C.main(["env=metaworld", "cameras=[corner,wrist]", f"out={tmp_path}/c.zarr"]) == 2
    assert "unknown camera 'wrist'" in capsys.readouterr().err
    assert C.main(["env=metaworld", "foo=1", f"out={tmp_path}/c.zarr"]) == 2
    assert "foo" in capsys.readouterr().err
    assert C.main(["env=mujoco", f"out={tmp_path}/c.zarr"]) == 2
    assert "mujoco" in capsys.readouterr().err
    assert C.main(["--help"]) == 0 and "episodes=N" in capsys.readouterr().out


def test_kitchen_collection_path_if_available(tmp_path):
    try:
        tasks = registry.list_tasks("kitchen")
    except registry.SuiteNotAvailable:
        pytest.skip("kitchen suite not available in this checkout")
    task = "OpenDrawer" if "OpenDrawer" in tasks else tasks[0]
    env = registry.make_env("kitchen", task, seed=0, cameras=["left"], image_size=(32, 32))
    try:
        expert = registry.make_expert("kitchen", task, env)
        res = C.run_expert_episode(env, expert, seed=0, max_steps=4)
        spec = env.data_spec
        assert res["steps"] == 4 and res["instruction"].strip()
        for k, f in spec.features.items():
            f.check(res["frames"][k], leading=1)  # (T, ...) per the kitchen's own spec
            assert len(res["frames"][k]) == 4
    finally:
        env.close()
    # the whole path through collect: env and expert built in the worker, the attempt recorded
    out = tmp_path / "kitchen.zarr"
    doc = C.collect(C.CollectConfig(suite="kitchen", tasks=task, episodes=1, out=str(out), workers=0,
                                    progress=False, cameras=["left"], image_size=(32, 32), max_steps=3,
                                    max_attempts=1))
    t = doc["tasks"][task]
    assert t["attempted"] == [0]
    assert t["failed"] == [{"seed": 0, "reason": "max_steps", "steps": 3}] or t["succeeded"] == [0]


def test_crashed_worker_is_isolated_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv(C.FAULT_ENV, "reach-v3:1")  # spawned workers inherit it: seed 1 kills its process
    doc = C.collect(_cfg(tmp_path / "w.zarr", episodes=3, workers=2, max_steps=100))
    t = doc["tasks"]["reach-v3"]
    assert doc["complete"] and t["succeeded"] == [0, 2, 3]
    assert t["failed"] == [{"seed": 1, "reason": "error: the worker process died (crashed twice on this seed)",
                            "steps": 0}]
