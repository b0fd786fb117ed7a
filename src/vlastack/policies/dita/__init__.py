"""Dita: in-context diffusion transformer policy (arXiv 2503.19757).

    from vlastack.policies import make_policy
    policy = make_policy("dita", "small", stats=store.stats)      # or DitaPolicy(DitaConfig.preset("small"), stats)
    loss, metrics = policy.compute_loss(batch)                    # batch in the data contract
    chunk = policy.sample_actions(obs)                            # DDIM, 10 steps, prefix keys/values cached
    opt = torch.optim.AdamW(policy.param_groups(lr=1e-4, weight_decay=0.05), betas=(0.9, 0.95))
    ft = DitaPolicy.finetune_from(ckpt, stats=new_stats, action_dim=6)   # few-shot, new action head
"""

from .config import DitaConfig
from .model import DitaPolicy, DitaTransformer, PrefixCache, PrefixEncoder
from .qformer import FiLM, QFormer, QFormerBlock

__all__ = ["DitaConfig", "DitaPolicy", "DitaTransformer", "PrefixCache", "PrefixEncoder", "FiLM", "QFormer",
           "QFormerBlock"]
