"""Layers: position/timestep embeddings, attention against a reference, DiT/MMDiT block behaviour."""
import math

import pytest
import torch

from vlastack.policies import layers as L


def _ref_attention(q, k, v, mask=None):
    """Plain softmax attention: q (B, nh, L, hd), k/v (B, nh, S, hd), mask (B, 1, 1|L, S) bool."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


def _randomize(module, std=0.2, seed=0):
    """Give every parameter (zero-initialised gates included) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def test_sinusoidal_1d_values_and_shape():
    pos = torch.arange(5)
    emb = L.sinusoidal_1d(pos, 8)
    assert emb.shape == (5, 8)
    assert torch.allclose(emb[0, :4], torch.zeros(4)) and torch.allclose(emb[0, 4:], torch.ones(4))
    assert torch.allclose(emb[3, 0], torch.sin(torch.tensor(3.0)))  # lowest frequency index 0 is w=1
    assert len({tuple(r.tolist()) for r in emb}) == 5
    with pytest.raises(ValueError, match="even"):
        L.sinusoidal_1d(pos, 7)


def test_sinusoidal_2d_rows_and_columns():
    emb = L.sinusoidal_2d(3, 4, 16)
    assert emb.shape == (12, 16)
    grid = emb.view(3, 4, 16)
    assert torch.allclose(grid[1, 0, :8], grid[1, 3, :8])  # same row -> same row half
    assert torch.allclose(grid[0, 2, 8:], grid[2, 2, 8:])  # same column -> same column half
    assert not torch.allclose(grid[0, 0], grid[1, 1])
    with pytest.raises(ValueError, match="divisible by 4"):
        L.sinusoidal_2d(2, 2, 6)


def test_timestep_embedding_distinguishes_levels():
    emb = L.TimestepEmbedding(32)
    out = emb(torch.tensor([0.0, 0.5, 0.5, 1.0]))
    assert out.shape == (4, 32)
    assert torch.allclose(out[1], out[2]) and not torch.allclose(out[0], out[3])


def test_self_attention_matches_reference_with_key_mask():
    torch.manual_seed(0)
    attn = L.SelfAttention(16, 4)
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = attn(x, valid)
    q, k, v = (L._split_heads(t, 4) for t in attn.qkv(x).chunk(3, -1))
    ref = attn.proj(L._merge_heads(_ref_attention(q, k, v, valid[:, None, None, :])))
    assert torch.allclose(out, ref, atol=1e-5)
    x2 = x.clone()
    x2[1, 3:] += 10.0  # masked keys: changing them must not change the valid positions' outputs
    assert torch.allclose(attn(x2, valid)[1, :3], out[1, :3], atol=1e-5)


def test_self_attention_causal():
    torch.manual_seed(0)
    attn = L.SelfAttention(16, 2)
    x = torch.randn(1, 6, 16)
    x2 = x.clone()
    x2[0, 4:] += 5.0
    for valid in (None, torch.ones(1, 6, dtype=torch.bool)):
        a, b = attn(x, valid, causal=True), attn(x2, valid, causal=True)
        assert torch.allclose(a[0, :4], b[0, :4], atol=1e-5)
        assert not torch.allclose(a[0, 4:], b[0, 4:])


def test_cross_attention_cached_kv_and_mask():
    torch.manual_seed(0)
    ca = L.CrossAttention(16, 12, 4)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 7, 12)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[0, 5:] = False
    out = ca(x, ctx, valid)
    assert out.shape == (2, 3, 16)
    assert torch.allclose(out, ca(x, ca.context_kv(ctx), valid), atol=1e-6)
    ctx2 = ctx.clone()
    ctx2[0, 5:] = 100.0
    assert torch.allclose(ca(x, ctx2, valid)[0], out[0], atol=1e-5)
    q = L._split_heads(ca.q(x), 4)
    k, v = ca.context_kv(ctx)
    ref = ca.proj(L._merge_heads(_ref_attention(q, k, v, valid[:, None, None, :])))
    assert torch.allclose(out, ref, atol=1e-5)


def _plain_cross(ca, x, ctx, valid):
    """CrossAttention through projected keys and values (the path sampling takes with a cached context)."""
    return ca(x, ca.context_kv(ctx), valid)


@pytest.mark.parametrize("dim,ctx_dim,heads,n_q,n_ctx", [(16, 12, 4, 3, 40), (32, 32, 2, 5, 24)])
def test_cross_attention_absorbed_equals_plain_values_and_gradients(dim, ctx_dim, heads, n_q, n_ctx):
    """Few queries against a long raw context take the absorbed path: same outputs and gradients."""
    ca = _randomize(L.CrossAttention(dim, ctx_dim, heads))  # biases too: the key bias must cancel, the value bias not
    assert ca.absorbs(n_q, n_ctx) and not ca.absorbs(4 * n_ctx, n_ctx)
    torch.manual_seed(1)
    x = torch.randn(2, n_q, dim, requires_grad=True)
    ctx = torch.randn(2, n_ctx, ctx_dim, requires_grad=True)
    valid = torch.ones(2, n_ctx, dtype=torch.bool)
    valid[1, n_ctx // 2:] = False
    out, ref = ca(x, ctx, valid), _plain_cross(ca, x, ctx, valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ca.absorbed(x, ctx, valid), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ca(x, ctx), _plain_cross(ca, x, ctx, None), atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    wrt = [x, ctx, ca.q.weight, ca.q.bias, ca.kv.weight, ca.proj.weight, ca.proj.bias]
    got = torch.autograd.grad(out, wrt + [ca.kv.bias], g)
    want = torch.autograd.grad(ref, wrt + [ca.kv.bias], g)
    for a, b in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[-1][dim:], want[-1][dim:], atol=1e-4, rtol=1e-4)  # value bias
    assert want[-1][:dim].abs().max() < 1e-4 and got[-1][:dim].abs().max() < 1e-4  # the key bias: no gradient


def test_cross_attention_absorbs_by_multiply_adds():
    ca = L.CrossAttention(256, 256, 4)
    assert ca.absorbs(12, 62) and ca.absorbs(17, 62)  # DUST small's streams against its conditioning
    assert not ca.absorbs(64, 200) and not ca.absorbs(62, 62)


def test_dit_block_is_identity_at_init_and_conditions_on_c():
    torch.manual_seed(0)
    blk = L.DiTBlock(16, 4)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    assert torch.equal(blk(x, c), x)  # adaLN-zero gates
    _randomize(blk)
    y1, y2 = blk(x, c), blk(x, c + 1.0)
    assert y1.shape == x.shape and not torch.allclose(y1, y2)


def test_dit_block_cross_attention_uses_context():
    torch.manual_seed(0)
    blk = _randomize(L.DiTBlock(16, 4, context_dim=8))
    x, c, ctx = torch.randn(2, 5, 16), torch.randn(2, 16), torch.randn(2, 3, 8)
    y = blk(x, c, ctx)
    assert not torch.allclose(y, blk(x, c, ctx + 1.0))
    assert torch.allclose(y, blk(x, c, blk.cross.context_kv(ctx)), atol=1e-6)
    with pytest.raises(ValueError, match="context"):
        blk(x, c)


def test_fused_modulation_and_gate_match_the_formula():
    """norm_modulate (one layer_norm when the modulation is shared by the batch) and gated_add."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)
    x = torch.randn(3, 5, 16)
    for rows in (1, 3):  # shared (sampling) and per-sample (training) modulations
        shift, scale, gate = torch.randn(rows, 16), torch.randn(rows, 16), torch.randn(rows, 16)
        ref = norm(x) * (1 + scale[:, None]) + shift[:, None]
        assert torch.allclose(L.norm_modulate(norm, x, shift, scale), ref, atol=1e-5)
        assert torch.allclose(L.gated_add(x, gate, ref), x + gate[:, None] * ref, atol=1e-6)
    # the shared path keeps gradients for the modulation (batch-1 training)
    shift, scale = torch.randn(1, 16, requires_grad=True), torch.randn(1, 16, requires_grad=True)
    L.norm_modulate(norm, x, shift, scale).square().sum().backward()
    assert shift.grad is not None and scale.grad is not None and scale.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_linear_matches_linear_and_follows_weight_changes(dtype):
    import copy
    import pickle
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).to(dtype)
    ref = copy.deepcopy(m)
    n = L.prepack_linears(m)
    if not torch.backends.mkldnn.is_available():
        assert n == 0
        return
    assert n == 2 and isinstance(m[0], L.PrepackedLinear) and isinstance(m[0], torch.nn.Linear)
    assert list(m.state_dict()) == list(ref.state_dict())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    x = torch.randn(3, 5, 32, dtype=dtype)
    with torch.inference_mode():
        assert torch.allclose(m(x).float(), ref(x).float(), atol=tol)
        assert m[0].__dict__["_pack"].packed is not None  # the packed path ran
        assert torch.allclose(m(x[:, 1:]).float(), ref(x[:, 1:]).float(), atol=tol)  # non-contiguous input
    with torch.no_grad():  # in-place change (new version), then .data swaps through .to()
        m[0].weight.mul_(-2.0), ref[0].weight.mul_(-2.0)
        assert torch.allclose(m(x).float(), ref(x).float(), atol=tol)
        m.to(torch.float64).to(dtype), ref.to(torch.float64).to(dtype)
        m[2].weight.add_(1.0), ref[2].weight.add_(1.0)
        assert torch.allclose(m(x).float(), ref(x).float(), atol=tol)
    # training takes the plain path and gets gradients; copies and pickles repack on first use
    m(x).float().sum().backward()
    assert m[0].weight.grad is not None and m[0].weight.grad.abs().sum() > 0
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with torch.no_grad():
            assert torch.allclose(other(x).float(), ref(x).float(), atol=tol)


def test_mmdit_single_stream_equals_dit_block():
    torch.manual_seed(0)
    mm = _randomize(L.MMDiTBlock(16, 4, n_streams=1))
    dit = L.DiTBlock(16, 4)
    with torch.no_grad():
        dit.attn.qkv.load_state_dict(mm.qkv[0].state_dict())
        dit.attn.proj.load_state_dict(mm.proj[0].state_dict())
        dit.mlp.load_state_dict(mm.mlp[0].state_dict())
        dit.ada.load_state_dict(mm.ada[0].state_dict())
    x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    assert torch.allclose(mm([x], [c])[0], dit(x, c), atol=1e-5)


def test_mmdit_joint_attention_and_skipping():
    torch.manual_seed(0)
    mm = _randomize(L.MMDiTBlock(16, 4, n_streams=2, context_dim=8))
    a, v = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    ca, cv, ctx = torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 3, 8)
    out_a, out_v = mm([a, v], [ca, cv], [ctx, ctx])
    assert out_a.shape == a.shape and out_v.shape == v.shape
    # joint attention: the vision stream's output depends on the action tokens
    _, out_v2 = mm([a + torch.randn_like(a), v], [ca, cv], [ctx, ctx])
    assert not torch.allclose(out_v, out_v2)
    # per-stream conditioning: the action stream follows its own c
    out_a3, _ = mm([a, v], [ca + 1.0, cv], [ctx, ctx])
    assert not torch.allclose(out_a, out_a3)
    # skipping a stream's outputs leaves the other stream's result unchanged
    skip_a, keep_v = mm([a, v], [ca, cv], [ctx, ctx], need=[False, True])
    assert skip_a is None and torch.allclose(keep_v, out_v, atol=1e-5)
    with pytest.raises(ValueError, match="2 streams"):
        mm([a], [ca])


def test_final_layer_zero_init_and_mlp_stack():
    fl = L.FinalLayer(16, 3)
    assert torch.equal(fl(torch.randn(2, 4, 16), torch.randn(2, 16)), torch.zeros(2, 4, 3))
    head = L.mlp_stack(16, 32, 5, layers=2)
    fl2 = L.FinalLayer(16, 5, head=head)
    assert fl2(torch.randn(1, 2, 16), torch.randn(1, 16)).shape == (1, 2, 5)
    enc = L.mlp_stack(10, 20, 30, layers=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in enc) == 3
    assert sum(isinstance(m, torch.nn.SiLU) for m in enc) == 2
    with pytest.raises(ValueError):
        L.mlp_stack(1, 1, 1, layers=0)


def test_blocks_backpropagate():
    blk = L.MMDiTBlock(16, 4, n_streams=2, context_dim=8)
    xs = [torch.randn(2, 3, 16, requires_grad=True), torch.randn(2, 2, 16, requires_grad=True)]
    cs = [torch.randn(2, 16), torch.randn(2, 16)]
    out = blk(xs, cs, [torch.randn(2, 4, 8)] * 2)
    (out[0].sum() + out[1].sum()).backward()
    assert blk.ada[0].linear.weight.grad is not None and blk.ada[0].linear.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- LLaMA-style causal blocks


def test_swiglu_matches_formula():
    torch.manual_seed(0)
    m = L.SwiGLU(8, 12)
    x = torch.randn(2, 3, 8)
    w1, w3 = m.w13.weight[:12], m.w13.weight[12:]
    ref = (torch.nn.functional.silu(x @ w1.T) * (x @ w3.T)) @ m.w2.weight.T
    assert torch.allclose(m(x), ref, atol=1e-6) and m.w13.bias is None


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    rope = L.RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        cq, sq = rope(torch.tensor([m]))
        ck, sk = rope(torch.tensor([n]))
        return (L.apply_rotary(q, cq, sq) * L.apply_rotary(k, ck, sk)).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    c, s = rope(torch.arange(5).repeat(2, 1))
    assert c.shape == (2, 1, 5, 8)
    assert torch.allclose(L.apply_rotary(q.expand(2, 1, 5, 8), c, s).norm(dim=-1), q.norm().expand(2, 1, 5), atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        L.RotaryEmbedding(7)


def test_causal_mask_full_and_with_prefix():
    valid = torch.tensor([[True, False, True, True, True]])
    full = L.causal_mask(valid, 5)[0, 0]
    assert full.shape == (5, 5) and torch.equal(full, torch.ones(5, 5, dtype=torch.bool).tril() & valid)
    last2 = L.causal_mask(valid, 2)[0, 0]
    assert torch.equal(last2, full[3:])
    with pytest.raises(ValueError, match="q_len"):
        L.causal_mask(valid, 6)


def test_llama_blocks_prefix_cache_equals_full_pass():
    """Two blocks over [prefix; suffix] in one causal pass equal the prefix's cached keys/values
    plus a suffix-only pass, and later tokens never change earlier outputs."""
    torch.manual_seed(0)
    blocks = [_randomize(L.LlamaBlock(16, 4, 24), std=0.3, seed=i) for i in range(2)]
    rope = L.RotaryEmbedding(4)
    b, p, s = 2, 5, 3
    x = torch.randn(b, p + s, 16)
    valid = torch.ones(b, p + s, dtype=torch.bool)
    valid[1, 2] = False  # a padded prefix token
    pos = (valid.long().cumsum(1) - 1).clamp_min(0)  # (B, P+S)
    h, rope_full = x, rope(pos)
    for blk in blocks:
        h, _ = blk(h, rope_full, L.causal_mask(valid, p + s))
    # cached: prefix pass collecting keys/values, then the suffix alone
    hp, cache, rope_p = x[:, :p], [], rope(pos[:, :p])
    for i, blk in enumerate(blocks):
        if i == len(blocks) - 1:
            cache.append(blk.kv(hp, rope_p))
        else:
            hp, kv = blk(hp, rope_p, L.causal_mask(valid[:, :p], p))
            cache.append(kv)
    hs, rope_s = x[:, p:], rope(pos[:, p:])
    for blk, kv in zip(blocks, cache):
        hs, _ = blk(hs, rope_s, L.causal_mask(valid, s), past=kv)
    assert torch.allclose(hs, h[:, p:], atol=1e-5)
    # causality and key masking
    x2 = x.clone()
    x2[:, p + 1:] += 3.0
    x2[1, 2] += 3.0  # the padded token
    h2 = x2
    for blk in blocks:
        h2, _ = blk(h2, rope_full, L.causal_mask(valid, p + s))
    keep = [0, 1, 3, 4, 5]  # everything before the changed suffix tokens, minus the padded one
    assert torch.allclose(h2[1, keep], h[1, keep], atol=1e-5) and torch.allclose(h2[0, :p + 1], h[0, :p + 1], atol=1e-5)
    assert not torch.allclose(h2[:, -1], h[:, -1])
