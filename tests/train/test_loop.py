"""The training loop on tiny policies and stores: exact resume, checkpoints, faults, stages, budget."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlastack.policies.base import load_policy
from vlastack.rollout.common import compose
from vlastack.rollout.policy_adapters import resolve_checkpoint
from vlastack.train import main
from vlastack.train.checkpoint import STATE_FILE, load_state, read_pointer
from vlastack.train.config import TrainConfigError, from_hydra
from vlastack.train.loop import train

from .helpers import make_store

TINY = ["policy.preset=tiny", "train=debug", "progress=false", "train.val_every=0", "train.ckpt_every=0"]


def run(run_dir, store, *overrides, policy="dust"):
    """Compose, validate and train in this process; returns the summary."""
    paths = [f"dataset.path={store}"] if isinstance(store, (str, Path)) else \
        [f"dataset.paths=[{','.join(map(str, store))}]"]
    cfg = compose("train", [f"policy={policy}", *TINY, *paths, f"run_dir={run_dir}", *overrides])
    return train(from_hydra(cfg))


def final_state(run_dir) -> dict:
    return load_state(read_pointer(Path(run_dir) / "checkpoints", "last"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data") / "demos.zarr", episodes=6, length=12)


def _assert_same_state(a: dict, b: dict, atol: float = 1e-6):
    assert a["step"] == b["step"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=atol, rtol=0, msg=f"model {k}")
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], atol=atol, rtol=0, msg=f"ema {k}")


def test_resume_is_exact(tmp_path, store):
    """N steps == N/2 steps + resume + N/2 steps (model, EMA, optimizer)."""
    common = ["train.steps=6", "train.batch_size=4", "train.grad_accum=2", "train.schedule.warmup_steps=2"]
    full = run(tmp_path / "full", store, *common)
    assert full["step"] == 6 and full["ended_by"] == "steps"
    half = run(tmp_path / "split", store, *common, "train.stop_after_steps=3")
    assert half["step"] == 3 and half["ended_by"] == "stop_after_steps"
    assert final_state(tmp_path / "split")["step"] == 3
    rest = run(tmp_path / "split", store, *common)  # resume=auto picks up checkpoints/last
    assert rest["step"] == 6
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    _assert_same_state(a, b)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], atol=1e-9, rtol=1e-6)
    assert a["schedule"] == b["schedule"]
    # resume=never starts over; always without a checkpoint refuses
    with pytest.raises(TrainConfigError, match="resume: 'always'"):
        run(tmp_path / "fresh", store, *common, "resume=always")


def test_checkpoints_last_best_and_pruning(tmp_path, store):
    s = run(tmp_path / "r", store, "train.steps=6", "train.ckpt_every=2", "train.val_every=2", "train.keep_last=1")
    root = tmp_path / "r" / "checkpoints"
    steps = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    last, best = read_pointer(root, "last"), read_pointer(root, "best")
    assert last.name == "step_0000006" and s["checkpoint_dir"].endswith("step_0000006")
    assert best is not None and best.name in steps
    assert set(steps) == {"step_0000006", best.name}  # keep_last=1 plus the best
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    # a checkpoint is a loadable policy (EMA weights) that eval finds through the run dir
    policy = load_policy(resolve_checkpoint(tmp_path / "r"))
    meta = json.loads((last / "config.json").read_text())
    assert meta["type"] == "dust" and meta["vlastack"]["training"]["step"] == 6 and meta["vlastack"]["training"]["ema"]
    st = load_state(last)
    for name, p in policy.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), st["ema"]["shadow"][name])
    # outputs beside the checkpoints
    run_dir = tmp_path / "r"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {x["split"] for x in lines}
    assert any(f.name.startswith("events.out.tfevents") for f in (run_dir / "tb").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 6


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path, store):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vlastack.cli", "train", "policy=dust", *TINY, f"dataset.path={store}",
           f"run_dir={run_dir}", "train.steps=6", "train.ckpt_every=2"]
    env = {**os.environ, "VLASTACK_TRAIN_FAULT": "kill_during_save:2", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    root = run_dir / "checkpoints"
    assert read_pointer(root, "last").name == "step_0000002"
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-step_0000004")]  # the interrupted save
    load_policy(resolve_checkpoint(run_dir))  # the previous checkpoint still loads
    # the next run cleans up and resumes from step 2
    assert main([*cmd[4:]]) == 0
    assert read_pointer(root, "last").name == "step_0000006"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert load_state(root / "step_0000006")["step"] == 6


def test_cli_writes_resolved_config_and_multirun(tmp_path, store):
    rc = main(["-m", "policy=dust,dust_no_wm", *TINY, f"dataset.path={store}", f"run_dir={tmp_path / 'sw'}",
               "train.steps=2"])
    assert rc == 0
    for job, strategy in (("0", "mmdit_decoupled"), ("1", "no_wm")):
        cfg = (tmp_path / "sw" / job / "config.yaml").read_text()
        assert "run_dir: " + str(tmp_path / "sw" / job) in cfg
        ck = resolve_checkpoint(tmp_path / "sw" / job)
        assert json.loads(Path(ck, "config.json").read_text())["strategy"] == strategy
    assert main(["policy=dust", f"dataset.path={store}", f"run_dir={tmp_path / 'x'}", "train.bogus=1"]) != 0
    assert main(["policy=dust", "dataset.path=/nonexistent.zarr", f"run_dir={tmp_path / 'y'}"]) == 2


def test_video_only_store_trains_the_world_model_stream(tmp_path):
    videos = make_store(tmp_path / "videos.zarr", episodes=4, length=10, actions=False)
    s = run(tmp_path / "pre", videos, "experiment=dust_video_pretrain", *TINY, "train.steps=2")
    assert s["step"] == 2 and s["val_loss"] is not None
    lines = [json.loads(x) for x in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    assert all(x["action_fraction"] == 0.0 for x in train_lines) and all(x["loss_world"] > 0 for x in train_lines)
    # the no-world-model baseline has nothing to learn from videos: refused at start (also by its former name)
    for name in ("dust_no_wm", "dust_single_stream"):
        with pytest.raises(TrainConfigError, match="action-free"):
            run(tmp_path / "bad", videos, "train.steps=2", policy=name)
    # stage 2: fine-tune the pretrained world model on demos (normalizer refitted on the demos)
    demos = make_store(tmp_path / "demos.zarr", episodes=4, length=10, seed=3)
    ft = run(tmp_path / "ft", demos, "experiment=dust_finetune", *TINY, f"train.init_from={tmp_path / 'pre'}",
             "train.steps=2")
    assert ft["step"] == 2
    pre, tuned = load_policy(resolve_checkpoint(tmp_path / "pre")), load_policy(resolve_checkpoint(tmp_path / "ft"))
    assert not torch.equal(pre.normalizer.state_dict()["affine.action.scale"],
                           tuned.normalizer.state_dict()["affine.action.scale"])


def test_multitask_over_several_stores(tmp_path):
    a = make_store(tmp_path / "a.zarr", episodes=3, length=10, tasks=("open the drawer",), seed=1)
    b = make_store(tmp_path / "b.zarr", episodes=3, length=10, tasks=("turn on the stove",), seed=2)
    s = run(tmp_path / "mt", [a, b], "dataset=multi", "dataset.path=null", "train.steps=2",
            "dataset.val_fraction=0.34")
    assert s["step"] == 2
    # an incompatible store is refused at start, naming the key
    c = make_store(tmp_path / "c.zarr", episodes=2, length=10, state_dim=5)
    with pytest.raises(TrainConfigError, match="observation.state"):
        run(tmp_path / "bad", [a, c], "dataset=multi", "dataset.path=null", "train.steps=2")


def test_dita_trains_and_fine_tunes_few_shot_with_a_new_action_head(tmp_path, store):
    s = run(tmp_path / "dita", store, "train.steps=2", policy="dita")
    assert s["step"] == 2
    six = make_store(tmp_path / "six.zarr", episodes=4, length=10, action_dim=6, seed=5)
    ft = run(tmp_path / "ft", six, "experiment=dita_fewshot", *TINY, f"train.init_from={tmp_path / 'dita'}",
             "dataset.episodes_per_task=1", "train.steps=2", policy="dita")
    assert ft["step"] == 2
    tuned = load_policy(resolve_checkpoint(tmp_path / "ft"))
    assert tuned.config.action_dim == 6 and tuned.config.num_train_timesteps == 100


def test_wall_clock_budget_stops_and_replans(tmp_path, store):
    s = run(tmp_path / "budget", store, "train.steps=100000", "train.max_minutes=0.05", "train.log_every=1")
    assert s["ended_by"] in ("max_minutes", "steps") and s["step"] < 100000
    assert s["total_steps"] < 100000  # the schedule was fitted to the budget
    assert s["elapsed_s"] < 60


def test_feature_cache_modes(tmp_path):
    st = make_store(tmp_path / "s.zarr", episodes=3, length=8)
    off = run(tmp_path / "off", st, "train.steps=1", "dataset.cache_features=off")
    assert off["feature_encoder"] is None
    on = run(tmp_path / "on", st, "train.steps=1", "dataset.cache_features=on")
    assert on["feature_encoder"] == "tiny"
    from vlastack.datasets.store import TrajectoryStore

    assert TrajectoryStore.open(st).list_features() == {"tiny": ["observation.images.left", "observation.images.wrist"]}
    # a trainable encoder cannot use the cache: 'on' refuses, 'auto' trains on images
    trainable = ["policy.vision_encoder_kwargs={frozen: false}", "policy.strategy=no_wm"]
    with pytest.raises(TrainConfigError, match="frozen"):
        run(tmp_path / "t", st, "train.steps=1", "dataset.cache_features=on", *trainable)
    assert run(tmp_path / "t", st, "train.steps=1", *trainable)["feature_encoder"] is None


def test_state_file_holds_everything_for_resume(tmp_path, store):
    run(tmp_path / "r", store, "train.steps=1")
    st = load_state(read_pointer(tmp_path / "r" / "checkpoints", "last"))
    assert {"step", "model", "optimizer", "schedule", "ema", "rng", "data", "elapsed_s"} <= set(st)
    assert st["data"]["step"] == 1 and st["data"]["batch_size"] == 4
    assert not any(k.startswith(("vision.", "text.")) for k in st["model"])  # frozen encoders are rebuilt
    assert (read_pointer(tmp_path / "r" / "checkpoints", "last") / STATE_FILE).is_file()
    assert np.isfinite(st["elapsed_s"])


def _wandb_history(path: Path) -> list[dict]:
    """The ``history`` records of an offline wandb run file (a LevelDB-style log of protobuf records)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []  # 7: the ":W&B" file header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST fragment: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            buf = b""
    return out


def test_wandb_logger_writes_an_offline_run_beside_tensorboard(tmp_path, store, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra (pip install 'vlastack[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(tmp_path / "r", store, "train.steps=4", "train.batch_size=4", "train.logger=both", "train.wandb.tags=[t1]")
    run_dirs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "r" / "wandb_id").read_text().strip()
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith(run_id) and (tmp_path / "r" / "tb").is_dir()
    # the offline run file holds every loss that metrics.jsonl holds, at its step
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    expected = [(r["step"], f"{r['split']}/loss", r["loss"]) for r in rows]
    logged = [(h["step"], k, v) for h in _wandb_history(run_dirs[0] / f"run-{run_id}.wandb") for k, v in h.items()
              if k.endswith("/loss")]
    assert len(expected) == 5 and logged == expected
    # resuming the run directory continues the same wandb run
    run(tmp_path / "r", store, "train.steps=6", "train.batch_size=4", "train.logger=wandb")
    assert (tmp_path / "r" / "wandb_id").read_text().strip() == run_id


def test_wandb_logger_without_the_package_is_refused_up_front(tmp_path, store, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrainConfigError, match="train.logger: 'wandb' needs the wandb package"):
        run(tmp_path / "r", store, "train.logger=wandb")
    with pytest.raises(TrainConfigError, match="train.logger: 'mlflow' is not one of"):
        run(tmp_path / "r", store, "train.logger=mlflow")


def test_resume_without_last_falls_back_to_the_newest_complete_step(tmp_path, store, caplog):
    """``last`` lost (e.g. a kill while it was replaced on a filesystem without atomic exchange): resume
    continues from the newest complete step with a logged warning instead of restarting at step 0."""
    run(tmp_path / "r", store, "train.steps=2", "train.ckpt_every=1")
    root = tmp_path / "r" / "checkpoints"
    os.unlink(root / "last")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlastack.train"):
        s = run(tmp_path / "r", store, "train.steps=3")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step_0000002" in m for m in warned), caplog.text
    assert "resumed at step 2" in caplog.text
    assert s["step"] == 3 and load_state(read_pointer(root, "last"))["step"] == 3


def test_in_loop_sim_eval_logs_the_success_vlastack_eval_wrote(tmp_path, monkeypatch):
    """``train.sim_eval``: the checkpoint is evaluated by ``vlastack eval`` and the success it wrote to
    eval_info.json (summary.overall) is logged to metrics.jsonl. The command runs in this process (the same
    ``vlastack.cli.main``, without a second interpreter's start-up)."""
    from vlastack import cli
    from vlastack.train import loop

    real_run = subprocess.run

    def run_here(cmd, **kwargs):
        if list(cmd[:3]) != [sys.executable, "-m", "vlastack.cli"]:
            return real_run(cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, cli.main(cmd[3:]), "", "")

    monkeypatch.setattr(loop.subprocess, "run", run_here)
    store = make_store(tmp_path / "mw.zarr", episodes=2, length=8, cameras=("corner",), size=(24, 24), state_dim=4,
                       action_dim=4)
    overrides = "[" + ",".join(f"'{o}'" for o in ("env=metaworld", "env.kwargs.state=proprio", "tasks=[reach-v3]",
                                                    "episodes=2", "max_steps=5", "workers=0", "videos=0",
                                                    "progress=false")) + "]"
    run(tmp_path / "r", store, "train.steps=3", "train.batch_size=2", "train.ckpt_every=2", "train.sim_eval.every=2",
        f"train.sim_eval.overrides={overrides}")
    info = json.loads(next((tmp_path / "r" / "sim_eval").glob("*/eval_info.json")).read_text())
    overall = info["summary"]["overall"]
    assert overall["episodes"] == 2
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r["split"] == "sim_eval"]
    assert len(logged) == 1 and logged[0]["exit_code"] == 0 and logged[0]["step"] == 2
    assert logged[0]["success_rate"] == overall["success_rate"] and logged[0]["episodes"] == 2
    assert (logged[0]["ci_low"], logged[0]["ci_high"]) == (overall["ci_low"], overall["ci_high"])


def test_bf16_autocast_on_the_cpu_trains_and_native_bf16_follows_the_cpu(tmp_path, store):
    """train.precision=bf16 runs CPU autocast (it used to be refused): same steps, finite loss, and the
    weights differ from an fp32 run's (bf16 matmuls did happen), though not by much."""
    common = ["train.steps=3", "train.batch_size=4", "train.seed=0"]
    fp32 = run(tmp_path / "fp32", store, *common, "train.precision=fp32")
    bf16 = run(tmp_path / "bf16", store, *common, "train.precision=bf16")
    assert fp32["step"] == bf16["step"] == 3
    a, b = final_state(tmp_path / "fp32")["model"], final_state(tmp_path / "bf16")["model"]
    diffs = [float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point()]
    assert all(np.isfinite(diffs)) and 0 < max(diffs) < 0.1
    # native_bf16: bf16 where this CPU computes it natively, else fp32 (the same weights as that run's)
    from vlastack.train.loop import _cpu_has_bf16

    run(tmp_path / "native", store, *common, "train.precision=native_bf16")
    same = final_state(tmp_path / ("bf16" if _cpu_has_bf16() else "fp32"))["model"]
    native = final_state(tmp_path / "native")["model"]
    for k in same:
        torch.testing.assert_close(native[k], same[k], atol=0, rtol=0, msg=k)


def test_rank0_builds_the_feature_cache_with_every_local_ranks_threads(monkeypatch):
    """Under DDP on the CPU, rank 0 encodes the cache alone: it borrows the waiting ranks' threads, then
    gives them back (one rank, or no thread setting, changes nothing)."""
    import os

    from vlastack.train.distributed import DistInfo
    from vlastack.train.loop import _cache_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _cache_threads(DistInfo(world=2), 1):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with _cache_threads(DistInfo(world=8), 1):
            assert torch.get_num_threads() == 4  # at most the cores this process may use
        with _cache_threads(DistInfo(world=1), 1), _cache_threads(DistInfo(world=2), None):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_oversample_through_hydra(tmp_path, caplog):
    """``dataset.oversample={TASK: k}`` from the command line reaches the step order (and the start-up line)."""
    import logging

    caplog.set_level(logging.INFO, logger="vlastack.train")
    st = make_store(tmp_path / "s.zarr", episodes=4, length=8, tasks=("OpenDrawer", "CloseDrawer"))
    s = run(tmp_path / "over", st, "train.steps=2", "dataset.val_fraction=0", "dataset.oversample={OpenDrawer:3}")
    assert s["step"] == 2
    assert "32 train windows from 4 episodes (64 reads per epoch with dataset.oversample={'OpenDrawer': 3})" \
        in caplog.text
    with pytest.raises(TrainConfigError, match="name no training episode"):
        run(tmp_path / "bad", st, "train.steps=1", "dataset.val_fraction=0", "dataset.oversample={Oven:2}")
    # a resume that changes the oversampling changes the data order: said, not silent
    caplog.clear()
    s = run(tmp_path / "over", st, "train.steps=3", "dataset.val_fraction=0")
    assert s["step"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dataset.oversample={} (32 reads per epoch), the checkpoint used {'OpenDrawer': 3} (64)" in m
               for m in warned), caplog.text
    caplog.clear()  # the checkpoint's setting (now none) again: no warning
    run(tmp_path / "over", st, "train.steps=4", "dataset.val_fraction=0")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "oversample" in r.getMessage()]
