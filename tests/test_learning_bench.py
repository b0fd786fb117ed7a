"""bench/learning.py's report logic on fake eval_info.json files (no simulation, no training)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from vlastack.rollout.evaluate import summarize
from vlastack.rollout.language import swap_summary

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning.py"
TASKS = ["TurnOnStove", "TurnOnSinkFaucet"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("learning_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def fake_eval(successes: dict[str, list[bool]], language: str = "swap", seconds: float = 20.0,
              wall: float = 4.0, workers: int = 2) -> dict:
    """An eval_info.json document shaped like vlastack eval's, summarised by the real functions."""
    eps = [{"task": t, "seed": 100000 + k, "seed_group": 100000, "success": s, "steps": 50, "return": float(s),
            "wall_s": wall} for t, row in successes.items() for k, s in enumerate(row)]
    summary = summarize(eps, list(successes), [100000])
    if language == "swap":
        summary["language_swap"] = swap_summary(eps, list(successes))
    return {"summary": summary, "episodes": eps, "language": language,
            "runs": [{"episodes_run": len(eps), "env_steps": 50 * len(eps), "seconds": seconds, "workers": workers}]}


def dust_row() -> dict:
    # seed 0: both tasks solved, seed 1: stove only, seeds 2, 3: neither
    swap = fake_eval({"TurnOnStove": [True, True, False, False], "TurnOnSinkFaucet": [True, False, False, False]})
    budgets = {}
    for budget, train in (("minutes", {"step": 300, "samples_per_s": 20.0, "elapsed_s": 500.0}),
                          ("steps", {"step": 100, "samples_per_s": 32.0, "elapsed_s": 110.0})):
        budgets[budget] = {"budget": budget, "train": train, "error": None, "evals": {
            "swap": swap, "blank": fake_eval({t: [False, True] for t in TASKS}, "blank"),
            "heldout": fake_eval({t: [True, False, False, False] for t in TASKS}, "normal")}, "scaling": {}}
    budgets["minutes"]["scaling"] = {4: swap, 16: fake_eval({t: [True] * 4 for t in TASKS})}
    return {"name": "dust", "label": "DUST: MMDiT, decoupled noise", "skipped": None, "budgets": budgets}


def header(**kw) -> dict:
    h = {"group": "sink_stove", "date": "2026-12-06 00:00 UTC", "machine": "2 CPU cores", "args": "--suite group",
         "demos": 2, "cameras": "left,wrist", "minutes": 0.5, "steps": 20, "eval_episodes": 4, "blank_episodes": 2,
         "n_action_steps": 16, "budgets": ["minutes", "steps"], "walls": [("collect", 60.0)], "smoke": True}
    return h | kw


def test_group_markdown_cells(bench):
    peer = {"name": "diffusion", "label": "LeRobot Diffusion Policy (no language input)",
            "skipped": bench.NOT_RUN_PEER, "budgets": {}}
    md = bench.group_markdown([dust_row(), peer], TASKS, header(), ["vlastack collect x"])
    # per task over the swap eval with Wilson intervals: 2/4 -> [15%-85%], 1/4 -> [5%-70%]
    assert "| DUST: MMDiT, decoupled noise | 2/4 = 50% [15%-85%] | 1/4 = 25% [5%-70%] |" in md
    # grounded 3/8 pairs; ignore bound: mean over seeds of (some task solved) / n tasks = (2/4) / 2 = 25%
    assert "**3/8 = 38% [14%-69%]** | 25% |" in md
    # blank control and held-out split: overall cells
    assert "| 2/4 = 50% [15%-85%] | 2/8 = 25% [7%-59%] | 300 | 20.0 |" in md
    assert "| 2/4 = 50% [15%-85%] | 2/8 = 25% [7%-59%] | 100 | 32.0 |" in md
    assert f"| LeRobot Diffusion Policy (no language input) | - | - | {bench.NOT_RUN_PEER} |" in md
    # test-time scaling rows, sorted by N_o; seconds per episode = mean wall / workers
    assert "| DUST: MMDiT, decoupled noise | minutes | 4 | 3/8 = 38% [14%-69%] | 3/8 = 38% [14%-69%] | 0.050 |" in md
    assert md.index("| minutes | 4 |") < md.index("| minutes | 16 |")
    assert "| minutes | 16 | 8/8 = 100% [68%-100%]" in md
    assert "**A smoke run**" in md and "vlastack collect x" in md
    assert "## What this budget can and cannot resolve" in md


def test_group_markdown_failed_row(bench):
    row = dust_row()
    row["budgets"]["steps"] = {"budget": "steps", "train": None, "error": "train failed", "evals": {}, "scaling": {}}
    blank = row["budgets"]["minutes"]["evals"]["blank"]
    blank["complete"] = False
    blank["runs"][-1]["errors"] = [{"task": "TurnOnStove", "seed": 100000, "error": "ContractError: empty | text"}]
    md = bench.group_markdown([row], TASKS, header(), [])
    assert "| DUST: MMDiT, decoupled noise | - | - | failed (train failed) |" in md
    assert "| 25% | failed (ContractError: empty / text) | 2/8 = 25% [7%-59%] | 300 |" in md


def test_full_cost_from_measured_rates(bench):
    full = {"demos": 50, "eval_episodes": 50, "blank_episodes": 50, "minutes": 30.0, "steps": 3000}
    row = dust_row()
    horizons = {"TurnOnStove": 100, "TurnOnSinkFaucet": 300}
    lines, total = bench.full_cost([row], horizons, collect_rate=0.5, demos_have=4, full=full)
    collect = (50 * 2 - 4) / 0.5
    minutes_train = 30 * 60 + 60
    steps_train = 10.0 + 3000 * 1.0  # 32 samples/s at batch 32: 1 s/step; set-up 110 - 100 = 10 s
    one_eval = lambda n_ran: 50 * 400 * 20.0 / (50 * n_ran)  # noqa: E731 - 20 s over its env steps, to the horizons
    evals = one_eval(8) + one_eval(4) + one_eval(8)  # swap, blank, heldout: 50 per task
    scaling = one_eval(8) + one_eval(8)
    assert total == pytest.approx(collect + minutes_train + steps_train + 2 * evals + scaling)
    text = "\n".join(lines)
    assert f"**Expected total: at most {total / 3600:.1f} h**" in text and "not counted" not in text
    assert "TurnOnStove 100, TurnOnSinkFaucet 300 steps" in text
    # a row without a measured rate is named, not invented
    row["budgets"]["steps"]["train"] = None
    lines, _ = bench.full_cost([row], horizons, collect_rate=None, demos_have=4, full=full)
    assert "not counted, no rate measured: collection rate, DUST: MMDiT, decoupled noise steps training rate" \
        in "\n".join(lines)


def test_resolution_lines(bench):
    text = "\n".join(bench.resolution_lines(["a", "b", "c", "d"], 50))
    assert "50 episodes give a 95% Wilson interval of about +-13 points" in text
    assert "(200 episodes per row) about +-7 points" in text
    assert bench.episodes_for(0.06) == 267


def test_parse_args(bench, capsys):
    a = bench.parse_args(["--suite", "group", "--smoke"])
    assert (a.tasks, a.demos, a.minutes, a.eval_episodes, a.rows) == (
        ["TurnOnStove", "TurnOnSinkFaucet"], 2, 0.5, 1, ["dust", "dust_no_wm", "diffusion"])
    assert a.results == str(Path("runs/learning_smoke") / "learning_results.md")
    a = bench.parse_args(["--suite", "group", "--full"])
    assert (a.demos, a.eval_episodes, len(a.tasks), a.results) == (50, 50, 4, "bench/learning_results.md")
    assert bench.parse_args([]).rows == ["dust", "dust_no_wm", "dita"]
    for argv, words in ((["--smoke"], "--suite group"), (["--suite", "group", "--rows", "dust_single_stream"],
                                                        "valid for --suite group"),
                        (["--suite", "group", "--group", "nope"], "valid: ['sink_stove'"),
                        (["--suite", "group", "--tasks", "OpenDrawer", "TurnOnStove"], "not in it: ['OpenDrawer']")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert words in capsys.readouterr().err


def test_a_recipe_that_pins_dust_refuses_other_policies(bench, capsys):
    """--experiment quickstart_group sets up DUST (override /policy: dust, through quickstart.yaml): Dita asked
    for by name is refused; the default rows drop it; the peer row (its own LeRobot recipe) stays."""
    assert bench.experiment_policy("quickstart_group") == "dust" and bench.experiment_policy("learning") is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--suite", "group", "--experiment", "quickstart_group", "--rows", "dust", "dita"])
    assert "['dita'] cannot train with --experiment quickstart_group" in capsys.readouterr().err
    rows = bench.parse_args(["--suite", "group", "--experiment", "quickstart_group"]).rows
    assert "dita" not in rows and {"dust", "dust_dit_joint", "dust_no_wm", "diffusion"} <= set(rows)
    assert "dita" in bench.parse_args(["--suite", "group"]).rows


def test_ensemble_executor_reaches_every_evaluation_and_the_results(bench, tmp_path, monkeypatch, capsys):
    """--executor ensemble: every evaluation (swap, blank, held-out, scaling) ensembles a chunk every
    --replan-every steps and the results say so; the default stays receding whole chunks."""
    seen: list = []
    fake_stages(bench, monkeypatch, recording_vlastack(seen))
    res = tmp_path / "res.md"
    assert bench.main(["--suite", "group", "--smoke", "--out", str(tmp_path / "o"), "--results", str(res),
                       "--rows", "dust", "--budgets", "steps", "--scaling", "8",
                       "--executor", "ensemble", "--replan-every", "3"]) == 0
    evals = [argv for argv in seen if argv[0] == "eval"]
    assert len(evals) == 4 and all("executor=ensemble" in e and "+executor_options.replan_every=3" in e
                                   and not any(x.startswith("n_action_steps") for x in e) for e in evals)
    assert "a chunk planned every 3 steps, temporally ensembled" in res.read_text()
    a = bench.parse_args(["--suite", "group"])
    assert bench.chunk_args(a) == ["n_action_steps=16"]
    assert bench.header_executor_words({"n_action_steps": 16}) == "16 actions run per chunk (receding horizon)"  # an older header
    for argv in (["--executor", "ensemble"], ["--suite", "group", "--executor", "ensemble", "--replan-every", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert "--executor ensemble belongs to --suite group" in capsys.readouterr().err


def write_eval_info(kv: dict) -> None:
    """What a faked ``vlastack eval`` leaves: eval_info.json of one success per task under ``out=``."""
    Path(kv["out"]).mkdir(parents=True)
    doc = fake_eval({t: [True] for t in TASKS}, kv.get("language", "normal"))
    (Path(kv["out"]) / "eval_info.json").write_text(json.dumps(doc))


def fake_stages(bench, monkeypatch, fake_vlastack) -> None:
    """Every stage of the benchmark faked: the child commands, the feature cache, no LeRobot side venv."""
    monkeypatch.setattr(bench, "vlastack", fake_vlastack)
    monkeypatch.setattr(bench, "build_feature_cache", lambda store: 0.0)
    monkeypatch.setattr(bench, "side_python", lambda venv: None)


def recording_vlastack(seen: list):
    """A fake ``vlastack`` child that records its argv in ``seen`` and leaves what each stage would:
    the collect summary, the training summary, eval_info.json."""

    def fake_vlastack(argv):
        seen.append(argv)
        kv = dict(x.split("=", 1) for x in argv[1:] if "=" in x)
        if argv[0] == "collect":
            Path(kv["out"]).mkdir(parents=True)
            Path(kv["out"] + ".summary.json").write_text(json.dumps({"runs": [{"succeeded": 4, "seconds": 8.0}]}))
        elif argv[0] == "train":
            d = Path(kv["run_dir"])
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"step": 20, "samples_per_s": 16.0, "elapsed_s": 50.0}))
        elif argv[0] == "eval":
            write_eval_info(kv)
        return 0, 1.0

    return fake_vlastack


def test_main_writes_results_from_stage_outputs(bench, tmp_path, monkeypatch):
    """The whole group flow with the stages faked: every command is recorded and the file is written."""
    seen = []
    fake_stages(bench, monkeypatch, recording_vlastack(seen))
    res = tmp_path / "res.md"
    rc = bench.main(["--suite", "group", "--smoke", "--out", str(tmp_path / "o"), "--results", str(res),
                     "--rows", "dust", "dust_no_wm", "diffusion"])
    assert rc == 0
    md = res.read_text()
    assert not (tmp_path / "res.md.tmp").exists()
    evals = [a for a in seen if a[0] == "eval"]
    # 2 budgets x 2 rows x (swap, blank, heldout) + DUST's 3 scaling runs
    assert len(evals) == 2 * 2 * 3 + 3
    assert sum("sampling.vision_steps=16" in a for a in evals) == 1
    assert all("max_steps=50" in a for a in evals) and "episodes cut at 50 steps" in md
    assert any("split=heldout" in a for a in evals) and any("language=blank" in a for a in evals)
    trains = [a for a in seen if a[0] == "train"]
    assert ["train.max_minutes=null", "train.steps=20"] == trains[1][-2:]
    assert "train.max_minutes=0.5" in trains[0]
    assert md.count("| DUST: MMDiT, decoupled noise | 1/1 = 100% [21%-100%] |") == 2
    assert bench.NOT_RUN_PEER in md and "policy=dust_no_wm" in md
    assert "![language-grounded success per row](res.png)" in md and (tmp_path / "res.png").stat().st_size > 1000
    assert "Expected total" in md and "not counted" not in md
    doc = json.loads((tmp_path / "o" / "learning_results.json").read_text())
    assert doc["suite"] == "group" and [r["name"] for r in doc["rows"]] == ["dust", "dust_no_wm", "diffusion"]
    # --render-from writes the same tables again from the JSON, running no stage
    seen.clear()
    again = tmp_path / "again.md"
    assert bench.main(["--suite", "group", "--render-from", str(tmp_path / "o" / "learning_results.json"),
                       "--results", str(again)]) == 0
    text = again.read_text().replace("(again.png)", "(res.png)")  # the plot is written beside each results file
    assert not seen and "rendered again" in text and (tmp_path / "again.png").is_file()
    assert text.split("with `bench/learning.py", 1)[1].split("\n", 1)[1] == md.split("with `bench/learning.py", 1)[1].split("\n", 1)[1]


def test_jobs_run_rows_side_by_side_in_order(bench, tmp_path, monkeypatch):
    """--jobs 2: two rows train at once, each evaluation gets one env worker, the rows keep their order."""
    import threading
    import time

    lock, running, peak = threading.Lock(), [0], [0]

    def fake_vlastack(argv):
        kv = dict(x.split("=", 1) for x in argv[1:] if "=" in x)
        if argv[0] == "collect":
            Path(kv["out"]).mkdir(parents=True)
        elif argv[0] == "train":
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.2)
            with lock:
                running[0] -= 1
            assert kv["experiment"] == "quickstart_group"
            Path(kv["run_dir"]).mkdir(parents=True)
            (Path(kv["run_dir"]) / "summary.json").write_text(json.dumps({"step": 20, "samples_per_s": 16.0}))
        elif argv[0] == "eval":
            assert kv["workers"] == "1"
            assert kv["episodes"] == ("3" if kv.get("split") == "heldout" else "1")
            write_eval_info(kv)
        return 0, 0.2

    fake_stages(bench, monkeypatch, fake_vlastack)
    res = tmp_path / "res.md"
    rows = ["dust_no_wm", "dust", "dust_dit_joint"]
    assert bench.main(["--suite", "group", "--smoke", "--out", str(tmp_path / "o"), "--results", str(res),
                       "--rows", *rows, "--budgets", "steps", "--jobs", "2", "--heldout-episodes", "3",
                       "--experiment", "quickstart_group"]) == 0
    assert peak[0] == 2
    doc = json.loads((tmp_path / "o" / "learning_results.json").read_text())
    assert [r["name"] for r in doc["rows"]] == rows and list(doc["rows"][0]["budgets"]) == ["steps"]
    md = res.read_text()
    assert "once for 20 optimizer steps; 2 rows side by side" in md and "min of wall clock" not in md
    assert "held-out layouts/styles, 3 per task" in md and "every row `experiment=quickstart_group`" in md


def test_a_stopped_row_says_so_and_costs_what_was_measured(bench):
    """A training stopped by hand: its own words in the table; its training rate counted, no evaluation invented."""
    row = {"name": "dita", "label": "Dita small", "skipped": None, "budgets": {"steps": {
        "budget": "steps", "train": {"step": 200, "samples_per_s": 8.0, "elapsed_s": 820.0}, "error": "train failed",
        "evals": {}, "scaling": {}, "stopped": "stopped by hand at step 200 of 1000"}}}
    md = bench.group_markdown([dust_row(), row], TASKS, header(budgets=["steps"]), [])
    assert "| Dita small | - | - | stopped by hand at step 200 of 1000 |" in md and "failed (train failed)" not in md
    lines, total = bench.full_cost([row], {t: 200 for t in TASKS}, None, 0)
    dita = next(x for x in lines if x.startswith("- Dita small"))
    assert "train 3000 steps at 4.00 s/step" in dita and "its evaluations: no rate measured" in dita
    assert total == pytest.approx(20.0 + 3000 * 4.0)  # set-up 820 - 200 * 4 = 20 s, then 3000 steps


def test_world_model_rows_train_with_their_override_and_scaling_can_be_skipped(bench, tmp_path, monkeypatch):
    """The world-model rows train DUST with their one override (and are not in the default rows);
    --scaling none runs no test-time-scaling evaluation, --scaling 2,8 runs exactly those."""
    assert not set(bench.WM_ROWS) & set(bench.parse_args(["--suite", "group"]).rows)
    assert bench.parse_args(["--suite", "group", "--scaling", "none"]).scaling == []
    seen = []
    fake_stages(bench, monkeypatch, recording_vlastack(seen))
    for scaling, n_scaling in (("none", 0), ("2,8", 2)):
        seen.clear()
        assert bench.main(["--suite", "group", "--smoke", "--out", str(tmp_path / scaling), "--results",
                           str(tmp_path / f"{scaling}.md"), "--rows", "dust", "dust_wm_0.2", "dust_grid_4",
                           "--budgets", "steps", "--scaling", scaling]) == 0
        trains = {dict(x.split("=", 1) for x in a if "=" in x)["run_dir"].rsplit("/", 1)[-1]: a
                  for a in seen if a[0] == "train"}
        assert "policy.lambda_wm=0.2" in trains["dust_wm_0.2"] and "policy.future_grid=[4,4]" in trains["dust_grid_4"]
        assert not any(x.startswith("policy.") for x in trains["dust"])
        assert sum("sampling.vision_steps" in " ".join(a) for a in seen) == n_scaling
    md = (tmp_path / "none.md").read_text()
    assert "DUST, world-model loss weight 0.2" in md and "the world-model rows: DUST with the one override" in md
    assert "LeRobot's own loop" not in md  # no Diffusion Policy row in this run
