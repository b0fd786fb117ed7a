"""DUST: dual-stream diffusion (flow matching) VLA with a world-model stream (arXiv 2510.27607).

    from vlastack.policies.base import make_policy
    policy = make_policy("dust", "small", stats=store.stats)     # or DUSTPolicy(DUSTConfig.preset("small"), stats)
    loss, metrics = policy.compute_loss(batch)                   # batch in the data contract
    chunk = policy.sample_actions(obs, num_vision_steps=16)      # test-time scaling: N_o = 16, N_A = 4
"""

from .config import DUSTConfig
from .model import HAS_ACTION, ConditionEncoder, DUSTNetwork, DUSTPolicy
from .strategies import STRATEGIES, DecoupledNoise, JointNoise, SingleStream, Step, Strategy, make_strategy

__all__ = ["DUSTConfig", "DUSTPolicy", "DUSTNetwork", "ConditionEncoder", "HAS_ACTION", "STRATEGIES", "Strategy",
           "DecoupledNoise", "JointNoise", "SingleStream", "Step", "make_strategy"]
