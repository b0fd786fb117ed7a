"""The quickstart's report: figures come from eval_info.json / metrics.jsonl / summary.json, never made up."""
import json
import time
from pathlib import Path

import pytest

from vlastack import quickstart as qs
from vlastack.rollout.stats import wilson_interval


def _fake_run(out: Path, successes: int, episodes: int, resumed: bool = False,
              settings: dict | None = None) -> None:
    (out / "train").mkdir(parents=True)
    (out / "eval").mkdir()
    recs = [{"step": s, "split": "train", "loss": 3.0 / s, "loss_action": 1.0 / s} for s in range(5, 105, 5)]
    recs += [{"step": 50, "split": "val", "loss": 0.5}, {"step": 100, "split": "val", "loss": 0.25}]
    if resumed:  # a resumed run appends its steps again: the later record wins
        recs += [{"step": 100, "split": "val", "loss": 0.2}]
    (out / "train" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (out / "train" / "config.yaml").write_text("policy:\n  name: dust\n  preset: small\n  width: null\n"
                                               "  n_mmdit: 2\ntrain:\n  threads: 1\n")
    (out / "train" / "summary.json").write_text(json.dumps(
        {"step": 100, "ended_by": "max_minutes", "samples_per_s": 12.5, "elapsed_s": 420.0,
         "train_loss": 0.03, "val_loss": 0.2, "feature_encoder": "efficientnet_lite0"}))
    eps = [{"task": "OpenDrawer", "seed": 100000 + k, "success": k < successes, "steps": 60 + k,
            "video": "videos/OpenDrawer/seed_100000.mp4" if k == 0 else None} for k in range(episodes)]
    low, high = wilson_interval(successes, episodes)
    overall = {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
               "ci_low": low, "ci_high": high, "mean_steps": sum(e["steps"] for e in eps) / episodes}
    (out / "eval" / "eval_info.json").write_text(json.dumps(
        {"complete": True, "summary": {"overall": overall, "per_task": {"OpenDrawer": overall}}, "episodes": eps,
         "settings": settings or {"executor": "receding", "n_action_steps": 16, "executor_options": {}}}))


def _stages():
    return [qs.Stage("collect demos", ["collect", "task=OpenDrawer", "cameras=[left,wrist]"], 0, 200.0),
            qs.Stage("train DUST small", ["train", "experiment=quickstart"], 0, 430.0),
            qs.Stage("evaluate", ["eval", "tasks=[OpenDrawer]"], 0, 125.0)]


def test_report_has_success_interval_curve_video_times_and_commands(tmp_path):
    _fake_run(tmp_path, successes=17, episodes=20)
    text = qs.write_report(tmp_path, "OpenDrawer", _stages())
    assert (tmp_path / "report.md").read_text() == text
    # 17/20: Wilson 95% interval 64.0% - 94.8%
    assert "**Success: 17/20 = 85%** (95% Wilson interval 64%-95%)" in text
    assert "seeds 100000-100019" in text and "16 actions run per chunk (receding horizon)" in text
    png = tmp_path / qs.LOSS_PNG
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![training loss]({qs.LOSS_PNG})" in text
    assert "(eval/videos/OpenDrawer/seed_100000.mp4)" in text and "seed 100000: success in 60 steps" in text
    assert "| collect demos | 3.3 min | 0 |" in text and "| **total** | **12.6 min** | |" in text
    assert "vlastack collect task=OpenDrawer 'cameras=[left,wrist]'" in text
    assert "100 optimizer steps (max_minutes), 12.5 samples/s" in text
    assert "Policy: `dust` preset `small` with n_mmdit=2 (" in text


def test_report_without_eval_or_training_says_so(tmp_path):
    text = qs.write_report(tmp_path, "OpenDrawer", _stages()[:1])
    assert "No evaluation result" in text and "No training metrics" in text
    assert "Success:" not in text and not (tmp_path / qs.LOSS_PNG).exists()


def test_read_metrics_last_record_wins_and_bad_lines_fail(tmp_path):
    _fake_run(tmp_path, 1, 2, resumed=True)
    curves = qs.read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert curves["val"] == [(50, 0.5), (100, 0.2)]
    assert [s for s, _ in curves["train"]] == list(range(5, 105, 5))
    assert curves["train_action"][0] == (5, 0.2) and len(curves["train_action"]) == 20
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "split": "train", "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        qs.read_metrics(bad)


def test_stage_commands_use_the_experiment_and_the_budget(tmp_path):
    cmds = dict(qs.stage_commands(tmp_path, "CloseDrawer", 30, ["left", "wrist"], 10, 6.0))
    assert f"out={tmp_path / 'demos.zarr'}" in cmds["collect demos"] and "episodes=30" in cmds["collect demos"]
    assert "experiment=quickstart" in cmds["train DUST small"] and "train.max_minutes=6" in cmds["train DUST small"]
    assert "tasks=[CloseDrawer]" in cmds["evaluate"] and "episodes=10" in cmds["evaluate"]
    assert not any(a.startswith("train.max_minutes") for a in
                   dict(qs.stage_commands(tmp_path, "CloseDrawer", 30, ["left"], 10, None))["train DUST small"])


def test_executor_depends_on_the_mode(tmp_path):
    """One task runs whole 16-action chunks; a task group ensembles a chunk planned every 2 steps (in both
    evaluations, so the blank control differs only in the instruction); the flags override."""
    single = dict(qs.stage_commands(tmp_path, "OpenDrawer", 30, ["left"], 10, None))
    assert "n_action_steps=16" in single["evaluate"] and not any("ensemble" in x for x in single["evaluate"])
    group = dict(qs.stage_commands(tmp_path, ["TurnOnStove", "TurnOnSinkFaucet"], 25, ["left"], 10, None,
                                   group="sink_stove", blank_episodes=2))
    for stage in ("evaluate", "evaluate, blank instruction"):
        assert {"executor=ensemble", "+executor_options.replan_every=2"} <= set(group[stage])
        assert not any(x.startswith("n_action_steps") for x in group[stage])
    forced = dict(qs.stage_commands(tmp_path, ["TurnOnStove", "TurnOnSinkFaucet"], 25, ["left"], 10, None,
                                    group="sink_stove", executor="receding", every=8))
    assert "n_action_steps=8" in forced["evaluate"] and "executor=ensemble" not in forced["evaluate"]
    with pytest.raises(ValueError, match="executor"):
        qs.stage_commands(tmp_path, "OpenDrawer", 30, ["left"], 10, None, executor="async")
    for bad in ("0", "17"):
        with pytest.raises(SystemExit, match="--every"):
            qs.main(["--out", str(tmp_path / "x"), "--every", bad])


def test_oversample_reaches_training_for_the_tasks_of_the_run(tmp_path):
    """--oversample TASK:K becomes dataset.oversample for the listed tasks that run (none: nothing)."""
    over = qs.parse_oversample("TurnOnStove:3,OpenSingleDoor:1")
    assert over == {"TurnOnStove": 3, "OpenSingleDoor": 1} and qs.parse_oversample("none") == {}
    train = dict(qs.stage_commands(tmp_path, ["TurnOnStove", "TurnOnSinkFaucet"], 25, ["left"], 10, None,
                                   group="sink_stove", oversample=over))["train DUST small"]
    assert "dataset.oversample={TurnOnStove:3}" in train  # k = 1 changes nothing and is left out
    # a listed task that does not run, and a listed task with k = 1, add nothing
    for tasks, asked in ((["TurnOnSinkFaucet", "OpenSingleDoor"], over),
                         (["TurnOnStove", "TurnOnSinkFaucet"], {"TurnOnStove": 1})):
        other = dict(qs.stage_commands(tmp_path, tasks, 25, ["left"], 10, None, group="sink_stove",
                                       oversample=asked))
        assert not any(a.startswith("dataset.oversample") for a in other["train DUST small"])
    for bad in ("TurnOnStove", "TurnOnStove:0", ":2"):
        with pytest.raises(SystemExit, match="--oversample"):
            qs.parse_oversample(bad)


def test_report_names_the_ensembling_executor(tmp_path):
    _fake_run(tmp_path, successes=5, episodes=10, settings={"executor": "ensemble", "n_action_steps": 8,
                                                            "executor_options": {"replan_every": 2}})
    text = qs.write_report(tmp_path, "OpenDrawer", _stages())
    assert "; a chunk planned every 2 steps, temporally ensembled." in text and "actions run per chunk" not in text


def test_rerun_shows_the_first_runs_wall_times_beside_this_one(tmp_path):
    _fake_run(tmp_path, successes=17, episodes=20)
    qs.record_run(tmp_path, _stages())
    text = qs.write_report(tmp_path, "OpenDrawer", _stages())
    assert "first run here" not in text  # one invocation: nothing to compare
    rerun = [qs.Stage(s.title, s.argv, 0, 4.0) for s in _stages()]
    qs.record_run(tmp_path, rerun)
    assert [len(r["stages"]) for r in qs.read_history(tmp_path)] == [3, 3]
    text = qs.write_report(tmp_path, "OpenDrawer", rerun)
    assert "| stage | wall time | exit | first run here |" in text
    assert "| train DUST small | 4 s | 0 | 7.2 min |" in text
    assert "| **total** | **12 s** | | **12.6 min** |" in text


def test_training_runs_as_ddp_ranks_and_the_report_says_how(tmp_path, monkeypatch):
    """--ranks 2 launches only the training stage under torchrun (the command in the report says so);
    the other stages stay single processes; a bad value is refused before anything runs."""
    launched = []

    def fake_run(argv, ranks=1):
        launched.append((argv[0], ranks))
        return 1 if argv[0] == "eval" else 0, 0.1  # stop after the first evaluation

    monkeypatch.setattr(qs, "run_vlastack", fake_run)
    assert qs.main(["--out", str(tmp_path / "q"), "--ranks", "2"]) == 1
    assert launched == [("collect", 1), ("inspect", 1), ("train", 2), ("eval", 1)]
    train = [s for s in qs.read_history(tmp_path / "q")[0]["stages"] if s["title"].startswith("train")][0]
    assert train["command"].startswith("torchrun --standalone --nproc-per-node=2 -m vlastack.cli train ")
    assert qs.Stage("t", ["train"], 0, 1.0).command == "vlastack train"
    with pytest.raises(SystemExit, match="--ranks"):
        qs.main(["--out", str(tmp_path / "r"), "--ranks", "0"])


def test_deadline_takes_setup_and_collection_out_of_the_training_budget(tmp_path, monkeypatch, capsys):
    """The group run ends by its deadline: what set-up and collection took (counted from
    $VLASTACK_QUICKSTART_T0, which `make quickstart` sets before its set-up) comes out of training,
    never above the recipe's budget nor below the floor (said); --minutes and --deadline 0 turn it off."""
    assert qs.experiment_minutes("quickstart_group") == 14.0
    assert qs.deadline_minutes(2.0, 19.5, 14.0) == (14.0, True)  # a warm venv: the recipe's budget
    assert qs.deadline_minutes(3.8, 19.5, 14.0) == (12.2, True)  # a clean clone's set-up
    assert qs.deadline_minutes(17.0, 19.5, 14.0) == (qs.MIN_TRAIN_MIN, False)
    assert qs.eval_reserve(3, 10, 4) == qs.EVAL_RESERVE_MIN and qs.eval_reserve(3, 20, 8) == 2 * qs.EVAL_RESERVE_MIN
    seen = []

    def fake_run(argv, ranks=1):
        seen.append(list(argv))
        return 1 if argv[0] == "eval" else 0, 0.1

    monkeypatch.setattr(qs, "run_vlastack", fake_run)
    t0, since = time.time() - 300, []
    monkeypatch.setenv(qs.START_ENV, str(t0))
    with monkeypatch.context() as m:  # 5 minutes from $VLASTACK_QUICKSTART_T0 to training, however slow this machine
        m.setattr(qs, "minutes_since", lambda t: since.append(t) or 5.0)
        qs.main(["--out", str(tmp_path / "q"), "--ranks", "1"])
    assert since == [t0]
    train = [a for a in seen if a[0] == "train"][-1]
    assert [a for a in train if a.startswith("train.max_minutes")] == ["train.max_minutes=11"]  # 19.5 - 5 - 3.5
    assert "training got 11 of the recipe's 14 min" in (tmp_path / "q" / qs.REPORT).read_text()
    for flags, want in ((["--minutes", "6"], ["train.max_minutes=6"]), (["--deadline", "0"], []), (["--single"], [])):
        seen.clear()
        qs.main(["--out", str(tmp_path / "r"), "--ranks", "1", *flags])
        assert [a for a in [a for a in seen if a[0] == "train"][-1] if a.startswith("train.max_minutes")] == want
    monkeypatch.setenv(qs.START_ENV, str(time.time() - 19 * 60))  # past the deadline: the floor, said
    qs.main(["--out", str(tmp_path / "s"), "--ranks", "1"])
    assert "the run will end after the deadline" in capsys.readouterr().out
    for bad, match in (("yesterday", "not a time in epoch seconds"), ("1000", "not a time of the last 2 hours")):
        monkeypatch.setenv(qs.START_ENV, bad)
        with pytest.raises(SystemExit, match=match):
            qs.main(["--out", str(tmp_path / "t")])
    monkeypatch.delenv(qs.START_ENV)
    with pytest.raises(SystemExit, match="--deadline must be >= 0"):
        qs.main(["--out", str(tmp_path / "t"), "--deadline", "-1"])
