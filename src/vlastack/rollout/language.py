"""Language protocols for evaluation: held-out phrasings, swapped instructions, a blank control.

- ``instructions=FILE``: a JSON object mapping task -> list of phrasings used instead of the
  env's templates; the k-th episode of a task (counted over its seed groups) gets phrasing
  ``k mod n``.
- ``language=swap`` (kitchen task groups, ``scene=group``): every task of one group runs from
  the same start states (the same seeds), each with its own instruction. Besides per-task
  success it reports the **language-grounded success** (the fraction of (seed, task) pairs
  solved) and the **ignore-language bound**: a policy that ignores the instruction does the
  same thing from a start state whatever it is told, so it solves at most one task of the
  group per seed; with this policy's per-seed skill it could reach at most
  ``mean over seeds of max over tasks of success / n_tasks`` (and never more than
  ``1 / n_tasks``).
- ``language=blank``: every episode gets an empty instruction; its gap to a normal run is the
  effect of language.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vlastack.rollout.stats import success_summary
from vlastack.types import TASK

LANGUAGE_MODES = ("normal", "swap", "blank")


class LanguageError(ValueError):
    """A bad language-protocol option (named, with the valid choices)."""


def load_instructions(path: str | Path, tasks: Sequence[str]) -> dict[str, list[str]]:
    """Read an instructions file (``{"Task": ["phrasing", ...], ...}``) and check it against ``tasks``.

    Every key must be an evaluated task and every list a non-empty list of non-empty strings;
    tasks the file leaves out keep the env's own instructions.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise LanguageError(f"instructions: file {p} does not exist") from None
    except (OSError, ValueError) as e:
        raise LanguageError(f"instructions: {p} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise LanguageError(f"instructions: {p} must hold a non-empty JSON object task -> [phrasings], "
                            f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(tasks))
    if unknown:
        raise LanguageError(f"instructions: {p} names tasks not evaluated here: {unknown}; evaluated tasks: "
                            f"{list(tasks)}")
    out: dict[str, list[str]] = {}
    for task, phrasings in data.items():
        if not isinstance(phrasings, list) or not phrasings:
            raise LanguageError(f"instructions: {p}: {task!r} needs a non-empty list of phrasings, got {phrasings!r}")
        bad = [s for s in phrasings if not isinstance(s, str) or not s.strip()]
        if bad:
            raise LanguageError(f"instructions: {p}: {task!r} has empty or non-string phrasings: {bad!r}")
        out[task] = [s.strip() for s in phrasings]
    return out


def instruction_for(mode: str, phrasings: Mapping[str, Sequence[str]] | None, task: str, k: int) -> str | None:
    """The instruction episode ``k`` of ``task`` is given (``None``: the env's own)."""
    if mode == "blank":
        return ""
    if phrasings and task in phrasings:
        options = phrasings[task]
        return options[k % len(options)]
    return None


class InstructionOverride:
    """Wraps an env so that its observations carry ``instruction`` as the task (``""`` for none).

    The env itself is unchanged (its scene and success predicate still follow its own task);
    only what the policy reads differs, and ``info["instruction"]`` says what it was told.
    """

    def __init__(self, env: Any, instruction: str):
        self.env, self.instruction = env, instruction

    def _obs(self, obs: dict) -> dict:
        obs = dict(obs)
        obs[TASK] = self.instruction
        return obs

    def _info(self, info: dict) -> dict:
        info = dict(info)
        info["env_instruction"] = info.get("instruction")
        info["instruction"] = self.instruction
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the wrapped env; the observation carries the override."""
        obs, info = self.env.reset(seed=seed, options=options)
        return self._obs(obs), self._info(info)

    def step(self, action):
        """Step the wrapped env; the observation carries the override."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._obs(obs), reward, terminated, truncated, self._info(info)

    def __getattr__(self, name: str):
        return getattr(self.env, name)


def swap_tasks(tasks: Sequence[str], env_kwargs: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(group, tasks) for ``language=swap``: the group from ``env_kwargs["group"]`` or the one group
    that holds all of ``tasks``; one task expands to every task of the group, several stay as
    given (at least two of one group). Raises naming the valid choices."""
    from vlastack.envs.kitchen.groups import TASK_GROUPS

    if env_kwargs.get("scene", "group") != "group":
        raise LanguageError(f"language=swap runs the tasks of a task group in its shared scene; got "
                            f"scene={env_kwargs.get('scene')!r} (use scene=group)")
    group = env_kwargs.get("group")
    if group is not None:
        if group not in TASK_GROUPS:
            raise LanguageError(f"group: unknown {group!r}; valid groups: {list(TASK_GROUPS)}")
        holding = [group] if set(tasks) <= set(TASK_GROUPS[group]) else []
    else:
        holding = [g for g, ts in TASK_GROUPS.items() if set(tasks) <= set(ts)]
    if len(holding) != 1:
        found = "no group holds them all" if not holding else f"several groups hold them: {holding}"
        raise LanguageError(f"language=swap: tasks {list(tasks)}: {found}; name one with group=<name> "
                            f"(groups: {dict(TASK_GROUPS)})")
    # one task: every task of its group; several: just those (a policy trained on part of a group)
    return holding[0], list(TASK_GROUPS[holding[0]]) if len(tasks) == 1 else list(tasks)


def swap_summary(episodes: Sequence[Mapping[str, Any]], tasks: Sequence[str],
                 confidence: float = 0.95) -> dict[str, Any]:
    """Language-grounded success over the (seed, task) pairs that ran for every task, the
    ignore-language bound and the margin between them (see the module docstring)."""
    by_seed: dict[int, dict[str, bool]] = {}
    for e in episodes:
        if e["task"] in tasks and "success" in e:
            by_seed.setdefault(int(e["seed"]), {})[e["task"]] = bool(e["success"])
    seeds = sorted(s for s, row in by_seed.items() if len(row) == len(tasks))
    pairs = [{"success": by_seed[s][t], "steps": 0} for s in seeds for t in tasks]
    grounded = success_summary(pairs, confidence)
    n = len(tasks)
    best = [max(by_seed[s].values()) for s in seeds]  # (S,): some task of the group solved from seed s
    bound = float(np.mean(best)) / n if seeds else 0.0
    return {"tasks": list(tasks), "seeds": len(seeds), "pairs": len(pairs),
            "grounded_success": grounded["success_rate"], "grounded_ci": [grounded["ci_low"], grounded["ci_high"]],
            "grounded_successes": grounded["successes"], "ignore_bound": bound, "chance_bound": 1.0 / n,
            "margin": grounded["success_rate"] - bound,
            "all_solved_seeds": int(sum(all(by_seed[s].values()) for s in seeds))}


def swap_markdown(block: Mapping[str, Any]) -> list[str]:
    """Markdown lines for a swap summary."""
    lo, hi = block["grounded_ci"]
    return ["", f"Language swap over {block['seeds']} start states x {len(block['tasks'])} tasks "
            f"({block['pairs']} pairs): language-grounded success {100 * block['grounded_success']:.1f}% "
            f"[{100 * lo:.1f}%, {100 * hi:.1f}%] vs the ignore-language bound {100 * block['ignore_bound']:.1f}% "
            f"(at most {100 * block['chance_bound']:.1f}% for any policy that ignores the instruction); "
            f"margin {100 * block['margin']:+.1f} points; every task solved from {block['all_solved_seeds']} "
            f"of {block['seeds']} start states."]
