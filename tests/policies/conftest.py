"""Shared by the export and CUDA-graph tests: tiny policies whose every weight matters, and their inputs."""
import pytest
import torch

from vlastack.policies.base import make_policy
from vlastack.types import DatasetSpec, fake_observation


def _perturbed(name: str, device: str = "cpu", **over):
    """A tiny policy (non-trivial stats) with every trainable weight perturbed, so zero-initialised heads
    do not hide a wrong graph."""
    torch.manual_seed(0)
    cfg = make_policy(name, "tiny", **over).config
    d, s = cfg.action_dim, max(cfg.state_dim, 1)
    stats = {"observation.state": {"mean": [0.5] * s, "std": [2.0] * s},
             "action": {"mean": [0.3] * d, "std": [1.5] * d, "q01": [-2.0] * d, "q99": [3.0] * d,
                        "min": [-2.0] * d, "max": [3.0] * d}}
    p = make_policy(name, cfg, stats=stats).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for q in p.parameters():
            if q.requires_grad:
                q.add_(torch.randn(q.shape, generator=g) * 0.2)
    return p.to(device)


def _observation(p, b: int = 1, seed: int = 0):
    """A fake observation of batch ``b`` with the cameras, size, state and history ``p`` reads."""
    cfg = p.config
    spec = DatasetSpec.robot(cameras=cfg.cameras, image_size=cfg.image_size, state_dim=max(cfg.state_dim, 1),
                             action_dim=cfg.action_dim)
    return fake_observation(spec, batch_size=b, n_obs=cfg.n_obs_steps, seed=seed)


@pytest.fixture(scope="session")
def perturbed_policy():
    """Factory: ``perturbed_policy(name, device="cpu")``."""
    return _perturbed


@pytest.fixture(scope="session")
def policy_obs():
    """Factory: ``policy_obs(policy, b=1, seed=0)``."""
    return _observation
