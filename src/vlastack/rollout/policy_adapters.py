"""Policies as the episode loop sees them: ``reset(seed)`` and ``sample_actions(obs, **sampling)``.

- :class:`ExpertPolicy` wraps a suite's scripted expert (``reset()``, ``act(obs, env)``) as a
  policy with chunks of one action, so the evaluation harness can be checked against the expert
  run directly: same seeds, same successes.
- :class:`LoadedPolicy` wraps a trained :class:`~vlastack.policies.base.Policy`: inference mode,
  a per-episode seeded noise generator, default sampling options with friendly aliases
  (``vision_steps`` -> DUST's ``num_vision_steps``: its test-time scaling), checked against the
  policy's ``sample_actions`` signature, and the inputs it needs (:meth:`LoadedPolicy.inputs`).
- :func:`as_policy` turns whatever was given into one of these.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from vlastack.types import IMAGE_PREFIX, STATE, TASK, ActionChunk, Observation, image_key

#: short sampling names accepted on the command line -> the policies' keyword names
SAMPLING_ALIASES = {
    "vision_steps": "num_vision_steps",  # DUST: N_o, test-time scaling of the world-model stream
    "action_steps": "num_action_steps",  # DUST: N_A
    "steps": "num_inference_steps",      # Dita: DDIM steps
    "inference_steps": "num_inference_steps",
}


class PolicyAdapterError(ValueError):
    """A policy or sampling option that cannot be used; the message names the valid choices."""


class ExpertPolicy:
    """A scripted expert as a policy: each chunk is the expert's single action for this step.

    The expert may read the env's privileged state, so the adapter is bound to the env it acts in.
    """

    horizon = 1

    def __init__(self, expert: Any, env: Any):
        """Wrap ``expert`` (``reset()``, ``act(obs, env)``) acting in ``env``."""
        if not callable(getattr(expert, "act", None)):
            raise TypeError(f"expert: {type(expert).__name__} has no act(obs, env)")
        self.expert, self.env = expert, env

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (the expert is deterministic given the env's seed)."""
        if callable(getattr(self.expert, "reset", None)):
            self.expert.reset()

    def sample_actions(self, obs: Observation, **sampling: Any) -> ActionChunk:
        """The expert's action for the newest frame of batch element 0, as a chunk (1, 1, D_a)."""
        if sampling:
            raise PolicyAdapterError(f"the scripted expert takes no sampling options, got {sorted(sampling)}")
        if obs.batch_size != 1:
            raise PolicyAdapterError(f"ExpertPolicy acts in one env: expected a batch of 1, got {obs.batch_size}")
        state = np.asarray(obs.state)
        flat: dict[str, Any] = {image_key(c): np.asarray(v)[0, -1] if np.asarray(v).ndim == 5 else np.asarray(v)[0]
                                for c, v in obs.images.items()}  # (H, W, 3)
        flat[STATE] = state[0, -1] if state.ndim == 3 else state[0]  # (D_s,)
        flat[TASK] = obs.task[0]
        action = np.asarray(self.expert.act(flat, self.env), np.float32)  # (D_a,)
        return ActionChunk(action[None, None])  # (1, 1, D_a)


@dataclass(frozen=True)
class PolicyInputs:
    """What a trained policy reads: cameras, image size (H, W), state and action dims, history."""

    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    state_dim: int
    action_dim: int
    n_obs: int
    horizon: int | None


def policy_inputs(cfg: Any) -> PolicyInputs:
    """The inputs a policy config declares (cameras, image_size, state/action dims, history, horizon)."""
    if cfg is None or not hasattr(cfg, "cameras") or not hasattr(cfg, "image_size"):
        raise PolicyAdapterError(f"{type(cfg).__name__} is not a policy config with cameras and image_size")
    horizon = getattr(cfg, "horizon", None)
    n_past = int(getattr(cfg, "n_past_actions", 0) or 0)
    return PolicyInputs(cameras=tuple(cfg.cameras), image_size=tuple(int(s) for s in cfg.image_size),
                        state_dim=int(getattr(cfg, "state_dim", 0)), action_dim=int(cfg.action_dim),
                        n_obs=int(getattr(cfg, "n_obs_steps", 1)),
                        horizon=None if horizon is None else int(horizon) - n_past)


def _sampling_params(policy: Any) -> tuple[list[str], bool]:
    """(keyword names of ``policy.sample_actions`` besides obs, whether it takes **kwargs).

    ``policy`` may be an instance or a class (its unbound ``sample_actions``)."""
    try:
        params = list(inspect.signature(policy.sample_actions).parameters.values())
    except (TypeError, ValueError):
        return [], True
    if params and params[0].name == "self":
        params = params[1:]
    names = [p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def resolve_sampling(policy: Any, sampling: Mapping[str, Any] | None) -> dict[str, Any]:
    """``sampling`` with aliases resolved, checked against ``policy.sample_actions``'s keywords."""
    names, var_kw = _sampling_params(policy)
    out: dict[str, Any] = {}
    for key, value in dict(sampling or {}).items():
        target = key if key in names else SAMPLING_ALIASES.get(key, key)
        if not var_kw and target not in names:
            shown = sorted(set(names) - {"generator"}) + sorted(a for a, t in SAMPLING_ALIASES.items() if t in names)
            cls = policy if isinstance(policy, type) else type(policy)
            raise PolicyAdapterError(f"sampling.{key}: not an option of {cls.__name__}.sample_actions; "
                                     f"valid: {shown}")
        if target in ("generator",):
            raise PolicyAdapterError("sampling.generator: set by the evaluation (seeded per episode), not a config value")
        out[target] = value
    return out


class LoadedPolicy:
    """A trained policy ready for the loop: no autograd, seeded noise per episode, default sampling."""

    def __init__(self, policy: Any, sampling: Mapping[str, Any] | None = None):
        """Wrap ``policy`` (a :class:`~vlastack.policies.base.Policy`); ``sampling`` applies to every call."""
        self.policy = policy
        if hasattr(policy, "eval"):
            policy.eval()
        self.sampling = resolve_sampling(policy, sampling)
        names, _ = _sampling_params(policy)
        self._takes_generator = "generator" in names
        self._generator = None

    @property
    def config(self) -> Any:
        """The wrapped policy's config."""
        return getattr(self.policy, "config", None)

    def inputs(self) -> PolicyInputs:
        """The inputs the policy's config declares."""
        return policy_inputs(self.config)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: the sampling noise is seeded by ``seed`` (reproducible episodes)."""
        import torch

        if seed is None:
            self._generator = None
            return
        dev = getattr(self.policy, "device", torch.device("cpu"))
        self._generator = torch.Generator(device=dev).manual_seed(int(seed) % (2**63))

    def sample_actions(self, obs: Observation, **sampling: Any) -> ActionChunk:
        """The wrapped policy's chunk under inference mode with the default sampling options."""
        import torch

        kw = {**self.sampling, **resolve_sampling(self.policy, sampling)}
        if self._takes_generator and self._generator is not None:
            kw["generator"] = self._generator
        with torch.inference_mode():  # thread-local: entered here, in whichever thread plans
            return self.policy.sample_actions(obs, **kw)


def load_policy_for(path: str | os.PathLike, runtime: str = "torch", device: str = "cpu",
                    sampling: Mapping[str, Any] | None = None, threads: int | None = None) -> LoadedPolicy:
    """The one adapter from a checkpoint and a ``runtime=`` option to a policy the loop runs.

    ``runtime``: ``torch`` (default: the checkpoint in torch on ``device``), ``onnxruntime`` /
    ``onnx`` or ``openvino`` (an export folder from ``vlastack export``, on the CPU), ``cudagraphs``
    (the checkpoint's batch-1 chunks through CUDA graphs on ``device``; eager with a logged reason
    where graphs cannot run). Exported graphs have their sampling options fixed at export:
    ``sampling`` must then be empty or equal to them; CUDA graphs fix them at load.
    """
    from vlastack.policies.export import EXPORTED_RUNTIMES, canonical_runtime, load_runtime_policy, read_export

    try:
        runtime = canonical_runtime(runtime)
    except ValueError as e:
        raise PolicyAdapterError(f"runtime: {e}") from None
    path = resolve_checkpoint(path)
    if runtime == "cudagraphs":
        from vlastack.policies.base import policy_class
        from vlastack.policies.checkpoint import read_meta

        fixed = resolve_sampling(policy_class(read_meta(path).type), sampling)
        return LoadedPolicy(load_runtime_policy(path, runtime, device, threads, fixed), None)
    if runtime in EXPORTED_RUNTIMES:
        from vlastack.policies.base import policy_class

        if str(device) != "cpu":
            raise PolicyAdapterError(f"runtime {runtime!r} runs on the CPU; got device={device!r} "
                                     "(on a GPU use runtime=torch or runtime=cudagraphs)")
        meta = read_export(path)
        asked = resolve_sampling(policy_class(meta["policy"]), sampling)
        if asked and asked != meta["sampling"]:
            raise PolicyAdapterError(f"sampling {dict(sampling or {})}: the exported graph at {path} was built with "
                                     f"sampling {meta['sampling']} (fixed at export); re-export with "
                                     "`vlastack export ... sampling.<name>=<value>` or drop the option")
        sampling = None
    return LoadedPolicy(load_runtime_policy(path, runtime, device, threads), sampling)


def as_policy(policy: Any, sampling: Mapping[str, Any] | None = None) -> Any:
    """What the loop runs: torch modules and checkpoint paths become :class:`LoadedPolicy`."""
    if isinstance(policy, (LoadedPolicy, ExpertPolicy)):
        if sampling:
            if isinstance(policy, ExpertPolicy):
                raise PolicyAdapterError(f"the scripted expert takes no sampling options, got {sorted(sampling)}")
            policy.sampling = {**policy.sampling, **resolve_sampling(policy.policy, sampling)}
        return policy
    if isinstance(policy, (str, os.PathLike)):
        from vlastack.policies.base import load_policy

        return LoadedPolicy(load_policy(resolve_checkpoint(policy)), sampling)
    try:
        import torch

        if isinstance(policy, torch.nn.Module):
            return LoadedPolicy(policy, sampling)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if callable(getattr(policy, "sample_actions", None)):
        if sampling:
            raise PolicyAdapterError("sampling options need a policy with a config (LoadedPolicy)")
        return policy
    raise TypeError(f"{type(policy).__name__} is not a policy (no sample_actions(obs, **sampling))")


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The local checkpoint directory that ``path`` designates (see :func:`vlastack.policies.checkpoint.locate`).

    A checkpoint directory, a ``last`` pointer, a folder holding ``last``, a training run
    directory, or a Hugging Face Hub repo id ``org/name`` (fetched into the hub cache).
    """
    from vlastack.policies.checkpoint import locate

    return str(locate(path))


def observation_for(inputs: PolicyInputs, obs: Mapping[str, Any]) -> list[str]:
    """Problems of a flat env observation against ``inputs`` (missing cameras, sizes, state dim)."""
    problems = []
    for cam in inputs.cameras:
        k = image_key(cam)
        if k not in obs:
            problems.append(f"camera {cam!r} missing (the env gives {[c[len(IMAGE_PREFIX):] for c in obs if c.startswith(IMAGE_PREFIX)]})")
        elif tuple(np.asarray(obs[k]).shape[:2]) != tuple(inputs.image_size):
            problems.append(f"{k}: size {tuple(np.asarray(obs[k]).shape[:2])}, the policy reads {tuple(inputs.image_size)}")
    if inputs.state_dim and np.asarray(obs.get(STATE, ())).shape != (inputs.state_dim,):
        problems.append(f"{STATE}: shape {np.asarray(obs.get(STATE, ())).shape}, the policy reads ({inputs.state_dim},)")
    return problems
