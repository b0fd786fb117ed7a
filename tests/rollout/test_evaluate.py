"""Simulation evaluation: the expert through the harness reaches the expert's own success, a tiny DUST
checkpoint evaluates into every output file, resume skips finished episodes, bad input fails before any
worker starts, and a dying worker is recorded."""
import json

import numpy as np
import pytest

from vlastack.envs import registry
from vlastack.rollout import evaluate as E
from vlastack.rollout.collect import run_expert_episode
from vlastack.rollout.stats import wilson_interval
from vlastack.rollout.video import count_frames
from vlastack.types import ACTION, STATE

MW = dict(suite="metaworld", cameras=["corner"], image_size=[24, 24], progress=False)


def _tiny_checkpoint(path, **overrides):
    """A randomly initialised tiny DUST for MetaWorld (corner camera 32x32, 4-D proprio state, 4-D action)."""
    from vlastack.datasets.stats import array_stats
    from vlastack.policies.base import make_policy

    rng = np.random.default_rng(0)
    kw = {"cameras": ["corner"], "state_dim": 4, "action_dim": 4, **overrides}
    stats = {STATE: array_stats(rng.normal(size=(64, kw["state_dim"]))),
             ACTION: array_stats(rng.uniform(-1, 1, size=(64, kw["action_dim"])))}
    make_policy("dust", "tiny", stats=stats, **kw).save_pretrained(path)
    return str(path)


def _direct(suite, task, seeds, max_steps, **env_kw):
    """The expert run directly (no harness) over ``seeds``: {seed: (success, steps)}."""
    env = registry.make_env(suite, task, seed=seeds[0], **env_kw)
    try:
        expert = registry.make_expert(suite, task, env)
        return {s: (r["success"], r["steps"]) for s in seeds
                for r in [run_expert_episode(env, expert, s, max_steps=max_steps)]}
    finally:
        env.close()


def test_expert_evaluation_reaches_the_expert_success(tmp_path):
    tasks = ["reach-v3", "drawer-close-v3"]
    cfg = E.EvalConfig(policy="expert", tasks=tasks, episodes=3, seeds=[100], max_steps=150, workers=2, videos=1,
                       out=str(tmp_path / "ev"), **MW)
    doc = E.evaluate(cfg)
    assert doc["complete"] and doc["runs"][-1]["episodes_run"] == 6 and doc["runs"][-1]["workers"] == 2
    for task in tasks:
        direct = _direct("metaworld", task, [100, 101, 102], 150, cameras=["corner"], image_size=(24, 24))
        eps = [e for e in doc["episodes"] if e["task"] == task]
        assert {e["seed"]: (e["success"], e["steps"]) for e in eps} == direct
        k = sum(s for s, _ in direct.values())
        block = doc["summary"]["per_task"][task]
        assert (block["successes"], block["episodes"]) == (k, 3)
        assert (block["ci_low"], block["ci_high"]) == pytest.approx(wilson_interval(k, 3))
        assert all(e["instruction"].strip() and e["return"] > 0 for e in eps)
        video = [e for e in eps if e["video"]]
        assert [e["seed"] for e in video] == [100]  # the first episode of each task
        n, (h, w) = count_frames(tmp_path / "ev" / video[0]["video"])
        assert n == video[0]["steps"] + 1 and h >= 192  # reset frame + one per step, upscaled with captions
    overall = doc["summary"]["overall"]
    assert overall["episodes"] == 6 and overall["successes"] == sum(
        b["successes"] for b in doc["summary"]["per_task"].values())
    on_disk = json.loads((tmp_path / "ev" / E.INFO_FILE).read_text())
    assert on_disk["summary"] == doc["summary"] and len(on_disk["episodes"]) == 6


def test_kitchen_expert_through_the_harness_in_process(tmp_path):
    cfg = E.EvalConfig(suite="kitchen", policy="expert", tasks="OpenDrawer", episodes=2, seeds=[7], workers=0,
                       cameras=["left"], image_size=[32, 32], videos=0, progress=False, out=str(tmp_path / "k"))
    doc = E.evaluate(cfg)
    direct = _direct("kitchen", "OpenDrawer", [7, 8], None, cameras=["left"], image_size=(32, 32))
    assert {e["seed"]: (e["success"], e["steps"]) for e in doc["episodes"]} == direct
    assert doc["summary"]["overall"]["successes"] == sum(s for s, _ in direct.values())
    assert not (tmp_path / "k" / "videos").exists()


def test_tiny_dust_checkpoint_writes_every_output(tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "dust"
    rc = E.main([f"checkpoint={ckpt}", "env=metaworld", "tasks=[reach-v3]", "episodes=2", "seeds=[100,200]",
                 "max_steps=12", "sampling.vision_steps=4", "workers=1", "videos=1", "progress=false",
                 f"out={out}"])
    printed = capsys.readouterr().out
    assert rc == 0 and "reach-v3" in printed and "episodes/s" in printed
    doc = json.loads((out / E.INFO_FILE).read_text())
    assert doc["policy"] == "dust" and doc["checkpoint"].endswith("ckpt") and doc["complete"]
    assert doc["settings"]["sampling"] == {"num_vision_steps": 4}
    assert doc["settings"]["env_kwargs"]["state"] == "proprio" and doc["notes"]  # the policy's 4-D state decides
    eps = doc["episodes"]
    assert [(e["seed_group"], e["seed"]) for e in eps] == [(100, 100), (100, 101), (200, 200), (200, 201)]
    for e in eps:
        assert e["steps"] <= 12 and e["policy_calls"] == -(-e["steps"] // 4)  # chunks of H=4 (n=8 capped)
        assert set(e) >= {"task", "seed", "success", "steps", "return", "wall_s", "instruction", "video"}
    assert set(doc["summary"]["per_seed"]) == {"100", "200"} and "across_seeds" in doc["summary"]
    assert count_frames(out / eps[0]["video"])[0] == eps[0]["steps"] + 1 and eps[1]["video"] is None
    assert (out / E.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / E.SUMMARY_FILE).read_text()
    assert "| reach-v3 |" in md and "**overall**" in md and "| 100 |" in md and eps[0]["video"] in md
    yaml = (out / E.CONFIG_FILE).read_text()
    assert f"checkpoint: {ckpt}" in yaml and "vision_steps: 4" in yaml and "suite: metaworld" in yaml
    # an episode is a function of its seed: the same episodes in this process give the same returns
    again = E.evaluate(E.EvalConfig(checkpoint=ckpt, tasks="reach-v3", episodes=2, seeds=[100, 200], max_steps=12,
                                    sampling={"vision_steps": 4}, workers=0, videos=0, out=str(tmp_path / "again"),
                                    suite="metaworld", progress=False))
    assert [e["return"] for e in again["episodes"]] == [e["return"] for e in eps]


def test_resume_skips_done_episodes(tmp_path):
    base = dict(policy="expert", tasks="reach-v3", seeds=[50], max_steps=120, workers=0, videos=0,
                out=str(tmp_path / "r"), **MW)
    # the in-loop form (what training calls): a list of overrides
    first = E.evaluate(["policy=expert", "env=metaworld", "tasks=reach-v3", "seeds=[50]", "max_steps=120",
                        "workers=0", "videos=0", "episodes=2", "cameras=[corner]", "image_size=[24,24]",
                        "progress=false", f"out={tmp_path / 'r'}"])
    assert first["runs"][-1]["episodes_run"] == 2 and (tmp_path / "r" / E.CONFIG_FILE).exists()
    second = E.evaluate(E.EvalConfig(episodes=3, **base))
    assert second["runs"][-1]["episodes_run"] == 1 and len(second["runs"]) == 2
    assert second["episodes"][:2] == first["episodes"] and second["episodes"][2]["seed"] == 52
    assert second["summary"]["overall"]["episodes"] == 3
    third = E.evaluate(E.EvalConfig(episodes=2, **base))  # a smaller selection: nothing to run, summary of 2
    assert third["runs"][-1]["episodes_run"] == 0 and third["summary"]["overall"]["episodes"] == 2
    assert len(third["episodes"]) == 3  # finished episodes are kept
    with pytest.raises(E.EvalError, match="executor: 'receding' then, 'ensemble' now"):
        E.evaluate(E.EvalConfig(episodes=3, executor="ensemble", **base))
    fresh = E.evaluate(E.EvalConfig(episodes=1, overwrite=True, **base))
    assert fresh["runs"][-1]["episodes_run"] == 1 and len(fresh["runs"]) == 1 and len(fresh["episodes"]) == 1


def test_bad_input_fails_before_any_worker(tmp_path, capsys):
    out = tmp_path / "never"
    ok = dict(tasks="reach-v3", episodes=1, out=str(out), **MW)
    with pytest.raises(E.EvalError, match=r"unknown metaworld task 'reach-v9'|unknown MetaWorld task"):
        E.EvalConfig(policy="expert", **{**ok, "tasks": "reach-v9"})
    with pytest.raises(E.EvalError, match="unknown 'mujoco'; valid choices"):
        E.EvalConfig(policy="expert", **{**ok, "suite": "mujoco"})
    with pytest.raises(E.EvalError, match="checkpoint: required"):
        E.EvalConfig(**ok)
    with pytest.raises(E.EvalError, match="takes no checkpoint"):
        E.EvalConfig(policy="expert", checkpoint="x", **ok)
    with pytest.raises(E.EvalError, match="policy: unknown 'oracle'"):
        E.EvalConfig(policy="oracle", **ok)
    with pytest.raises(E.EvalError, match="overlap"):
        E.EvalConfig(policy="expert", **{**ok, "episodes": 10, "seeds": [0, 5]})
    with pytest.raises(E.EvalError, match="executor: unknown 'fifo'; valid choices"):
        E.EvalConfig(policy="expert", executor="fifo", **ok)
    with pytest.raises(E.EvalError, match="not a policy checkpoint"):
        E.evaluate(E.EvalConfig(checkpoint=str(tmp_path / "missing"), **ok))
    left = _tiny_checkpoint(tmp_path / "left", cameras=["left"])
    with pytest.raises(E.EvalError, match=r"camera 'left'.*valid choices.*corner"):
        E.evaluate(E.EvalConfig(checkpoint=left, **{**ok, "cameras": None, "image_size": None}))
    a3 = _tiny_checkpoint(tmp_path / "a3", action_dim=3)
    with pytest.raises(E.EvalError, match="4-D actions.*outputs 3-D"):
        E.evaluate(E.EvalConfig(checkpoint=a3, **{**ok, "cameras": None, "image_size": None}))
    ckpt = _tiny_checkpoint(tmp_path / "ok")
    with pytest.raises(E.EvalError, match=r"sampling.temperature: not an option.*valid: \[.*vision_steps"):
        E.evaluate(E.EvalConfig(checkpoint=ckpt, sampling={"temperature": 2}, **{**ok, "cameras": None,
                                                                                   "image_size": None}))
    with pytest.raises(E.EvalError, match=r"image_size: \[24, 24\], but the policy reads \[32, 32\]"):
        E.evaluate(E.EvalConfig(checkpoint=ckpt, **{**ok, "cameras": None}))
    with pytest.raises(E.EvalError, match="sample_actions failed.*multiple"):
        E.evaluate(E.EvalConfig(checkpoint=ckpt, sampling={"vision_steps": 3}, **{**ok, "cameras": None,
                                                                                    "image_size": None}))
    assert not out.exists()  # nothing was written, no worker started
    # the command line: Hydra's and our messages, exit code 2
    assert E.main(["env=mujoco", f"out={out}"]) == 2 and "mujoco" in capsys.readouterr().err
    assert E.main(["policy=expert", "env=metaworld", "bogus=1", f"out={out}"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert E.main(["policy=expert", "env=metaworld", "eval=nope", f"out={out}"]) == 2
    assert "quick" in capsys.readouterr().err  # the valid presets are listed
    assert E.main(["env=metaworld", f"out={out}"]) == 2 and "checkpoint: required" in capsys.readouterr().err
    assert E.main(["--help"]) == 0 and "policy=expert" in capsys.readouterr().out
    assert not out.exists()


def test_dying_worker_is_recorded_and_resumed(tmp_path, monkeypatch):
    base = dict(policy="expert", tasks="reach-v3", episodes=3, seeds=[10], max_steps=100, workers=2, videos=0,
                out=str(tmp_path / "d"), **MW)
    monkeypatch.setenv(E.FAULT_ENV, "reach-v3:11")  # spawned workers inherit it: seed 11 kills its process
    with pytest.raises(E.EvalRunError, match="reach-v3 seed 11: the worker process died"):
        E.evaluate(E.EvalConfig(**base))
    doc = json.loads((tmp_path / "d" / E.INFO_FILE).read_text())
    assert sorted(e["seed"] for e in doc["episodes"]) == [10, 12] and not doc["complete"]
    assert doc["runs"][-1]["errors"][0]["seed"] == 11
    monkeypatch.delenv(E.FAULT_ENV)
    doc = E.evaluate(E.EvalConfig(**base))
    assert doc["complete"] and doc["runs"][-1]["episodes_run"] == 1


def test_multirun_sweeps_and_compares(tmp_path, capsys):
    out = tmp_path / "m"
    rc = E.main(["-m", "policy=expert", "env=metaworld", "tasks=reach-v3", "episodes=1", "max_steps=60",
                 "cameras=[corner]", "image_size=[24,24]", "workers=0", "videos=0", "progress=false",
                 "executor=receding,ensemble", "n_action_steps=1,4", f"out={out}"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "multirun.json").read_text())
    assert doc["swept"] == ["executor", "n_action_steps"] and len(doc["jobs"]) == 4
    for i, job in enumerate(doc["jobs"]):
        assert (out / str(i) / ".hydra" / "overrides.yaml").is_file()  # Hydra's sweeper made job i's run dir
        info = json.loads((out / str(i) / E.INFO_FILE).read_text())
        assert info["settings"]["executor"] in job["overrides"][0] and job["episodes"] == 1
    assert (out / "multirun.md").read_text().count("| receding |") == 2


def test_retrained_weights_at_the_same_path_are_not_resumed_into(tmp_path):
    import torch

    torch.manual_seed(0)
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    args = [f"checkpoint={ckpt}", "env=metaworld", "tasks=[reach-v3]", "episodes=1", "max_steps=4",
            "workers=0", "videos=0", "progress=false", f"out={tmp_path / 'e'}"]
    assert E.evaluate(args)["complete"]
    torch.manual_seed(1)
    _tiny_checkpoint(tmp_path / "ckpt")  # another training run writes the same path
    with pytest.raises(E.EvalError, match="weights: '[0-9a-f]{64}' then"):
        E.evaluate(args)


def test_summary_splits_success_by_instruction_where_a_task_has_several():
    """A task under several instructions (which burner) gets a success count per instruction; a task
    under one instruction, and episodes that errored (no success), add nothing."""
    eps = [{"task": "TurnOnStove", "instruction": "turn on the front left burner", "success": s} for s in (0, 0, 1)]
    eps += [{"task": "TurnOnStove", "instruction": "turn on the front right burner", "success": True},
            {"task": "OpenSingleDoor", "instruction": "open the cabinet", "success": True},
            {"task": "OpenSingleDoor", "instruction": "open the door", "error": "crashed"}]
    md = "\n".join(E.by_instruction_markdown(eps, ["TurnOnStove", "OpenSingleDoor"]))
    assert "| TurnOnStove | turn on the front left burner | 1 / 3 |" in md
    assert "| TurnOnStove | turn on the front right burner | 1 / 1 |" in md and "OpenSingleDoor" not in md
    assert E.by_instruction_markdown(eps[4:], ["OpenSingleDoor"]) == []
