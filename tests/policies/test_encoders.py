"""Encoders: shapes, freezing, pretrained weights really loaded, HF round trips, text masks and caching."""
import numpy as np
import pytest
import torch
from torch import nn

from vlastack.policies.encoders import (EfficientNetLite0Encoder, HFTextEncoder, StateEncoder, TextEncoder,
                                        VisionEncoder, make_text_encoder, make_vision_encoder, minilm_path)
from vlastack.policies.encoders.efficientnet import LAYERS, lite0_weights_path

D_HF = 32


def _images(n=2, h=128, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)  # (N, 3, H, W) in [0, 1]


def _trainable(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def lite0():
    return make_vision_encoder("efficientnet_lite0")


@pytest.fixture(scope="module")
def minilm():
    return make_text_encoder("minilm")


# ---------------------------------------------------------------- vision: shapes and freezing

VISION = [("efficientnet_lite0", {}), ("resnet18_gn", {}), ("resnet18_gn", {"pool": "spatial_softmax", "base_width": 16}),
          ("tiny", {}), ("tiny", {"stride": 8, "out_dim": 24})]


@pytest.mark.parametrize("name,kw", VISION)
@pytest.mark.parametrize("hw", [(128, 128), (96, 64), (84, 84)])
def test_vision_shapes(name, kw, hw):
    enc = make_vision_encoder(name, **kw)
    assert isinstance(enc, VisionEncoder) and isinstance(enc.name, str) and enc.name
    grid, pooled = enc(_images(3, *hw))
    h, w = enc.grid_size(hw)
    assert grid.shape == (3, enc.out_dim, h, w)
    assert pooled.shape == (3, enc.out_dim)
    assert grid.dtype == pooled.dtype == torch.float32
    assert torch.isfinite(grid).all() and torch.isfinite(pooled).all()
    assert enc.num_tokens(hw) == h * w


def test_grid_sizes_at_128():
    assert make_vision_encoder("efficientnet_lite0").grid_size((128, 128)) == (4, 4)
    assert make_vision_encoder("resnet18_gn").grid_size((128, 128)) == (4, 4)
    assert make_vision_encoder("tiny").grid_size((128, 128)) == (8, 8)
    assert make_vision_encoder("tiny", stride=4).grid_size((30, 18)) == (8, 5)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_efficientnet_layers(layer):
    enc = EfficientNetLite0Encoder(layer=layer)
    _, channels, n_down, _ = LAYERS[layer]
    grid, pooled = enc(_images(1, 128, 96))
    assert enc.out_dim == channels
    assert grid.shape == (1, channels, 128 >> n_down, 96 >> n_down)
    assert torch.allclose(pooled, grid.mean(dim=(2, 3)))
    assert enc.name == ("efficientnet_lite0" if layer == "head" else f"efficientnet_lite0_{layer}")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tiny"])
def test_frozen_encoders_have_no_trainable_params_and_are_deterministic(name):
    enc = make_vision_encoder(name)
    assert enc.frozen and _trainable(enc) == 0
    parent = nn.Sequential(enc, nn.Identity())
    parent.train()  # a parent switching to train mode must leave the frozen encoder in eval
    assert not enc.training and all(not m.training for m in enc.modules())
    x = _images(2)
    g1, p1 = enc(x)
    g2, p2 = enc(x)
    assert torch.equal(g1, g2) and torch.equal(p1, p2)
    assert not g1.requires_grad and not p1.requires_grad
    # eval-mode BatchNorm: an image's features do not depend on the rest of its batch
    g_single, _ = enc(x[:1])
    torch.testing.assert_close(g_single, g1[:1], rtol=1e-4, atol=1e-5)
    # a fresh encoder built the same way gives the same features (same seed / same weights)
    torch.testing.assert_close(make_vision_encoder(name)(x)[0], g1)


def test_resnet18_gn_is_trainable_and_has_groupnorm():
    enc = make_vision_encoder("resnet18_gn", pool="spatial_softmax")
    assert not enc.frozen
    assert 11_000_000 < _trainable(enc) < 12_000_000  # ResNet-18 trunk (11.2M) + keypoint head
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in enc.modules())
    enc.train()
    assert enc.training
    grid, pooled = enc(_images(2, 64, 64))
    assert pooled.requires_grad
    pooled.square().mean().backward()
    assert enc.stem[0].weight.grad is not None and enc.stem[0].weight.grad.abs().sum() > 0
    kp = enc.keypoints(grid.detach())
    assert kp.shape == (2, 64) and kp.abs().max() <= 1.0


def test_resnet18_gn_seeded_init():
    a, b, c = (make_vision_encoder("resnet18_gn", base_width=8, seed=s) for s in (1, 1, 2))
    x = _images(1, 64, 64)
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.allclose(a(x)[0], c(x)[0])


# ---------------------------------------------------------------- EfficientNet: truly pretrained

def test_efficientnet_weights_are_the_shipped_imagenet_weights(lite0):
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(lite0.conv_stem.weight, sd["_conv_stem.weight"])
    assert torch.equal(lite0.bn1.running_var, sd["_bn1.running_var"])
    rand = EfficientNetLite0Encoder(pretrained=False)
    assert rand.name != lite0.name and rand.fingerprint() != lite0.fingerprint()
    x = _images(2)
    assert not torch.allclose(lite0(x)[1], rand(x)[1], atol=1e-2)


def test_efficientnet_classifies_a_real_photo(lite0):
    """Grace Hopper (matplotlib's sample photo) is ImageNet 'military uniform' (652) through the shipped
    classifier applied to the encoder's pooled vector: weights and [-1, 1] input handling are right."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255  # (1, 3, 224, 224)
    _, pooled = lite0(x)  # (1, 1280)
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    probs = (pooled @ sd["_fc.weight"].T + sd["_fc.bias"]).softmax(-1)[0]  # (1000,)
    assert int(probs.argmax()) == 652 and probs[652] > 0.2
    # the random-init network does not
    rand = EfficientNetLite0Encoder(pretrained=False)
    probs_r = (rand(x)[1] @ sd["_fc.weight"].T + sd["_fc.bias"]).softmax(-1)[0]
    assert probs_r[652] < 0.05


# ---------------------------------------------------------------- Hugging Face vision towers

def _save_vision(kind, path):
    import transformers as tf

    common = dict(hidden_size=D_HF, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    if kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**common))
    elif kind == "dinov2_registers":
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(num_register_tokens=4, **common))
    elif kind == "siglip":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**common))
    elif kind == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**common))
    else:
        raise AssertionError(kind)
    model.save_pretrained(path)
    return model.eval()


@pytest.mark.parametrize("kind,prefix", [("dinov2", 1), ("dinov2_registers", 5), ("siglip", 0), ("clip", 1)])
def test_hf_vision_round_trip(tmp_path, kind, prefix):
    ref = _save_vision(kind, tmp_path / kind)
    enc = make_vision_encoder("hf:" + str(tmp_path / kind))
    assert enc.frozen and _trainable(enc) == 0 and enc.out_dim == D_HF and enc.name == "hf_" + kind
    for hw in [(32, 32), (48, 64)]:
        x = _images(2, *hw)
        grid, pooled = enc(x)
        h, w = hw[0] // 8, hw[1] // 8
        assert enc.grid_size(hw) == (h, w)
        assert grid.shape == (2, D_HF, h, w) and pooled.shape == (2, D_HF)
        # the grid is exactly the tower's patch tokens, prefix (CLS / register) tokens dropped
        kw = {} if kind.startswith("dinov2") else {"interpolate_pos_encoding": True}
        with torch.no_grad():
            out = ref(pixel_values=(x - enc.pixel_mean) / enc.pixel_std, **kw)
        hidden = out.last_hidden_state  # (N, prefix + h*w, D)
        assert hidden.shape[1] == prefix + h * w
        torch.testing.assert_close(grid.flatten(2).transpose(1, 2), hidden[:, prefix:])
        torch.testing.assert_close(pooled, out.pooler_output)


def test_hf_vision_options(tmp_path):
    _save_vision("dinov2", tmp_path / "d")
    enc = make_vision_encoder("hf:" + str(tmp_path / "d"), image_size=32, pooling="mean", frozen=False, layer=1,
                              cache_name="dino_tiny")
    assert enc.name == "dino_tiny" and not enc.frozen and _trainable(enc) > 0
    grid, pooled = enc(_images(2, 100, 60))  # resized to 32x32 first
    assert grid.shape == (2, D_HF, 4, 4) and enc.grid_size((100, 60)) == (4, 4)
    torch.testing.assert_close(pooled, grid.mean(dim=(2, 3)))
    assert torch.allclose(enc.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


# ---------------------------------------------------------------- Hugging Face text towers

WORDS = ["open", "close", "the", "drawer", "door", "pick", "apple", "place", "it", "in", "sink", "turn", "on", "stove"]


def _save_tokenizer(path, specials):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"pad_token": "[PAD]", "unk_token": "[UNK]"}
    if "[CLS]" in specials:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    if "</s>" in specials:
        tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        kw["eos_token"] = "</s>"
    PreTrainedTokenizerFast(tokenizer_object=tk, **kw).save_pretrained(path)
    return len(vocab)


def _save_text(kind, path):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "bert":
        n = _save_tokenizer(path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
        model = tf.BertModel(tf.BertConfig(vocab_size=n, hidden_size=D_HF, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=64))
    elif kind == "clip":
        n = _save_tokenizer(path, ["[PAD]", "[UNK]", "</s>"])
        model = tf.CLIPTextModel(tf.CLIPTextConfig(vocab_size=n, hidden_size=D_HF, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                                   eos_token_id=2))
    elif kind == "t5":
        n = _save_tokenizer(path, ["[PAD]", "[UNK]", "</s>"])
        model = tf.T5EncoderModel(tf.T5Config(vocab_size=n, d_model=D_HF, d_kv=8, num_heads=4, num_layers=2, d_ff=64,
                                              pad_token_id=0, eos_token_id=2, decoder_start_token_id=0))
    else:
        raise AssertionError(kind)
    model.save_pretrained(path)
    return model.eval()


TEXTS = ["open the drawer", "pick the apple and place it in the sink", "open the drawer", "turn on the stove"]


@pytest.mark.parametrize("kind,specials", [("bert", 2), ("clip", 1), ("t5", 1)])
def test_hf_text_round_trip(tmp_path, kind, specials):
    ref = _save_text(kind, tmp_path / kind)
    enc = make_text_encoder("hf:" + str(tmp_path / kind))
    assert isinstance(enc, TextEncoder) and enc.frozen and _trainable(enc) == 0 and enc.out_dim == D_HF
    tokens, mask, pooled = enc(TEXTS)
    n_words = [len(t.split()) + specials for t in TEXTS]
    assert tokens.shape == (4, max(n_words), D_HF) and pooled.shape == (4, D_HF)
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == n_words
    assert mask[:, 0].all() and (tokens[~mask] == 0).all()
    # valid token states equal the tower's own output on the tokenizer's batch
    batch = enc.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(tokens[mask], out.last_hidden_state[batch["attention_mask"].bool()],
                               rtol=1e-4, atol=1e-5)
    if kind == "clip":  # CLIP's sentence vector is its pooler (the EOS token state)
        torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-4, atol=1e-5)
    else:
        m = batch["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(pooled, (out.last_hidden_state * m).sum(1) / m.sum(1), rtol=1e-4, atol=1e-5)


def test_hf_text_padding_does_not_change_valid_tokens(tmp_path):
    _save_text("bert", tmp_path / "b")
    enc = make_text_encoder("hf:" + str(tmp_path / "b"), cache_size=0)
    alone, mask_a, pooled_a = enc(["open the drawer"])
    batched, mask_b, pooled_b = enc(["open the drawer", "pick the apple and place it in the sink"])
    assert mask_a.shape[1] < mask_b.shape[1] and not mask_b[0, -1]
    torch.testing.assert_close(batched[0, : alone.shape[1]], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled_b[0], pooled_a[0], rtol=1e-4, atol=1e-5)


def test_hf_text_trainable_has_grads_and_no_cache(tmp_path):
    _save_text("t5", tmp_path / "t")
    enc = make_text_encoder("hf:" + str(tmp_path / "t"), frozen=False)
    assert _trainable(enc) > 0 and enc.cache.max_size == 0
    _, _, pooled = enc(["open the door"])
    pooled.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


# ---------------------------------------------------------------- MiniLM

def test_minilm_shapes_frozen_and_normalised(minilm):
    assert minilm.name == "minilm" and minilm.out_dim == 384
    assert minilm.frozen and _trainable(minilm) == 0 and not minilm.training
    tokens, mask, pooled = minilm(["open the drawer", "pick the apple from the counter and place it in the sink"])
    # [CLS] open the drawer [SEP] = 5 tokens; the long instruction has 14
    assert mask.sum(1).tolist() == [5, 14] and tokens.shape == (2, 14, 384) and pooled.shape == (2, 384)
    assert (tokens[0, 5:] == 0).all() and not mask[0, 5:].any()
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))


def test_minilm_matches_sentence_transformers_and_is_semantic(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["open the drawer", "pull the drawer open", "turn on the stove"]
    ref = st.SentenceTransformer(minilm_path(), device="cpu").encode(texts, convert_to_tensor=True)
    minilm.cache.clear()
    _, _, pooled = minilm(texts)
    torch.testing.assert_close(pooled, ref.cpu(), rtol=1e-4, atol=1e-5)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # paraphrase closer than another task


def test_minilm_cache(minilm):
    minilm.cache.clear()
    fresh = HFTextEncoder(minilm_path(), pooling="mean", normalize=True, cache_size=0)
    batch = TEXTS * 3  # 12 strings, 3 distinct
    t1, m1, p1 = minilm(batch)
    assert len(minilm.cache) == 3 and minilm.cache.misses == 3 and minilm.cache.hits == 0
    t2, m2, p2 = minilm(batch)
    assert minilm.cache.hits == 3 and minilm.cache.misses == 3
    assert torch.equal(t1, t2) and torch.equal(m1, m2) and torch.equal(p1, p2)
    t3, m3, p3 = fresh(batch)  # the uncached path gives the same result
    assert torch.equal(m1, m3)
    torch.testing.assert_close(t1, t3, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p1, p3, rtol=1e-4, atol=1e-5)


def test_text_cache_is_lru_and_truncates():
    enc = HFTextEncoder(minilm_path(), pooling="mean", normalize=True, cache_size=2, max_length=6)
    enc(["open the drawer"])
    enc(["turn on the stove"])
    enc(["open the drawer"])  # refresh: "turn on the stove" is now least recent
    enc(["close the door"])  # evicts it
    assert list(enc.cache) == ["open the drawer", "close the door"]
    tokens, mask, _ = enc(["pick the apple from the counter and place it in the sink"])
    assert tokens.shape[1] == 6 and mask.all()
    padded = HFTextEncoder(minilm_path(), pad_to="max_length", max_length=10)
    tokens, mask, _ = padded(["open the drawer"])
    assert tokens.shape == (1, 10, 384) and mask.sum() == 5


# ---------------------------------------------------------------- tiny text

def test_tiny_text():
    enc = make_text_encoder("tiny")
    assert enc.frozen and _trainable(enc) == 0
    tokens, mask, pooled = enc(["open the drawer", "turn on the big red stove", "drawer the open"])
    assert tokens.shape == (3, 7, 32) and pooled.shape == (3, 32)
    assert mask.sum(1).tolist() == [4, 7, 4]  # start token + words
    assert (tokens[~mask] == 0).all()
    assert not torch.allclose(tokens[0, :4], tokens[2, :4])  # word order matters
    again = make_text_encoder("tiny")(["open the drawer"])
    assert torch.equal(again[0][0], tokens[0, :4])
    other = make_text_encoder("tiny", seed=1)(["open the drawer"])
    assert not torch.allclose(other[0], again[0])
    assert enc.token_ids("Open THE drawer!") == enc.token_ids("open the drawer")
    long = make_text_encoder("tiny", max_length=4)(["a b c d e f g"])
    assert long[0].shape[1] == 4


# ---------------------------------------------------------------- state encoder

def test_state_encoder():
    enc = StateEncoder(9, 64)
    out = enc(torch.randn(2, 3, 9))
    assert out.shape == (2, 3, 64)
    assert enc(torch.randn(5, 9)).shape == (5, 64)
    deep = StateEncoder(9, 16, hidden=32, num_layers=3)
    assert deep(torch.randn(2, 1, 9)).shape == (2, 1, 16) and len(deep.net) == 5
    with pytest.raises(ValueError, match="last dimension 9"):
        enc(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="state_dim"):
        StateEncoder(0, 64)


# ---------------------------------------------------------------- bad input

def test_bad_input_errors(minilm):
    enc = make_vision_encoder("tiny")
    with pytest.raises(TypeError, match="uint8"):
        enc(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        enc(torch.zeros(1, 32, 32, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="unknown vision encoder 'vit'.*efficientnet_lite0"):
        make_vision_encoder("vit")
    with pytest.raises(ValueError, match="unknown text encoder 'bert'.*minilm"):
        make_text_encoder("bert")
    with pytest.raises(ValueError, match="unknown layer 'block9'"):
        make_vision_encoder("efficientnet_lite0", layer="block9")
    with pytest.raises(ValueError, match="unknown pool"):
        make_vision_encoder("resnet18_gn", pool="max")
    with pytest.raises(ValueError, match="power of two"):
        make_vision_encoder("tiny", stride=6)
    with pytest.raises(ValueError, match="could not load"):
        make_vision_encoder("hf:/nonexistent/model/dir")
    with pytest.raises(ValueError, match="could not load"):
        make_text_encoder("hf:/nonexistent/model/dir")
    for text_enc in (minilm, make_text_encoder("tiny")):
        with pytest.raises(TypeError, match="list of strings"):
            text_enc("open the drawer")
        with pytest.raises(ValueError, match="empty instruction"):
            text_enc(["open the drawer", "  "])
        _, mask, pooled = text_enc([""])  # no instruction (the blank control): the start token only
        assert mask.any() and torch.isfinite(pooled).all()
        with pytest.raises(TypeError, match=r"texts\[0\] must be str"):
            text_enc([3])


# ---------------------------------------------------------------- dual models, fine-tuning, dtypes, devices

def test_hf_dual_clip_model_gives_both_towers(tmp_path):
    import transformers as tf

    n = _save_tokenizer(tmp_path, ["[PAD]", "[UNK]", "</s>"])
    torch.manual_seed(0)
    cfg = tf.CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=D_HF, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                           image_size=32, patch_size=16),
        projection_dim=16)
    tf.CLIPModel(cfg).save_pretrained(tmp_path)
    vis = make_vision_encoder("hf:" + str(tmp_path))
    grid, pooled = vis(_images(2, 32, 32))
    assert vis.out_dim == 24 and grid.shape == (2, 24, 2, 2) and pooled.shape == (2, 24)
    txt = make_text_encoder("hf:" + str(tmp_path))
    tokens, mask, pooled = txt(["open the drawer"])
    assert txt.out_dim == D_HF and tokens.shape == (1, 4, D_HF) and mask.all() and pooled.shape == (1, D_HF)


@pytest.mark.parametrize("policy", ["dust", "dita"])
def test_papers_encoders_come_from_local_hf_folders(tmp_path, policy):
    """The documented way to the papers' encoders (docs/policies.md): ``hf:<local folder>`` towers in
    a policy config. DUST: a SigLIP vision tower (frozen: the world-model target) + a text tower;
    Dita: DINOv2 with registers, trained at the policy's 0.1x rate, + CLIP text. Tiny random towers
    saved here stand in for the real folders; the policy trains a step and samples."""
    from vlastack.policies.base import make_policy
    from vlastack.types import DatasetSpec, fake_batch, fake_observation

    vision, text = ("siglip", "bert") if policy == "dust" else ("dinov2_registers", "clip")
    _save_vision(vision, tmp_path / vision)
    _save_text(text, tmp_path / text)
    towers = {"vision_encoder": "hf:" + str(tmp_path / vision), "text_encoder": "hf:" + str(tmp_path / text),
              "vision_encoder_kwargs": {} if policy == "dust" else {"frozen": False}, "text_encoder_kwargs": {}}
    torch.manual_seed(0)
    p = make_policy(policy, "tiny", **towers)
    cfg = p.config
    p.normalizer.fit({"observation.state": {"mean": [0.0] * cfg.state_dim, "std": [1.0] * cfg.state_dim},
                      "action": {k: [v] * cfg.action_dim for k, v in
                                 (("min", -1.0), ("max", 1.0), ("q01", -1.0), ("q99", 1.0))}})
    assert p.vision.name == "hf_" + vision and p.text.name == "hf_" + text
    assert p.vision.frozen == (policy == "dust") and p.text.frozen
    spec = DatasetSpec.robot(cameras=cfg.cameras, image_size=cfg.image_size, state_dim=cfg.state_dim,
                             action_dim=cfg.action_dim)
    extra = {"future_offset": cfg.future_offset} if policy == "dust" else {}
    loss, _ = p.compute_loss(fake_batch(spec, batch_size=2, n_obs=cfg.n_obs_steps, horizon=cfg.horizon, **extra))
    loss.backward()
    if policy == "dita":
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.vision.parameters())
        assert {g["name"]: g["lr_scale"] for g in p.param_groups()}["vision"] == cfg.vision_lr_scale
    chunk = p.sample_actions(fake_observation(spec, batch_size=1, n_obs=cfg.n_obs_steps), seed=0)
    assert torch.isfinite(chunk.actions).all()


def test_efficientnet_can_be_fine_tuned():
    enc = make_vision_encoder("efficientnet_lite0", layer="block5", frozen=False)
    assert not enc.frozen and _trainable(enc) > 100_000
    enc.train()
    assert enc.training and enc.bn0.training
    _, pooled = enc(_images(2, 64, 64))
    pooled.sum().backward()
    assert enc.conv_stem.weight.grad is not None and enc.conv_stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tiny"])
def test_images_follow_the_encoder_dtype(name):
    enc = make_vision_encoder(name)
    x = _images(2, 64, 64)
    ref, _ = enc(x)
    grid, pooled = enc.to(torch.bfloat16)(x)  # float32 images into a bf16 encoder
    assert grid.dtype == pooled.dtype == torch.bfloat16
    torch.testing.assert_close(grid.float(), ref, rtol=0.1, atol=0.1 * ref.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encoders_on_cuda(minilm, tmp_path):
    x = _images(3, 128, 128)
    for name in ("efficientnet_lite0", "resnet18_gn", "tiny"):
        enc = make_vision_encoder(name).eval()
        with torch.no_grad():
            ref = enc(x)
            out = enc.cuda()(x)  # CPU images are moved to the encoder's device
        assert out[0].device.type == "cuda"
        torch.testing.assert_close(out[0].cpu(), ref[0], rtol=1e-2, atol=1e-2 * ref[0].abs().max().item())
    texts = ["open the drawer", "turn on the stove", "open the drawer"]
    for enc in (minilm, make_text_encoder("tiny")):
        ref = enc.cpu()(texts)
        enc.cache.clear() if hasattr(enc, "cache") else None
        out = enc.cuda()(texts)
        assert all(t.device.type == "cuda" for t in out)
        assert torch.equal(out[1].cpu(), ref[1])
        torch.testing.assert_close(out[2].cpu(), ref[2], rtol=1e-3, atol=1e-3)
        out2 = enc(texts)  # cached path on CUDA
        assert torch.equal(out2[2], out[2])
        enc.cpu()
