"""DUST: dual-stream diffusion (flow matching) VLA with a world-model stream (arXiv 2510.27607).

    from vlastack.policies.base import make_policy
    policy = make_policy("dust", "small", stats=store.stats)     # or DUSTPolicy(DUSTConfig.preset("small"), stats)
    loss, metrics = policy.compute_loss(batch)                   # batch in the data contract
    chunk = policy.sample_actions(obs, num_vision_steps=16)      # test-time scaling: N_o = 16, N_A = 4

The paper's ablation grid is ``strategy=``: mmdit_decoupled (DUST), mmdit_joint, dit_decoupled,
dit_joint, no_wm (see :mod:`.strategies`); presets ``small_<strategy>``.
"""

from .config import DUSTConfig
from .model import HAS_ACTION, NETWORK_CLASSES, ConditionEncoder, DUSTNetwork, DUSTPolicy, SharedDiTNetwork
from .strategies import (STRATEGIES, STRATEGY_ALIASES, ActionOnlyNoise, DecoupledNoise, JointNoise, NoiseCoupling,
                         SingleStream, Step, Strategy, canonical_strategy, make_strategy)

__all__ = ["DUSTConfig", "DUSTPolicy", "DUSTNetwork", "SharedDiTNetwork", "NETWORK_CLASSES", "ConditionEncoder",
           "HAS_ACTION", "STRATEGIES", "STRATEGY_ALIASES", "Strategy", "NoiseCoupling", "DecoupledNoise", "JointNoise",
           "ActionOnlyNoise", "SingleStream", "Step", "make_strategy", "canonical_strategy"]
