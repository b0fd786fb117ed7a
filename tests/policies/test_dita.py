"""Dita: shapes, training behaviour, the causal mask, the prefix cache, checkpoints, fine-tuning, bad input."""
import json

import pytest
import torch

from vlastack.policies.base import Policy, feature_key, make_policy
from vlastack.policies.dita import DitaConfig, DitaPolicy, QFormer
from vlastack.types import ContractError, DatasetSpec, Observation, fake_batch, fake_observation, image_key


def _spec(cfg, action_dim=None):
    return DatasetSpec.robot(cameras=cfg.cameras, image_size=cfg.image_size, state_dim=max(cfg.state_dim, 1),
                             action_dim=action_dim or cfg.action_dim)


def _stats(cfg, action_dim=None):
    d = action_dim or cfg.action_dim
    return {"observation.state": {"mean": [0.0] * max(cfg.state_dim, 1), "std": [1.0] * max(cfg.state_dim, 1)},
            "action": {"q01": [-2.0] * d, "q99": [2.0] * d}}


def _policy(preset="tiny", seed=0, **over):
    torch.manual_seed(seed)
    cfg = DitaConfig.preset(preset, **over)
    return make_policy("dita", cfg, stats=_stats(cfg))


def _batch(cfg, b=4, seed=0, action_dim=None):
    return fake_batch(_spec(cfg, action_dim), batch_size=b, n_obs=cfg.n_obs_steps, horizon=cfg.horizon, seed=seed)


def _obs(cfg, b=2, seed=0):
    return fake_observation(_spec(cfg), batch_size=b, n_obs=cfg.n_obs_steps, seed=seed)


def _loss_at(policy, batch, seed=123):
    torch.manual_seed(seed)
    return policy.compute_loss(batch)


def _train(policy, batch, steps, lr=3e-3):
    opt = torch.optim.Adam(policy.param_groups(lr=lr))
    for _ in range(steps):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


# ---------------------------------------------------------------- shapes and training


def test_shapes_and_finite_loss():
    p = _policy()
    cfg = p.config
    loss, m = p.compute_loss(_batch(cfg))
    assert loss.dim() == 0 and torch.isfinite(loss) and set(m) == {"loss", "valid_fraction"}
    chunk = p.sample_actions(_obs(cfg, b=3), seed=0)
    assert chunk.actions.shape == (3, cfg.horizon, cfg.action_dim) and torch.isfinite(chunk.actions).all()
    assert chunk.extras["num_network_calls"] == cfg.num_inference_steps and chunk.extras["past_actions"].shape[1] == 0
    # the sequence: L text tokens, n*K*Q image tokens, 1 state token
    prefix, valid = p.encode_prefix(_obs(cfg, b=3).to_flat())
    n_text = p.text(_obs(cfg, b=3).task)[0].shape[1]
    assert prefix.shape == (3, n_text + cfg.num_image_tokens + 1, cfg.width) and valid.shape == prefix.shape[:2]
    # a chunk with one past action: the window starts at t - 1, the executable chunk is horizon - 1 long
    q = _policy(n_past_actions=1)
    assert q.config.delta_indices()["action"] == [-1, 0, 1, 2]
    chunk = q.sample_actions(_obs(q.config), seed=0)
    assert chunk.actions.shape == (2, 3, 3) and chunk.extras["past_actions"].shape == (2, 1, 3)


def test_overfits_one_batch():
    """One batch with its noise and timesteps held fixed (same seed before every step): loss down >= 90%."""
    p = _policy()
    batch = _batch(p.config, b=2)
    before, _ = _loss_at(p, batch)
    opt = torch.optim.Adam(p.param_groups(lr=3e-3))
    for _ in range(60):
        loss, _ = _loss_at(p, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, _ = _loss_at(p, batch)
    assert after.item() <= 0.1 * before.item(), (before.item(), after.item())


def test_padded_steps_do_not_affect_the_loss():
    p = _policy()
    batch = _batch(p.config)
    batch["action_is_pad"][0, 2:] = True
    _, m0 = _loss_at(p, batch)
    batch["action"][0, 2:] = float("nan")
    _, m1 = _loss_at(p, batch)
    assert m0["loss"] == m1["loss"] and m0["valid_fraction"] == pytest.approx(14 / 16)
    batch["action"][1, 0] += 1.0
    assert _loss_at(p, batch)[1]["loss"] != m0["loss"]


def test_cached_features_match_images():
    p = _policy()
    cfg = p.config
    batch = _batch(cfg)
    cached = {k: v for k, v in batch.items() if not k.startswith("observation.images.")}
    with torch.no_grad():
        for cam in cfg.cameras:
            imgs = batch[image_key(cam)]  # (B, n, H, W, 3)
            grid, _ = p.vision(imgs.flatten(0, 1).permute(0, 3, 1, 2).float() / 255)
            cached[feature_key(p.vision.name, image_key(cam))] = grid.view(*imgs.shape[:2], *grid.shape[1:]).half()
    assert torch.allclose(_loss_at(p, batch)[0], _loss_at(p, cached)[0], rtol=1e-2)
    a_img = p.sample_actions({k: v for k, v in batch.items() if k != "action"}, seed=1).actions
    a_feat = p.sample_actions({k: v for k, v in cached.items() if k != "action"}, seed=1).actions
    assert torch.allclose(a_img, a_feat, atol=1e-2)


# ---------------------------------------------------------------- causal mask, padding, cache


def _randomized(p, seed=0, std=0.1):
    """Random values for every trainable weight (zero-initialised FiLM included), so every path matters;
    norm gains stay near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, q in p.named_parameters():
            if q.requires_grad:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                q.copy_(base + torch.randn(q.shape, generator=g) * std)
    return p


def test_causal_mask_later_action_tokens_do_not_change_earlier_outputs():
    p = _randomized(_policy())
    cfg = p.config
    with torch.no_grad():
        prefix, valid = p.encode_prefix(_obs(cfg).to_flat())
        x = torch.randn(2, cfg.horizon, cfg.action_dim)
        t = torch.tensor([5, 50])
        out = p.net(prefix, valid, x, t)  # (B, H, D_a)
        for j in range(1, cfg.horizon):
            x2 = x.clone()
            x2[:, j:] += torch.randn_like(x2[:, j:])
            out2 = p.net(prefix, valid, x2, t)
            assert torch.allclose(out2[:, :j], out[:, :j], atol=1e-6), j
            assert not torch.allclose(out2[:, j:], out[:, j:], atol=1e-4), j
        # the prefix never sees the suffix: its cache is the same for any timestep or noisy actions
        assert not torch.allclose(p.net(prefix, valid, x, t + 1), out)


def test_padded_text_is_not_attended_and_batches_do_not_interact():
    """A sample's prediction is the same alone and batched beside a longer instruction (padding is
    masked and rotary positions count valid tokens only), and padded tokens' contents do not matter."""
    p = _randomized(_policy())
    cfg = p.config
    obs = _obs(cfg, b=2).to_flat()
    obs["task"] = ["open the drawer", "pick the red apple from the counter and place it in the sink"]
    alone = {k: v[:1] for k, v in obs.items()}
    x, t = torch.randn(2, cfg.horizon, cfg.action_dim), torch.tensor([30, 60])
    with torch.no_grad():
        prefix, valid = p.encode_prefix(obs)
        prefix1, valid1 = p.encode_prefix(alone)
        assert prefix1.shape[1] < prefix.shape[1] and not valid[0].all() and valid1.all()
        both = p.net(prefix, valid, x, t)
        assert torch.allclose(p.net(prefix1, valid1, x[:1], t[:1]), both[:1], atol=1e-5)
        garbage = prefix.clone()
        garbage[~valid] = 100.0
        assert torch.allclose(p.net(garbage, valid, x, t), both, atol=1e-5)
        cache = p.net.prefix_cache(garbage, valid)
        assert torch.allclose(p.net.denoise(x, t, cache), both, atol=1e-5)


def test_prefix_cache_equals_uncached_computation():
    p = _train(_policy(), _batch(_policy().config), steps=20)
    cfg = p.config
    obs = _obs(cfg, b=3).to_flat()
    obs["task"] = ["open the drawer", "turn on the stove now please", "press the button"]
    cached = p.sample_actions(obs, seed=2)
    full = p.sample_actions(obs, seed=2, use_prefix_cache=False)
    assert cached.extras["prefix_cache"] and not full.extras["prefix_cache"]
    assert (cached.actions.abs() < 1.99).float().mean() > 0.5  # not saturated at the clip range
    assert (cached.actions - full.actions).abs().max() <= 1e-5
    p = _randomized(p, seed=3)  # every step's prediction, with weights far from init
    with torch.no_grad():
        prefix, valid = p.encode_prefix(obs)
        assert not valid.all()  # some padding in the batch
        cache = p.net.prefix_cache(prefix, valid)
        x = torch.randn(3, cfg.horizon, cfg.action_dim)
        for t in (0, 37, 99):
            tt = torch.full((3,), t)
            ref = p.net(prefix, valid, x, tt)
            assert ref.abs().mean() > 0.1 and torch.allclose(p.net.denoise(x, tt, cache), ref, atol=1e-5)


def test_prefix_cache_runs_the_prefix_once():
    p = _policy()
    cfg = p.config
    lengths: list[int] = []  # tokens each pass of the first block sees
    p.net.blocks[0].register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    obs = _obs(cfg)
    with torch.no_grad():
        n_prefix = p.encode_prefix(obs.to_flat())[0].shape[1]
    suffix = 1 + cfg.horizon  # timestep token + action tokens
    p.sample_actions(obs, seed=0)
    # the first DDIM step runs the whole sequence (and keeps the prefix's keys/values), the rest the suffix only
    assert lengths == [n_prefix + suffix] + [suffix] * (cfg.num_inference_steps - 1)
    lengths.clear()
    p.sample_actions(obs, seed=0, use_prefix_cache=False)
    assert lengths == [n_prefix + suffix] * cfg.num_inference_steps


def test_forward_with_cache_matches_the_separate_prefix_pass():
    p = _randomized(_train(_policy(), _batch(_policy().config), steps=3), seed=4)
    cfg = p.config
    obs = _obs(cfg, b=2).to_flat()
    obs["task"] = ["open the drawer", "pick the red apple from the counter and place it in the sink"]
    x, t = torch.randn(2, cfg.horizon, cfg.action_dim), torch.tensor([10, 80])
    with torch.no_grad():
        prefix, valid = p.encode_prefix(obs)
        eps, cache = p.net.forward_with_cache(prefix, valid, x, t)
        ref = p.net.prefix_cache(prefix, valid)
        assert torch.allclose(eps, p.net(prefix, valid, x, t), atol=1e-5)
        assert torch.equal(cache.valid, ref.valid) and torch.equal(cache.length, ref.length)
        for (k, v), (rk, rv) in zip(cache.kv, ref.kv):
            assert k.shape == rk.shape and torch.allclose(k, rk, atol=1e-5) and torch.allclose(v, rv, atol=1e-5)
        x2 = torch.randn_like(x)
        assert torch.allclose(p.net.denoise(x2, t, cache), p.net(prefix, valid, x2, t), atol=1e-5)


def test_seeded_chunks_are_reproducible():
    p = _train(_policy(), _batch(_policy().config), steps=3)
    obs = _obs(p.config)
    a = p.sample_actions(obs, seed=7).actions
    assert torch.equal(a, p.sample_actions(obs, seed=7).actions)
    assert not torch.equal(a, p.sample_actions(obs, seed=8).actions)


# ---------------------------------------------------------------- Q-Former, FiLM, parameter groups


def test_qformer_film_is_identity_at_init_and_conditions_on_text():
    torch.manual_seed(0)
    qf = QFormer(feat_dim=8, dim=16, heads=2, layers=2, num_queries=3, text_dim=5, grid=(2, 2))
    grids, text = torch.randn(4, 8, 2, 2), torch.randn(4, 5)
    out = qf(grids, text)
    assert out.shape == (4, 3, 16)
    assert torch.allclose(out, qf(grids, text * 3 + 1))  # zero-initialised FiLM ignores the text
    assert not torch.allclose(out, qf(grids + 1, text))  # the queries read the patches
    for blk in qf.blocks:
        torch.nn.init.normal_(blk.film.proj.weight, std=0.5)
    assert not torch.allclose(qf(grids, text), qf(grids, text * 3 + 1))
    with pytest.raises(ValueError, match="patch grid"):
        qf(torch.randn(1, 8, 3, 3), torch.randn(1, 5))


def test_param_groups_and_a_trainable_vision_backbone():
    p = _policy()
    groups = p.param_groups(lr=1e-3, weight_decay=0.05)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]  # frozen encoders are left out
    ids = [id(q) for g in groups for q in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for q in p.parameters() if q.requires_grad)
    assert any(q is p.prefix_encoder.qformer.queries for q in groups[1]["params"])
    kw = dict(DitaConfig.PRESETS["tiny"]["vision_encoder_kwargs"], frozen=False)
    q = _policy(vision_encoder_kwargs=kw, vision_lr_scale=0.1)
    groups = {g["name"]: g for g in q.param_groups(lr=1e-3, weight_decay=0.05)}
    assert groups["vision"]["lr"] == pytest.approx(1e-4) and groups["decay"]["lr"] == pytest.approx(1e-3)
    assert {id(x) for x in groups["vision"]["params"]} == {id(x) for x in q.vision.parameters()}
    loss, _ = q.compute_loss(_batch(q.config))
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in groups["vision"]["params"])
    opt = torch.optim.AdamW(q.param_groups(lr=1e-3))  # the groups feed an optimiser as they are
    opt.step()
    batch = _batch(q.config)
    batch[feature_key(q.vision.name, image_key("left"))] = torch.zeros(4, 2, 16, 2, 2)
    with pytest.raises(ContractError, match="trainable vision encoder"):
        q.compute_loss(batch)


# ---------------------------------------------------------------- checkpoints and fine-tuning


def test_save_load_round_trip_gives_identical_chunks(tmp_path):
    p = _train(_policy(), _batch(_policy().config), steps=5)
    p.save_pretrained(tmp_path / "ck")
    obs = _obs(p.config)
    for loader in (DitaPolicy.from_pretrained, Policy.from_pretrained):
        q = loader(tmp_path / "ck")
        assert type(q) is DitaPolicy and q.config == p.config
        assert torch.equal(q.sample_actions(obs, seed=3).actions, p.sample_actions(obs, seed=3).actions)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["type"] == "dita" and meta["vlastack"]["frozen_modules"].keys() == {"vision", "text"}


def test_finetune_from_checkpoint_with_a_new_action_dimension(tmp_path):
    p = _train(_policy(), _batch(_policy().config), steps=3)
    p.save_pretrained(tmp_path / "ck")
    with pytest.raises(ValueError, match="finetune_from"):
        DitaPolicy.from_pretrained(tmp_path / "ck", action_dim=5)
    with pytest.raises(ValueError, match="pass stats="):
        DitaPolicy.finetune_from(tmp_path / "ck", action_dim=5)
    ft = DitaPolicy.finetune_from(tmp_path / "ck", stats=_stats(p.config, 5), action_dim=5,
                                  num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    assert ft.config.action_dim == 5 and ft.noise.num_train_timesteps == 100
    assert ft.reinitialized == ["net.action_in.weight", "net.action_out.bias", "net.action_out.weight"]
    old, new = p.state_dict(), ft.state_dict()
    kept = [k for k in new if k not in ft.reinitialized and not k.startswith(("vision.", "text.", "normalizer."))]
    assert len(kept) > 20 and all(torch.equal(old[k], new[k]) for k in kept)
    assert new["net.t_embed.mlp.0.weight"].shape == old["net.t_embed.mlp.0.weight"].shape
    batch = _batch(ft.config, b=2, action_dim=5)
    before, _ = _loss_at(ft, batch)
    opt = torch.optim.Adam(ft.param_groups(lr=3e-3))
    for _ in range(60):
        loss, _ = _loss_at(ft, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _loss_at(ft, batch)[0].item() < 0.5 * before.item()
    assert ft.sample_actions(_obs(ft.config), seed=0).actions.shape == (2, 4, 5)
    # same action space: every weight loads, the checkpoint's statistics are kept
    same = DitaPolicy.finetune_from(tmp_path / "ck", num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    assert same.reinitialized == []
    assert torch.equal(same.normalizer.affine["action"].scale, p.normalizer.affine["action"].scale)


def test_checkpoint_from_another_policy_or_config_is_refused(tmp_path):
    p = _policy()
    p.save_pretrained(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["width"] = 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatches"):
        DitaPolicy.from_pretrained(tmp_path / "ck")
    meta["type"] = "dust"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a 'dust' policy checkpoint, expected a 'dita' one"):
        DitaPolicy.from_pretrained(tmp_path / "ck")
    with pytest.raises(ValueError, match="holds a 'dust' policy checkpoint"):
        DitaPolicy.finetune_from(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="not a policy checkpoint"):
        DitaPolicy.finetune_from(tmp_path / "nowhere")


def test_unfitted_policy_refuses_to_run():
    cfg = DitaConfig.preset("tiny")
    with pytest.raises(RuntimeError, match="no statistics"):
        make_policy("dita", cfg).compute_loss(_batch(cfg))


# ---------------------------------------------------------------- bad input


def test_bad_observations_raise_clear_errors():
    p = _policy()
    cfg = p.config
    good = _obs(cfg)
    obs = Observation(dict(good.images), good.state, good.task)
    del obs.images["wrist"]
    with pytest.raises(ContractError, match="missing camera 'wrist'.*\\['left', 'wrist'\\]"):
        p.sample_actions(obs)
    with pytest.raises(ContractError, match="missing camera 'left'"):
        p.sample_actions({"observation.state": good.state, "task": good.task})
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
    one_frame = {c: v[:, :1] for c, v in good.images.items()}
    with pytest.raises(ContractError, match="n_obs=2.*delta_indices"):
        p.sample_actions(Observation(one_frame, good.state, good.task))
    with pytest.raises(ContractError, match="observation.state: expected \\(B=2, 2, 4\\)"):
        p.sample_actions(Observation(good.images, good.state[..., :3], good.task))
    with pytest.raises(ContractError, match="missing 'observation.state'"):
        p.sample_actions({k: v for k, v in good.to_flat().items() if k != "observation.state"})
    with pytest.raises(TypeError, match="Observation or a flat dict"):
        p.sample_actions([1, 2])


def test_bad_batches_raise_clear_errors():
    p = _policy()
    batch = _batch(p.config)
    with pytest.raises(ContractError, match="action: expected \\(B=4, horizon=4, action_dim=3\\)"):
        p.compute_loss({**batch, "action": batch["action"][..., :2]})
    with pytest.raises(ContractError, match="missing 'action'"):
        p.compute_loss({k: v for k, v in batch.items() if k != "action"})
    wrong = {k: v for k, v in batch.items() if k != image_key("left")}
    wrong[feature_key(p.vision.name, image_key("left"))] = torch.zeros(4, 2, 8, 2, 2)
    with pytest.raises(ContractError, match="expected cached features \\(B=4, n_obs=2, 16, 2, 2\\)"):
        p.compute_loss(wrong)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="beta_schedule 'cosine'"):
        DitaConfig.preset("tiny", beta_schedule="cosine")
    with pytest.raises(ValueError, match="divisible by heads"):
        DitaConfig.preset("tiny", heads=3)
    with pytest.raises(ValueError, match="n_past_actions"):
        DitaConfig.preset("tiny", n_past_actions=4)
    with pytest.raises(ValueError, match="num_inference_steps 200 exceeds"):
        DitaConfig.preset("tiny", num_inference_steps=200)
    with pytest.raises(ValueError, match="action_norm 'q1'"):
        DitaConfig.preset("tiny", action_norm="q1")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        DitaConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown fields \\['depth'\\]"):
        DitaConfig.preset("tiny", depth=3)


def test_config_round_trip_presets_and_windows():
    for name in DitaConfig.PRESETS:
        cfg = DitaConfig.preset(name)
        assert DitaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    paper = DitaConfig.preset("paper_sized")
    assert (paper.layers, paper.width, paper.mlp_hidden, paper.heads, paper.num_queries, paper.qformer_layers,
            paper.n_obs_steps, paper.horizon, paper.n_past_actions, paper.num_train_timesteps,
            paper.num_inference_steps) == (12, 768, 2048, 12, 32, 4, 2, 16, 1, 1000, 10)
    assert paper.vision_encoder_kwargs == {"frozen": False} and paper.vision_lr_scale == 0.1
    d = DitaConfig.preset("tiny").delta_indices()
    assert d["observation.images.left"] == [-1, 0] and d["observation.state"] == [-1, 0] and d["action"] == [0, 1, 2, 3]
    assert "observation.state" not in paper.delta_indices() and paper.delta_indices()["action"][0] == -1
