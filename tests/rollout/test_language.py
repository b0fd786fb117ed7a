"""Language protocols in evaluation: held-out phrasings from a file, swapped instructions over a task
group's shared starts (with the ignore-language bound), the blank control, and their bad input."""
import json

import numpy as np
import pytest

from vlastack.envs.kitchen import TASK_GROUPS
from vlastack.rollout import evaluate as E
from vlastack.rollout.language import (InstructionOverride, LanguageError, instruction_for, load_instructions,
                                       swap_summary)
from vlastack.types import TASK

KITCHEN = dict(suite="kitchen", cameras=["left"], image_size=[32, 32], progress=False, workers=0, videos=0)


def test_instructions_file_is_checked(tmp_path):
    p = tmp_path / "phr.json"
    p.write_text(json.dumps({"OpenDrawer": ["pull it", " open that drawer "]}))
    assert load_instructions(p, ["OpenDrawer", "CloseDrawer"]) == {"OpenDrawer": ["pull it", "open that drawer"]}
    for data, msg in (({"Nope": ["x"]}, "names tasks not evaluated here: \\['Nope'\\]"),
                      ({"OpenDrawer": []}, "needs a non-empty list"),
                      ({"OpenDrawer": "open"}, "needs a non-empty list"),
                      ({"OpenDrawer": ["ok", ""]}, "empty or non-string"),
                      ([], "non-empty JSON object")):
        p.write_text(json.dumps(data))
        with pytest.raises(LanguageError, match=msg):
            load_instructions(p, ["OpenDrawer"])
    p.write_text("{not json")
    with pytest.raises(LanguageError, match="not readable JSON"):
        load_instructions(p, ["OpenDrawer"])
    with pytest.raises(LanguageError, match="does not exist"):
        load_instructions(tmp_path / "missing.json", ["OpenDrawer"])


def test_phrasing_k_mod_n_and_blank():
    phr = {"A": ["a0", "a1", "a2"]}
    assert [instruction_for("normal", phr, "A", k) for k in range(5)] == ["a0", "a1", "a2", "a0", "a1"]
    assert instruction_for("normal", phr, "B", 0) is None  # not in the file: the env's own
    assert instruction_for("blank", None, "A", 3) == ""


class _FakeEnv:
    def reset(self, seed=None, options=None):
        return {TASK: "open the drawer", "x": 1}, {"instruction": "open the drawer"}

    def step(self, action):
        return {TASK: "open the drawer"}, 0.0, False, False, {"instruction": "open the drawer"}


def test_override_changes_only_what_the_policy_reads():
    env = InstructionOverride(_FakeEnv(), "turn on the stove")
    obs, info = env.reset(seed=0)
    assert obs[TASK] == "turn on the stove" and obs["x"] == 1
    assert info["instruction"] == "turn on the stove" and info["env_instruction"] == "open the drawer"
    assert env.step(None)[0][TASK] == "turn on the stove"


def test_swap_summary_grounded_success_and_bound():
    tasks = ["A", "B", "C", "D"]
    # seed 0: all solved; seed 1: only A (what an instruction-ignoring policy could do); seed 2: none
    eps = [{"task": t, "seed": 0, "success": True} for t in tasks]
    eps += [{"task": t, "seed": 1, "success": t == "A"} for t in tasks]
    eps += [{"task": t, "seed": 2, "success": False} for t in tasks]
    eps += [{"task": "A", "seed": 3, "success": True}]  # seed 3 incomplete: left out
    s = swap_summary(eps, tasks)
    assert (s["seeds"], s["pairs"], s["grounded_successes"]) == (3, 12, 5)
    assert s["grounded_success"] == pytest.approx(5 / 12)
    assert s["ignore_bound"] == pytest.approx((1 + 1 + 0) / 3 / 4)
    assert s["chance_bound"] == 0.25 and s["all_solved_seeds"] == 1
    assert s["margin"] == pytest.approx(5 / 12 - 2 / 12)
    lo, hi = s["grounded_ci"]
    assert lo < 5 / 12 < hi


def test_swap_config_expands_to_the_group(tmp_path):
    cfg = E.EvalConfig(policy="expert", tasks=["TurnOnMicrowave"], language="swap", out=str(tmp_path / "e"),
                       **KITCHEN)
    assert cfg.tasks == list(TASK_GROUPS["coffee_microwave"])
    assert cfg.env_kwargs["scene"] == "group" and cfg.env_kwargs["group"] == "coffee_microwave"
    with pytest.raises(E.EvalError, match="language=swap runs the tasks of a task group"):
        E.EvalConfig(policy="expert", tasks=["TurnOnMicrowave"], language="swap", out="x",
                     env_kwargs={"scene": "single"}, **KITCHEN)
    with pytest.raises(E.EvalError, match="several groups hold them"):
        E.EvalConfig(policy="expert", tasks=["OpenSingleDoor"], language="swap", out="x", **KITCHEN)
    with pytest.raises(E.EvalError, match="language: unknown 'loud'; valid choices"):
        E.EvalConfig(policy="expert", tasks=["OpenDrawer"], language="loud", out="x", **KITCHEN)
    with pytest.raises(E.EvalError, match="needs the kitchen's task groups"):
        E.EvalConfig(policy="expert", suite="metaworld", tasks=["reach-v3"], language="swap", out="x",
                     progress=False)


def test_instructions_file_and_blank_reach_the_episodes(tmp_path):
    phr = tmp_path / "phr.json"
    phr.write_text(json.dumps({"TurnOnMicrowave": ["get the microwave going", "power up the oven"]}))
    common = dict(policy="expert", tasks=["TurnOnMicrowave"], episodes=3, seeds=[100], **KITCHEN)
    env_kwargs = {"scene": "group", "group": "coffee_microwave"}
    doc = E.evaluate(E.EvalConfig(instructions=str(phr), out=str(tmp_path / "a"), env_kwargs=env_kwargs, **common))
    said = [e["instruction"] for e in doc["episodes"]]
    assert said == ["get the microwave going", "power up the oven", "get the microwave going"]
    assert doc["settings"]["instructions"] == {"TurnOnMicrowave": ["get the microwave going", "power up the oven"]}
    assert doc["summary"]["overall"]["successes"] == 3  # the expert ignores language by construction
    assert "Instructions replaced from a file" in (tmp_path / "a" / E.SUMMARY_FILE).read_text()
    blank = E.evaluate(E.EvalConfig(language="blank", out=str(tmp_path / "b"), env_kwargs=env_kwargs, **common))
    assert [e["instruction"] for e in blank["episodes"]] == ["", "", ""]
    assert blank["language"] == "blank" and blank["settings"]["language"] == "blank"
    # resume refuses a different protocol in the same out
    with pytest.raises(E.EvalError, match="other settings"):
        E.evaluate(E.EvalConfig(out=str(tmp_path / "b"), env_kwargs=env_kwargs, **common))


@pytest.mark.slow
@pytest.mark.parametrize("group", list(TASK_GROUPS))
def test_expert_swap_scores_every_task(tmp_path, group):
    """The expert ignores language by construction yet solves its own task from every shared start."""
    doc = E.evaluate(E.EvalConfig(policy="expert", tasks=[TASK_GROUPS[group][0]], env_kwargs={"group": group},
                                  language="swap", episodes=3, seeds=[100], out=str(tmp_path / group), **KITCHEN))
    s = doc["summary"]["language_swap"]
    assert s["pairs"] == 3 * len(TASK_GROUPS[group])
    assert s["grounded_success"] >= 0.9 and s["ignore_bound"] <= 1 / len(TASK_GROUPS[group]) + 1e-9
    assert np.isclose(s["margin"], s["grounded_success"] - s["ignore_bound"])


def test_a_checkpoint_runs_with_a_blank_instruction(tmp_path):
    """The blank control reaches the policy as "" (no instruction), which the policy contract accepts."""
    from vlastack.datasets.stats import array_stats
    from vlastack.policies.base import make_policy
    from vlastack.types import ACTION, STATE

    rng = np.random.default_rng(0)
    stats = {STATE: array_stats(rng.normal(size=(64, 4))), ACTION: array_stats(rng.uniform(-1, 1, size=(64, 4)))}
    make_policy("dust", "tiny", stats=stats, cameras=["corner"], state_dim=4, action_dim=4).save_pretrained(
        tmp_path / "ckpt")
    doc = E.evaluate(E.EvalConfig(checkpoint=str(tmp_path / "ckpt"), suite="metaworld", tasks=["reach-v3"],
                                  episodes=2, seeds=[100], max_steps=6, workers=0, videos=0, progress=False,
                                  language="blank", out=str(tmp_path / "ev")))
    assert doc["complete"] and [e["instruction"] for e in doc["episodes"]] == ["", ""]
    assert all(e["policy_calls"] >= 1 for e in doc["episodes"])
