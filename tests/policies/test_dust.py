"""DUST: shapes, training behaviour, sampler schedule and call counts, checkpoints, bad input."""
import json

import pytest
import torch

from vlastack.policies.base import Policy, feature_key, make_policy
from vlastack.policies.dust import DUSTConfig, DUSTPolicy, make_strategy
from vlastack.policies.noise import FlowMatching
from vlastack.types import ContractError, DatasetSpec, Observation, fake_batch, fake_observation, image_key


def _spec(cfg):
    return DatasetSpec.robot(cameras=cfg.cameras, image_size=cfg.image_size, state_dim=cfg.state_dim,
                             action_dim=cfg.action_dim)


def _stats(cfg):
    return {"observation.state": {"mean": [0.0] * cfg.state_dim, "std": [1.0] * cfg.state_dim},
            "action": {"min": [-3.0] * cfg.action_dim, "max": [3.0] * cfg.action_dim}}


def _policy(preset="tiny", seed=0, **over):
    torch.manual_seed(seed)
    cfg = DUSTConfig.preset(preset, **over)
    return make_policy("dust", cfg, stats=_stats(cfg))


def _batch(cfg, b=4, seed=0):
    return fake_batch(_spec(cfg), batch_size=b, n_obs=cfg.n_obs_steps, horizon=cfg.horizon,
                      future_offset=cfg.future_offset, seed=seed)


def _loss_at(policy, batch, seed=123):
    torch.manual_seed(seed)
    return policy.compute_loss(batch)


def _train(policy, batch, steps, lr=3e-3):
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------- shapes and training


def test_shapes_and_finite_loss():
    p = _policy()
    cfg = p.config
    loss, m = p.compute_loss(_batch(cfg))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(m) == {"loss", "loss_action", "loss_world", "action_fraction"}
    assert m["loss"] == pytest.approx(m["loss_action"] + cfg.lambda_wm * m["loss_world"], rel=1e-5)
    chunk = p.sample_actions(fake_observation(_spec(cfg), batch_size=3), seed=0)
    assert chunk.actions.shape == (3, cfg.horizon, cfg.action_dim) and torch.isfinite(chunk.actions).all()
    assert chunk.extras["future"].shape == (3, cfg.num_future_tokens, p.feat_dim)
    assert cfg.num_future_tokens == len(cfg.cameras) * 4


def test_overfits_one_small_batch():
    """One batch with its noise draw held fixed (the same seed before every step): the loss, and
    each stream's loss, fall by at least 90%."""
    p = _policy()
    batch = _batch(p.config, b=2)
    before, m0 = _loss_at(p, batch)
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=3e-3)
    for _ in range(100):
        loss, _ = _loss_at(p, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, m1 = _loss_at(p, batch)
    assert after.item() <= 0.1 * before.item(), (before.item(), after.item())
    assert m1["loss_action"] <= 0.1 * m0["loss_action"] and m1["loss_world"] <= 0.1 * m0["loss_world"], (m0, m1)


def test_action_free_batches_train_only_the_vision_stream():
    p = _policy()
    cfg = p.config
    for make in ("pad", "flag", "no_action_key"):
        batch = _batch(cfg)
        if make == "pad":
            batch["action_is_pad"][:] = True
        elif make == "flag":
            batch["has_action"] = torch.zeros(4, dtype=torch.bool)
        else:
            del batch["action"], batch["action_is_pad"]
        p.zero_grad()
        loss, m = p.compute_loss(batch)
        loss.backward()
        assert m["loss_action"] == 0.0 and m["action_fraction"] == 0.0 and m["loss_world"] > 0, make
        action_only = list(p.net.action_out.parameters()) + list(p.net.action_blocks.parameters())
        assert all(q.grad is None or torch.count_nonzero(q.grad) == 0 for q in action_only), make
        assert torch.count_nonzero(p.net.vision_out.head[-1].weight.grad) > 0, make


def test_padded_and_action_free_samples_do_not_affect_the_action_loss():
    p = _policy()
    batch = _batch(p.config)
    batch["action_is_pad"][0, 2:] = True  # padded tail of sample 0
    batch["has_action"] = torch.tensor([True, True, True, False])  # sample 3 is video-only
    _, m0 = _loss_at(p, batch)
    batch["action"][0, 2:] = 1e6
    batch["action"][3] = float("nan")
    _, m1 = _loss_at(p, batch)
    assert m0["loss_action"] == m1["loss_action"] and m0["loss_world"] == m1["loss_world"]
    batch["action"][1, 0] += 1.0  # a valid step does matter
    assert _loss_at(p, batch)[1]["loss_action"] != m0["loss_action"]


def test_cached_features_match_images():
    p = _policy()
    cfg = p.config
    batch = _batch(cfg)
    cached = {k: v for k, v in batch.items() if not k.startswith("observation.images.")}
    with torch.no_grad():
        for cam in cfg.cameras:
            imgs = batch[image_key(cam)]  # (B, T, H, W, 3)
            grid, _ = p.vision(imgs.flatten(0, 1).permute(0, 3, 1, 2).float() / 255)
            cached[feature_key(p.vision.name, image_key(cam))] = grid.view(*imgs.shape[:2], *grid.shape[1:]).half()
    l_img, _ = _loss_at(p, batch)
    l_feat, _ = _loss_at(p, cached)
    assert torch.allclose(l_img, l_feat, rtol=1e-2)
    obs = {k: (v[:, :1] if torch.is_tensor(v) and v.dim() >= 3 else v) for k, v in cached.items()
           if not k.endswith("_is_pad") and k != "action"}
    obs_img = {k: (v[:, :1] if torch.is_tensor(v) and v.dim() >= 3 else v) for k, v in batch.items()
               if not k.endswith("_is_pad") and k != "action"}
    a1 = p.sample_actions(obs, seed=1).actions
    a2 = p.sample_actions(obs_img, seed=1).actions
    assert torch.allclose(a1, a2, atol=1e-2)


# ---------------------------------------------------------------- sampling


def _count(module):
    n = [0]
    module.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    return n


@pytest.mark.parametrize("n_a,n_o", [(2, 2), (2, 6), (4, 16), (1, 3)])
def test_sampler_call_counts(n_a, n_o):
    p = _policy()
    net, dec, blk, last_mlp = (_count(p.net), _count(p.net.action_out), _count(p.net.action_blocks[0]),
                               _count(p.net.mmdit[-1].mlp[0]))
    vis_blk = _count(p.net.vision_blocks[0])
    chunk = p.sample_actions(fake_observation(_spec(p.config), batch_size=2), num_action_steps=n_a,
                             num_vision_steps=n_o, seed=0)
    assert net[0] == n_o and vis_blk[0] == n_o  # one network call per vision step
    assert dec[0] == n_a and blk[0] == n_a and last_mlp[0] == n_a  # action-only work only when actions advance
    assert chunk.extras["num_network_calls"] == n_o and chunk.extras["num_action_updates"] == n_a


def test_skipping_action_blocks_does_not_change_the_result():
    p = _policy()
    _train(p, _batch(p.config), steps=5)  # non-trivial weights
    obs = fake_observation(_spec(p.config), batch_size=2)
    fast = p.sample_actions(obs, num_action_steps=2, num_vision_steps=6, seed=4)
    # reference: same schedule, but the full network (action blocks included) on every step
    data, cfg = obs.to_flat(), p.config
    with torch.no_grad():
        state = p._state(data)
        frames = p._camera_frames(data, {c: [0] for c in cfg.cameras}, 2)
        ctx, valid, _ = p._condition(frames, data["task"])
        g = torch.Generator().manual_seed(4)
        a = torch.randn(2, cfg.horizon, cfg.action_dim, generator=g)
        o = torch.randn(2, cfg.num_future_tokens, p.feat_dim, generator=g)
        for st in make_strategy("mmdit_decoupled").schedule(2, 6):
            v_a, v_o = p.net(state, a, torch.full((2,), st.tau_a), ctx, valid, o, torch.full((2,), st.tau_o))
            o = o + st.dt_o * v_o
            if st.advance:
                a = a + st.dt_a * v_a
    assert torch.allclose(fast.actions, p.normalizer.unnormalize("action", a), atol=1e-5)
    assert torch.allclose(fast.extras["future"], o, atol=1e-5)
    # the same through the public switch, which runs the action blocks on every step
    dec = _count(p.net.action_out)
    full = p.sample_actions(obs, num_action_steps=2, num_vision_steps=6, seed=4, skip_action_blocks=False)
    assert dec[0] == 6 and full.extras["num_action_updates"] == 2
    assert torch.allclose(full.actions, fast.actions, atol=1e-5)


def test_schedules():
    s = make_strategy("mmdit_decoupled").schedule(2, 6)
    assert [st.advance for st in s] == [False, False, True, False, False, True]
    assert [st.tau_a for st in s] == [0, 0, 0, 0.5, 0.5, 0.5] and s[-1].tau_o == pytest.approx(5 / 6)
    assert sum(st.dt_a for st in s if st.advance) == pytest.approx(1.0)
    assert sum(st.dt_o for st in s) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiple"):
        make_strategy("mmdit_decoupled").schedule(4, 6)
    with pytest.raises(ValueError, match="must equal N_A"):
        make_strategy("mmdit_joint").schedule(4, 8)
    tau_a, tau_o = make_strategy("mmdit_joint").train_taus(FlowMatching(), 5)
    assert torch.equal(tau_a, tau_o)
    a, o = make_strategy("mmdit_decoupled").train_taus(FlowMatching(), 5, torch.Generator().manual_seed(0))
    assert not torch.equal(a, o)
    assert make_strategy("no_wm").train_taus(FlowMatching(), 5)[1] is None
    with pytest.raises(ValueError, match="unknown DUST strategy"):
        make_strategy("dit_single_stream")


def test_seeded_chunks_are_reproducible():
    p = _policy()
    obs = fake_observation(_spec(p.config), batch_size=2)
    _train(p, _batch(p.config), steps=3)
    a = p.sample_actions(obs, seed=7).actions
    assert torch.equal(a, p.sample_actions(obs, seed=7).actions)
    assert torch.equal(a, p.sample_actions(obs, generator=torch.Generator().manual_seed(7)).actions)
    assert not torch.equal(a, p.sample_actions(obs, seed=8).actions)


def test_modulation_cache_follows_the_weights():
    """Per-step adaLN modulations are kept across chunks, and dropped when the weights change."""
    p = _policy()
    obs = fake_observation(_spec(p.config), batch_size=2)
    cache = p.net._mod_cache
    a1 = p.sample_actions(obs, seed=1).actions
    n = len(cache.entries)
    assert n == 2  # one schedule, two streams
    assert torch.equal(a1, p.sample_actions(obs, seed=1).actions) and len(cache.entries) == n  # served from it
    p.sample_actions(obs, num_action_steps=2, num_vision_steps=4, seed=1)
    assert len(cache.entries) == n + 2  # a new schedule adds entries
    # an optimizer step changes the weights in place: the next chunk must use the new ones
    _train(p, _batch(p.config), steps=2)
    a2 = p.sample_actions(obs, seed=1).actions
    cache.clear()
    assert torch.equal(a2, p.sample_actions(obs, seed=1).actions) and not torch.equal(a1, a2)
    # load_state_dict (in place) and a dtype move (new parameters) also invalidate
    q = _policy(seed=5)
    q.sample_actions(obs, seed=1)
    q.load_state_dict(p.state_dict())
    assert torch.equal(q.sample_actions(obs, seed=1).actions, a2)
    q.for_inference(torch.bfloat16)
    b16 = q.sample_actions(obs, seed=1).actions
    q.net._mod_cache.clear()
    assert torch.equal(b16, q.sample_actions(obs, seed=1).actions)
    # copies start empty; gradients on means no caching
    import copy
    assert len(copy.deepcopy(p).net._mod_cache.entries) == 0
    cache.clear()
    with torch.enable_grad():
        p.net.step_modulations([0.0, 0.5], 0)
    assert len(cache.entries) == 0


def test_bfloat16_inference_is_close_to_float32():
    p = _policy()
    _train(p, _batch(p.config), steps=5)
    obs = fake_observation(_spec(p.config), batch_size=2)
    ref = p.sample_actions(obs, seed=2).actions
    keys, sd32 = list(p.state_dict()), {k: v.clone() for k, v in p.state_dict().items()}
    p.for_inference(torch.bfloat16)
    assert p.net.action_enc.weight.dtype == torch.bfloat16 and p.normalizer.affine["action"].scale.dtype == torch.float32
    assert list(p.state_dict()) == keys  # prepacked linears keep the checkpoint layout
    out = p.sample_actions(obs, seed=2)
    assert out.actions.dtype == torch.float32 and torch.isfinite(out.actions).all()
    assert (out.actions - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    q = _policy()  # same weights, bfloat16 without prepacking: the same chunk
    q.load_state_dict({k: v.float() for k, v in p.state_dict().items()})
    q.for_inference(torch.bfloat16, prepack=False)
    assert type(q.net.action_enc) is torch.nn.Linear
    assert torch.allclose(q.sample_actions(obs, seed=2).actions, out.actions, atol=1e-2)
    # float32 with prepacking only: the float32 chunk
    r = _policy()
    r.load_state_dict(sd32)
    r.for_inference(torch.float32)
    assert r.net.action_enc.weight.dtype == torch.float32
    assert torch.allclose(r.sample_actions(obs, seed=2).actions, ref, atol=1e-4)


# ---------------------------------------------------------------- the ablation grid

GRID = {  # strategy: (network, noise coupling, world model), the paper's 2x2 grid + the no-world-model row
    "mmdit_decoupled": ("mmdit", "decoupled", True), "mmdit_joint": ("mmdit", "joint", True),
    "dit_decoupled": ("dit", "decoupled", True), "dit_joint": ("dit", "joint", True),
    "no_wm": ("mmdit", "action-only", False)}


def test_the_grid_has_five_rows_with_presets_and_configs():
    from vlastack.policies.dust import STRATEGIES, SharedDiTNetwork
    from vlastack.rollout.common import configs_dir

    assert {n: (s.network, s.noise.name, s.world_model) for n, s in STRATEGIES.items()} == GRID
    for name in GRID:
        cfg = DUSTConfig.preset("small" if name == "mmdit_decoupled" else f"small_{name}")
        assert cfg.strategy == name and cfg.width == DUSTConfig.preset("small").width
        yaml = configs_dir("train.yaml") / "policy" / ("dust.yaml" if name == "mmdit_decoupled" else f"dust_{name}.yaml")
        assert yaml.is_file(), yaml
    assert isinstance(_policy(strategy="dit_joint").net, SharedDiTNetwork)
    # the former name of the no-world-model row still loads (old checkpoints / configs), as no_wm
    with pytest.warns(DeprecationWarning, match="now named 'no_wm'"):
        assert DUSTConfig.preset("tiny", strategy="dit_single").strategy == "no_wm"


def _randomise(net, seed=0):
    """Non-zero weights everywhere (adaLN gates start at zero, which hides what a block does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in net.parameters():
            q.copy_(torch.randn(q.shape, generator=g) * 0.2)
    net._mod_cache.clear()


def _velocities(p, batch, seed=0):
    """The network's (v_a, v_o) on a fixed input built from ``batch``."""
    cfg = p.config
    g = torch.Generator().manual_seed(seed)
    b = batch["observation.state"].shape[0]
    with torch.no_grad():
        state = p._state(batch)
        frames = p._camera_frames(batch, {c: [0] for c in cfg.cameras}, b)
        ctx, valid, _ = p._condition(frames, batch["task"])
        a = torch.randn(b, cfg.horizon, cfg.action_dim, generator=g)
        o = torch.randn(b, max(cfg.num_future_tokens, 1), p.feat_dim, generator=g)[:, :cfg.num_future_tokens]
        tau = torch.rand(b, generator=g)
        return p.net(state, a, tau, ctx, valid, o if cfg.world_model else None, tau if cfg.world_model else None)


@pytest.mark.parametrize("strategy", list(GRID))
def test_parameter_sharing_tells_dit_from_mmdit(strategy):
    """DiT rows: one set of block / adaLN / timestep weights serves both modalities, so a change to
    the last block's MLP moves both velocities. MMDiT rows: per-stream weights, so a change to the
    action stream's MLP in the last joint block moves the action velocity only (the vision stream
    reads the action tokens' keys/values, computed before that MLP)."""
    p = _policy(strategy=strategy)
    net, (network, _, world) = p.net, GRID[strategy]
    _randomise(net)
    batch = _batch(p.config)
    v_a, v_o = _velocities(p, batch)
    if network == "dit":
        assert net.time_embed(0) is net.time_embed(1)
        shared_a, shared_o = net.ada_layers(0)[:-1], net.ada_layers(1)[:-1]
        assert len(shared_a) == 3 and all(x is y for x, y in zip(shared_a, shared_o))
        assert not hasattr(net, "mmdit") and not hasattr(net, "t_embed_o")
        mlp = net.blocks[-1].mlp
    else:
        assert all(len(b.qkv) == (2 if world else 1) for b in net.mmdit)
        if world:
            assert net.time_embed(0) is not net.time_embed(1)
            assert not {id(m) for m in net.ada_layers(0)} & {id(m) for m in net.ada_layers(1)}
            assert net.mmdit[0].qkv[0].weight.data_ptr() != net.mmdit[0].qkv[1].weight.data_ptr()
        mlp = net.mmdit[-1].mlp[0]
    with torch.no_grad():
        mlp.fc1.weight.add_(1.0)
    net._mod_cache.clear()
    w_a, w_o = _velocities(p, batch)
    assert not torch.allclose(v_a, w_a)
    if world:
        assert (not torch.allclose(v_o, w_o)) == (network == "dit")
    # the DiT rows hold one block stack (n_mmdit + n_stream_blocks deep) instead of per-stream copies
    if world:
        size = sum(q.numel() for q in net.parameters())
        mm_size = sum(q.numel() for q in _policy(strategy="mmdit_decoupled").net.parameters())
        assert (size < 0.8 * mm_size) == (network == "dit"), (size, mm_size)


@pytest.mark.parametrize("strategy", ["dit_decoupled", "dit_joint"])
def test_shared_dit_modulates_each_token_by_its_modality_timestep(strategy):
    """In the shared DiT, action tokens (state + H actions) get the adaLN modulation of tau_A and
    future-frame tokens that of tau_o, from the same (shared) timestep embedding and adaLN weights."""
    p = _policy(strategy=strategy)
    _randomise(p.net)
    net, cfg = p.net, p.config
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda _m, args, kw: seen.append(kw["mod"]), with_kwargs=True)
    batch = _batch(cfg, b=3)
    g = torch.Generator().manual_seed(0)
    tau_a, tau_o = torch.rand(3, generator=g), torch.rand(3, generator=g)
    with torch.no_grad():
        state = p._state(batch)
        ctx, valid, _ = p._condition(p._camera_frames(batch, {c: [0] for c in cfg.cameras}, 3), batch["task"])
        net(state, torch.randn(3, cfg.horizon, cfg.action_dim), tau_a, ctx, valid,
            torch.randn(3, cfg.num_future_tokens, p.feat_dim), tau_o)
        ada = net.blocks[0].ada
        want_a, want_o = ada(net.t_embed(tau_a)), ada(net.t_embed(tau_o))  # 6 x (3, W) each
    n_a = 1 + cfg.horizon
    for got, wa, wo in zip(seen[0], want_a, want_o):  # got: (3, 1+H+N_v, W)
        assert got.shape == (3, n_a + cfg.num_future_tokens, cfg.width)
        torch.testing.assert_close(got[:, :n_a], wa[:, None].expand(-1, n_a, -1))
        torch.testing.assert_close(got[:, n_a:], wo[:, None].expand(-1, cfg.num_future_tokens, -1))


@pytest.mark.parametrize("strategy", list(GRID))
def test_every_row_trains_and_samples_with_its_world_model_loss(strategy):
    network, noise, world = GRID[strategy]
    p = _policy(strategy=strategy)
    batch = _batch(p.config)
    loss, m = p.compute_loss(batch)
    loss.backward()
    assert ("loss_world" in m) == world
    if world:  # the world-model loss trains the vision decoder
        assert m["loss"] == pytest.approx(m["loss_action"] + p.config.lambda_wm * m["loss_world"], rel=1e-5)
        assert torch.count_nonzero(p.net.vision_out.head[-1].weight.grad) > 0
        assert p.config.delta_indices()["observation.images.left"] == [0, p.config.future_offset]
    else:
        assert m["loss"] == m["loss_action"] and not hasattr(p.net, "vision_out") and p.config.num_future_tokens == 0
        assert p.config.delta_indices()["observation.images.left"] == [0]
        batch["action_is_pad"][:] = True
        with pytest.raises(ValueError, match="no world-model stream"):
            p.compute_loss(batch)
    calls = _count(p.net)
    n_o = 2 * p.config.num_action_steps if noise == "decoupled" else None
    chunk = p.sample_actions(fake_observation(_spec(p.config), batch_size=1), num_vision_steps=n_o, seed=0)
    assert chunk.actions.shape == (1, p.config.horizon, p.config.action_dim)
    assert calls[0] == (n_o or p.config.num_action_steps) and (chunk.extras["future"] is None) != world
    if noise == "joint":
        with pytest.raises(ValueError, match="must equal N_A"):
            p.sample_actions(fake_observation(_spec(p.config), batch_size=1), num_vision_steps=8)


@pytest.mark.parametrize("strategy,adaln", [(s, False) for s in GRID] + [("mmdit_decoupled", True),
                                                                          ("dit_joint", True)])
def test_sampler_plan_matches_the_plain_forward(strategy, adaln):
    """The sampler's precomputed plan (cached keys/values and modulations) gives the chunk that
    plain forward calls give on the same schedule, for every row of the grid (and with the
    instruction in the adaLN conditioning, where the modulations are per sample)."""
    p = _policy(strategy=strategy, instruction_adaln=adaln)
    _randomise(p.net, seed=1)
    cfg, obs = p.config, fake_observation(_spec(p.config), batch_size=2)
    n_a, n_o = 2, (4 if GRID[strategy][1] == "decoupled" else 2)
    fast = p.sample_actions(obs, num_action_steps=n_a, num_vision_steps=n_o, seed=4)
    data = obs.to_flat()
    with torch.no_grad():
        state = p._state(data)
        ctx, valid, y = p._condition(p._camera_frames(data, {c: [0] for c in cfg.cameras}, 2), data["task"])
        assert (y is not None) == adaln
        g = torch.Generator().manual_seed(4)
        a = torch.randn(2, cfg.horizon, cfg.action_dim, generator=g)
        o = torch.randn(2, cfg.num_future_tokens, p.feat_dim, generator=g) if cfg.world_model else None
        for st in p.strategy.schedule(n_a, n_o):
            tau_o = torch.full((2,), st.tau_o) if o is not None else None
            v_a, v_o = p.net(state, a, torch.full((2,), st.tau_a), ctx, valid, o, tau_o, y=y)
            o = o + st.dt_o * v_o if o is not None else None
            a = a + st.dt_a * v_a if st.advance else a
    assert torch.allclose(fast.actions, p.normalizer.unnormalize("action", a), atol=1e-4)


def test_instruction_adaln_conditions_every_block_on_the_instruction():
    """With ``instruction_adaln`` the pooled instruction reaches the denoiser through the adaLN
    vectors: cutting the instruction out of the conditioning tokens leaves the chunk depending on it,
    and training moves the instruction MLP."""
    p = _policy(instruction_adaln=True)
    _randomise(p.net, seed=1)
    obs = fake_observation(_spec(p.config), batch_size=1).to_flat()
    # the instruction tokens are masked out of the conditioning, so only the adaLN path carries the text
    real_condition = p.condition.forward

    def vision_only(grids, text, text_valid):
        return real_condition(grids, text, torch.zeros_like(text_valid))

    p.condition.forward = vision_only
    chunks = [p.sample_actions({**obs, "task": [t]}, seed=0).actions for t in ("open the door", "turn on the stove")]
    assert not torch.allclose(chunks[0], chunks[1], atol=1e-4)
    p.condition.forward = real_condition
    q = _policy(instruction_adaln=True)
    before = [t.detach().clone() for t in q.net.instr_embed.parameters()]
    _train(q, _batch(q.config), steps=4)  # the zero-initialised adaLN layers pass no gradient to it at first
    assert any(not torch.equal(a, b) for a, b in zip(before, q.net.instr_embed.parameters()))
    assert _policy().net.instr_embed is None  # off unless asked for (the paper's DUST)


# ---------------------------------------------------------------- checkpoints


def test_save_load_round_trip_gives_identical_chunks(tmp_path):
    p = _policy()
    _train(p, _batch(p.config), steps=5)
    p.save_pretrained(tmp_path / "ck")
    obs = fake_observation(_spec(p.config), batch_size=2)
    for loader in (DUSTPolicy.from_pretrained, Policy.from_pretrained):
        q = loader(tmp_path / "ck")
        assert type(q) is DUSTPolicy and q.config == p.config
        assert torch.equal(q.sample_actions(obs, seed=3).actions, p.sample_actions(obs, seed=3).actions)
        assert torch.equal(q.normalizer.affine["action"].scale, p.normalizer.affine["action"].scale)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["type"] == "dust" and meta["vlastack"]["frozen_modules"].keys() == {"vision", "text"}


def test_checkpoint_from_another_policy_or_config_is_refused(tmp_path):
    p = _policy()
    p.save_pretrained(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["width"] = 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatches"):
        DUSTPolicy.from_pretrained(tmp_path / "ck")
    meta["type"] = "dita"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a 'dita' policy checkpoint, expected a 'dust' one"):
        DUSTPolicy.from_pretrained(tmp_path / "ck")


def test_unfitted_policy_refuses_to_run():
    cfg = DUSTConfig.preset("tiny")
    p = make_policy("dust", cfg)
    with pytest.raises(RuntimeError, match="no statistics"):
        p.compute_loss(_batch(cfg))


# ---------------------------------------------------------------- bad input


def test_bad_observations_raise_clear_errors():
    p = _policy()
    cfg = p.config
    good = fake_observation(_spec(cfg), batch_size=2)

    obs = Observation(dict(good.images), good.state, good.task)
    del obs.images["wrist"]
    with pytest.raises(ContractError, match="missing camera 'wrist'.*\\['left', 'wrist'\\]"):
        p.sample_actions(obs)
    with pytest.raises(ContractError, match="missing the instruction"):
        p.sample_actions({**good.to_flat(), "task": None})
    with pytest.raises(ContractError, match="expected 2 instructions"):
        p.sample_actions(Observation(good.images, good.state, ["open the drawer"]))
    small = {c: v[:, :, :16, :16] for c, v in good.images.items()}
    with pytest.raises(ContractError, match="observation.images.left: expected image size 32x32"):
        p.sample_actions(Observation(small, good.state, good.task))
    floats = {c: v.astype("float32") / 255 for c, v in good.images.items()}
    with pytest.raises(ContractError, match="observation.images.left: expected uint8"):
        p.sample_actions(Observation(floats, good.state, good.task))
    with pytest.raises(ContractError, match="observation.state: expected \\(B, 1, 4\\)"):
        p.sample_actions(Observation(good.images, good.state[..., :3], good.task))
    with pytest.raises(TypeError, match="Observation or a flat dict"):
        p.sample_actions([1, 2])


def test_bad_batches_raise_clear_errors():
    p = _policy()
    cfg = p.config
    batch = _batch(cfg)
    with pytest.raises(ContractError, match="action: expected \\(B=4, horizon=4, action_dim=3\\)"):
        p.compute_loss({**batch, "action": batch["action"][..., :2]})
    no_future = {k: (v[:, :1] if k.startswith("observation.images.") else v) for k, v in batch.items()}
    with pytest.raises(ContractError, match="future frame"):
        p.compute_loss(no_future)
    wrong_feat = {k: v for k, v in batch.items() if k != image_key("left")}
    wrong_feat[feature_key(p.vision.name, image_key("left"))] = torch.zeros(4, 2, 8, 2, 2)
    with pytest.raises(ContractError, match="expected cached features"):
        p.compute_loss(wrong_feat)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="strategy 'nope'"):
        DUSTConfig.preset("tiny", strategy="nope")
    with pytest.raises(ValueError, match="multiple"):
        DUSTConfig.preset("tiny", num_action_steps=4, num_vision_steps=6)
    with pytest.raises(ValueError, match="future_cameras"):
        DUSTConfig.preset("tiny", future_cameras=["top"])
    with pytest.raises(ValueError, match="divisible by heads"):
        DUSTConfig.preset("tiny", heads=3)
    with pytest.raises(ValueError, match="future_grid \\(3, 3\\) must divide"):
        _policy(future_grid=[3, 3])
    with pytest.raises(ValueError, match="frozen"):
        _policy(vision_encoder_kwargs={"out_dim": 16, "stride": 16, "hidden": 8, "frozen": False})
    # a trainable encoder is fine without the world-model stream
    assert _policy(strategy="no_wm", vision_encoder_kwargs={"frozen": False}).vision.frozen is False


def test_config_round_trip_presets_and_windows():
    for name in DUSTConfig.PRESETS:
        cfg = DUSTConfig.preset(name)
        assert DUSTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    paper = DUSTConfig.preset("paper_sized")
    assert (paper.n_mmdit + paper.n_stream_blocks, paper.width, paper.heads, paper.horizon,
            paper.num_future_tokens) == (16, 1536, 32, 16, 64)
    tiny = DUSTConfig.preset("tiny")
    d = tiny.delta_indices()
    assert d["observation.images.left"] == [0, 4] and d["observation.state"] == [0] and d["action"] == [0, 1, 2, 3]
    assert DUSTConfig.preset("tiny", strategy="no_wm").delta_indices()["observation.images.left"] == [0]


def test_future_cameras_by_name_or_count():
    """future_cameras names them (and wins); num_future_cameras takes the first N of the run's cameras, so a
    preset's choice follows whatever cameras the dataset has; out-of-range counts are refused."""
    cfg = DUSTConfig.preset("tiny", num_future_cameras=1)
    assert cfg.future_camera_list == ("left",) and cfg.num_future_tokens == 4
    assert DUSTConfig.preset("tiny", cameras=["wrist", "left"], num_future_cameras=1).future_camera_list == ("wrist",)
    assert DUSTConfig.preset("tiny", num_future_cameras=1, future_cameras=["wrist"]).future_camera_list == ("wrist",)
    assert DUSTConfig.preset("tiny").future_camera_list == ("left", "wrist")
    for bad in (0, 3):
        with pytest.raises(ValueError, match="num_future_cameras must be 1..2"):
            DUSTConfig.preset("tiny", num_future_cameras=bad)
    p = _policy(num_future_cameras=1)  # trains and samples with the shorter vision stream
    loss, m = p.compute_loss(_batch(p.config))
    assert torch.isfinite(loss) and m["loss_world"] > 0
    chunk = p.sample_actions(fake_observation(_spec(p.config), batch_size=2), seed=0)
    assert chunk.extras["future"].shape == (2, 4, p.feat_dim)


def test_small_preset_size_and_chunk():
    """The CPU-benchmark preset: frozen EfficientNet-lite0 + MiniLM, 10-40M trainable parameters."""
    p = _policy("small")
    assert 10e6 <= p.num_parameters() <= 40e6, p.num_parameters()
    # the world model predicts the first camera's future frame: 1 camera x 2x2 pooled tokens
    assert p.vision.frozen and p.text.frozen and p.config.num_future_tokens == 4
    assert p.config.future_camera_list == ("left",) and p.config.delta_indices()["observation.images.left"] == [0, 16]
    assert p.config.delta_indices()["observation.images.wrist"] == [0]
    chunk = p.sample_actions(fake_observation(_spec(p.config), batch_size=1), seed=0)
    assert chunk.actions.shape == (1, 16, 7) and torch.isfinite(chunk.actions).all()


@pytest.mark.parametrize("strategy", ["mmdit_decoupled", "no_wm"])
def test_training_loss_and_gradients_do_not_depend_on_the_cross_attention_path(strategy, monkeypatch):
    """Training takes the folded (absorbed) cross-attention, sampling the projected keys/values:
    the loss and every gradient equal those of the plain path to float rounding."""
    from vlastack.policies import layers

    calls = []
    absorbed = layers.CrossAttention.absorbed
    monkeypatch.setattr(layers.CrossAttention, "absorbed", lambda self, *a: calls.append(1) or absorbed(self, *a))
    p = _policy(strategy=strategy)
    _randomise(p.net)
    batch = _batch(p.config)

    def loss_and_grads():
        p.zero_grad(set_to_none=True)
        loss, _ = _loss_at(p, batch)
        loss.backward()
        return loss.detach(), {n: q.grad.clone() for n, q in p.named_parameters() if q.grad is not None}

    folded, g_folded = loss_and_grads()
    assert calls, "the tiny preset's training step should take the absorbed path"
    monkeypatch.setattr(layers.CrossAttention, "absorbs", lambda self, n_q, n_c: False)
    plain, g_plain = loss_and_grads()
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    assert g_folded.keys() == g_plain.keys()
    for n in g_plain:
        if n.endswith("kv.bias"):  # the key half has no gradient in theory; compare the value half
            d = g_plain[n].shape[0] // 2
            torch.testing.assert_close(g_folded[n][d:], g_plain[n][d:], atol=1e-4, rtol=1e-3)
            continue
        torch.testing.assert_close(g_folded[n], g_plain[n], atol=1e-4, rtol=1e-3, msg=n)
