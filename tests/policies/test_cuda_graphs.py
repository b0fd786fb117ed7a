"""Batch-1 sampling through CUDA graphs: graph chunks equal eager chunks for the same noise (GPU), and
without CUDA (or at batch > 1) the policy samples eagerly and says why."""
import logging

import pytest
import torch

from vlastack.policies.cuda_graphs import GraphedPolicy


@pytest.mark.parametrize("name", ["dust", "dita"])
def test_without_cuda_it_samples_eagerly_and_logs_why(name, caplog, perturbed_policy, policy_obs):
    p = perturbed_policy(name)
    with caplog.at_level(logging.WARNING, logger="vlastack.policies.cuda_graphs"):
        g = GraphedPolicy(p)
    assert g.reason and "CUDA" in g.reason and "CUDA graphs off" in caplog.text
    obs = policy_obs(p, b=2)
    got = g.sample_actions(obs, seed=4)
    assert not got.extras["cuda_graphs"] and g.graphed_calls == 0
    torch.testing.assert_close(got.actions, p.sample_actions(obs, seed=4).actions, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["dust", "dita"])
def test_graph_chunks_equal_eager_chunks(name, perturbed_policy, policy_obs):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    p = perturbed_policy(name, "cuda")
    g = GraphedPolicy(p)
    obs = policy_obs(p, b=1)
    for seed in (0, 1, 2, 3):  # the first calls compile and record; later ones replay
        got = g.sample_actions(obs, seed=seed)
        assert g.reason is None, g.reason
        assert got.extras["cuda_graphs"]
        ref = p.sample_actions(obs, seed=seed).actions
        assert float((got.actions - ref).abs().max()) < 1e-4
    assert g.graphed_calls == 4
    other = g.sample_actions(policy_obs(p, b=2), seed=0)  # batch 2: eager, with a reason
    assert not other.extras["cuda_graphs"] and "batch 1" in g.reason


def test_cudagraphs_runtime_through_the_adapter(tmp_path, perturbed_policy, policy_obs):
    """runtime=cudagraphs (serve, deploy, eval): sampling fixed at load, eager with a reason on a CPU."""
    from vlastack.rollout.policy_adapters import load_policy_for

    p = perturbed_policy("dust")
    ck = p.save_pretrained(tmp_path / "ck")
    lp = load_policy_for(ck, "cuda-graphs", "cpu", sampling={"vision_steps": 4})
    assert isinstance(lp.policy, GraphedPolicy) and lp.policy.sampling == {"num_vision_steps": 4}
    assert "CUDA" in lp.policy.reason
    obs = policy_obs(p, b=1)
    lp.reset(3)
    got = lp.sample_actions(obs).actions
    ref = p.sample_actions(obs, generator=torch.Generator().manual_seed(3), num_vision_steps=4).actions
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
