"""Cosmos-Predict2 DiT: reference parameter names/shapes, forward semantics, and a diffusers cross-check."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.nn.dit import CosmosDiT, PatchEmbed, rope_angles, timestep_sinusoid


# ---------------------------------------------------------------------------------------------
# (a) the 2B preset has exactly the reference's learned parameters (reference §8.1)
# ---------------------------------------------------------------------------------------------
def reference_2b_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the reference `net.` state dict minus its buffers, written from §8.1."""
    shapes = {
        "x_embedder.proj.1.weight": (2048, 72),
        "t_embedder.1.linear_1.weight": (2048, 2048),
        "t_embedder.1.linear_2.weight": (6144, 2048),
        "t_embedding_norm.weight": (2048,),
    }
    for i in range(28):
        b = f"blocks.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "output_proj"):
            shapes[b + f"self_attn.{proj}.weight"] = (2048, 2048)
        shapes[b + "cross_attn.q_proj.weight"] = (2048, 2048)
        shapes[b + "cross_attn.k_proj.weight"] = (2048, 1024)
        shapes[b + "cross_attn.v_proj.weight"] = (2048, 1024)
        shapes[b + "cross_attn.output_proj.weight"] = (2048, 2048)
        for attn in ("self_attn", "cross_attn"):
            shapes[b + f"{attn}.q_norm.weight"] = (128,)
            shapes[b + f"{attn}.k_norm.weight"] = (128,)
        shapes[b + "mlp.layer1.weight"] = (8192, 2048)
        shapes[b + "mlp.layer2.weight"] = (2048, 8192)
        for sub in ("self_attn", "cross_attn", "mlp"):
            shapes[b + f"adaln_modulation_{sub}.1.weight"] = (256, 2048)
            shapes[b + f"adaln_modulation_{sub}.2.weight"] = (6144, 256)
    shapes["final_layer.adaln_modulation.1.weight"] = (256, 2048)
    shapes["final_layer.adaln_modulation.2.weight"] = (4096, 256)
    shapes["final_layer.linear.weight"] = (64, 2048)
    return shapes


# 147,456 (patch) + 16,777,216 (t-embedder) + 2,048 (t-norm) + 28 x 69,206,528 (blocks) + 1,703,936 (final)
COSMOS_PREDICT2_2B_PARAMS = 1_956_413_440


def test_2b_state_dict_matches_reference_names_and_shapes():
    with torch.device("meta"):
        model = CosmosDiT(ModelConfig.cosmos_predict2_2b())
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = reference_2b_shapes()
    assert sorted(set(ours) - set(expected)) == [], "parameters the reference does not have"
    assert sorted(set(expected) - set(ours)) == [], "reference parameters we lack"
    wrong = {n: (ours[n], expected[n]) for n in expected if ours[n] != expected[n]}
    assert wrong == {}
    assert sum(p.numel() for p in model.parameters()) == COSMOS_PREDICT2_2B_PARAMS
    assert sum(math.prod(s) for s in expected.values()) == COSMOS_PREDICT2_2B_PARAMS
    assert not any(True for _ in model.buffers()), "RoPE tables must stay out of the state dict"


def test_reference_state_dict_loads_strict_after_dropping_prefix_and_buffers():
    model = CosmosDiT(ModelConfig.tiny())
    source = CosmosDiT(ModelConfig.tiny())
    reference = {f"net.{k}": v.clone() for k, v in source.state_dict().items()}
    reference.update({"net.pos_embedder.seq": torch.arange(128.0), "net.pos_embedder.dim_spatial_range": torch.zeros(5),
                      "net.accum_iteration": torch.tensor(3), "net.blocks.0.self_attn.q_norm._extra_state": None})
    dropped = ("pos_embedder.", "accum_")
    stripped = {k[len("net."):]: v for k, v in reference.items()
                if not k[len("net."):].startswith(dropped) and not k.endswith("._extra_state")}
    model.load_state_dict(stripped, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name])


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def test_config_json_round_trip_and_key_errors():
    for config in (ModelConfig.cosmos_predict2_2b(), ModelConfig.tiny()):
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    data = ModelConfig.tiny().to_dict()
    with pytest.raises(ConfigError, match="rope_scale"):
        ModelConfig.from_dict({**data, "rope_scale": [1, 3, 3]})
    del data["num_heads"]
    with pytest.raises(ConfigError, match="num_heads"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="num_heads"):
        ModelConfig(model_channels=64, num_heads=3)
    with pytest.raises(ConfigError, match="head_dim"):
        ModelConfig(model_channels=64, num_heads=8)  # head_dim 8 leaves no room for the RoPE axes


def test_2b_preset_values():
    c = ModelConfig.cosmos_predict2_2b()
    assert (c.model_channels, c.num_blocks, c.num_heads, c.head_dim, c.adaln_lora_dim) == (2048, 28, 16, 128, 256)
    assert (c.patch_in_channels, c.patch_dim, c.out_patch_dim, c.mlp_hidden) == (18, 72, 64, 8192)
    assert (c.rope_dim_t, c.rope_dim_h, c.max_latent_hw, c.max_frames) == (44, 42, (120, 120), 128)


# ---------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------
def test_timestep_sinusoid_is_cos_then_sin():
    emb = timestep_sinusoid(torch.tensor([[0.0, 0.5]]), 8)
    assert emb.shape == (1, 2, 8)
    assert torch.equal(emb[0, 0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10000 ** (-k / 4) for k in range(4)])
    torch.testing.assert_close(emb[0, 1], torch.cat([torch.cos(0.5 * freqs), torch.sin(0.5 * freqs)]))


def test_rope_angles_2b_layout_and_ntk_theta():
    c = ModelConfig.cosmos_predict2_2b()
    T, H, W = 2, 3, 4
    angles = rope_angles(c, T, H, W)
    assert angles.shape == (T * H * W, 128)
    torch.testing.assert_close(angles[:, :64], angles[:, 64:], rtol=0, atol=0)  # rotate-half layout
    grid = angles.view(T, H, W, 128)
    theta_h = 10000 * 3 ** (42 / 40)  # reference §8.1: ~31,694
    assert abs(theta_h - 31694) < 1
    # token (t=1, h=2, w=3): [t (22) | h (21) | w (21)]
    torch.testing.assert_close(grid[1, 2, 3, 1], torch.tensor(1.0 * 10000 ** (-2 / 44)))
    torch.testing.assert_close(grid[1, 2, 3, 22 + 1], torch.tensor(2.0 * theta_h ** (-2 / 42)))
    torch.testing.assert_close(grid[1, 2, 3, 43 + 1], torch.tensor(3.0 * theta_h ** (-2 / 42)))
    torch.testing.assert_close(grid[1, 2, 3, 22], torch.tensor(2.0))


def test_patch_embed_orders_patch_vector_c_r_m_n():
    c = ModelConfig(model_channels=64, num_blocks=1, num_heads=2, in_channels=3, patch_spatial=2, patch_temporal=2,
                    adaln_lora_dim=8, crossattn_emb_channels=8, concat_padding_mask=False)  # 4 channels in
    embed = PatchEmbed(c)
    with torch.no_grad():
        embed.proj[1].weight.zero_()
        embed.proj[1].weight[: c.patch_dim] = torch.eye(c.patch_dim)  # first outputs copy the patch vector
    x = torch.zeros(1, 4, 2, 4, 4)
    x[0, 2, 1, 3, 0] = 1.0  # channel 2, temporal offset 1, row 3 (patch row 1, m=1), column 0 (patch 0, n=0)
    out = embed(x)
    assert out.shape == (1, 1, 2, 2, 64)
    hot = (out[0, 0, 1, 0, : c.patch_dim] == 1).nonzero().flatten().tolist()
    assert hot == [((2 * 2 + 1) * 2 + 1) * 2 + 0]
    assert out.abs().sum() == 1


# ---------------------------------------------------------------------------------------------
# (b) tiny forward
# ---------------------------------------------------------------------------------------------
B, T, H, W = 2, 11, 8, 8


def _inputs(config: ModelConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, config.in_channels, T, H, W, generator=g)
    t = torch.rand(B, T, generator=g)
    ctx = torch.randn(B, 5, config.crossattn_emb_channels, generator=g)
    mask = torch.zeros(B, 1, T, H, W)
    mask[:, :, :5] = 1
    return x, t, ctx, mask


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CosmosDiT(ModelConfig.tiny()).eval()
    with torch.no_grad():  # zero-initialised AdaLN up-projections would hide per-frame modulation bugs
        for name, p in model.named_parameters():
            if "adaln_modulation" in name and name.endswith(".2.weight"):
                p.normal_(0, 0.1)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def test_tiny_forward_shape_and_finite(tiny):
    x, t, ctx, mask = _inputs(tiny.config)
    out = tiny(x, t, ctx, mask)
    assert out.shape == (B, 16, T, H, W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not any(True for _ in tiny.buffers())


@torch.no_grad()
def test_per_frame_timesteps(tiny):
    x, t, ctx, mask = _inputs(tiny.config)
    out = tiny(x, t, ctx, mask)
    for j in (0, 7):
        t2 = t.clone()
        t2[:, j] += 0.3
        changed = (tiny(x, t2, ctx, mask) - out).abs()
        assert changed[:, :, j].max() > 1e-3, f"timestep of frame {j} does not reach frame {j}"
    # one timestep per sample == that timestep repeated on every frame
    same = tiny(x, t[:, 0], ctx, mask)
    torch.testing.assert_close(same, tiny(x, t[:, :1].expand(B, T), ctx, mask), rtol=0, atol=1e-5)
    torch.testing.assert_close(same, tiny(x, t[:, :1], ctx, mask), rtol=0, atol=1e-5)


@torch.no_grad()
def test_condition_and_padding_masks_are_input_channels(tiny):
    x, t, ctx, mask = _inputs(tiny.config)
    out = tiny(x, t, ctx, mask)
    assert (tiny(x, t, ctx, torch.zeros_like(mask)) - out).abs().max() > 1e-3
    torch.testing.assert_close(tiny(x, t, ctx, mask, torch.zeros(B, 1, 64, 64)), out, rtol=0, atol=0)
    torch.testing.assert_close(tiny(x, t, ctx, mask, torch.zeros(1, 1, H, W)), out, rtol=0, atol=0)
    padded = torch.zeros(1, 1, 64, 64)
    padded[..., 48:] = 1  # right quarter padded: nearest resize keeps it at latent columns 6, 7
    with_pad = tiny(x, t, ctx, mask, padded)
    expected = torch.zeros(1, 1, H, W)
    expected[..., 6:] = 1
    torch.testing.assert_close(with_pad, tiny(x, t, ctx, mask, expected), rtol=0, atol=0)
    assert (with_pad - out).abs().max() > 1e-3


@torch.no_grad()
def test_bf16_forward(tiny):
    x, t, ctx, mask = _inputs(tiny.config)
    ref = tiny(x, t, ctx, mask)
    model = CosmosDiT(tiny.config).eval()
    model.load_state_dict(tiny.state_dict())
    model.to(torch.bfloat16)
    out = model(x.bfloat16(), t.bfloat16(), ctx.bfloat16(), mask.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_shape_errors_name_the_expected_shape(tiny):
    x, t, ctx, mask = _inputs(tiny.config)
    with pytest.raises(ShapeError, match="x must be"):
        tiny(x[:, :15], t, ctx, mask)
    with pytest.raises(ShapeError, match="timesteps"):
        tiny(x, t[:, :4], ctx, mask)
    with pytest.raises(ShapeError, match="condition mask"):
        tiny(x, t, ctx, mask[:, :, :4])
    with pytest.raises(ShapeError, match="crossattn_emb"):
        tiny(x, t, ctx[..., :8], mask)
    with pytest.raises(ShapeError, match="multiples of the patch"):
        tiny(x[..., :7], t, ctx, mask[..., :7])
    too_big = torch.zeros(1, 16, 1, 242, 8)
    with pytest.raises(ShapeError, match="RoPE range"):
        tiny(too_big, torch.zeros(1), ctx[:1], torch.zeros(1, 1, 1, 242, 8))


@torch.no_grad()
def test_torch_export_traces_without_caching_fake_rope_tables():
    model = CosmosDiT(ModelConfig.tiny()).eval()
    x, t, ctx, mask = _inputs(model.config)
    program = torch.export.export(model, (x[:1], t[:1], ctx[:1], mask[:1]))
    assert model._rope_cache == {}
    torch.testing.assert_close(program.module()(x[:1], t[:1], ctx[:1], mask[:1]), model(x[:1], t[:1], ctx[:1], mask[:1]))


# ---------------------------------------------------------------------------------------------
# (c) cross-check against diffusers' CosmosTransformer3DModel
# ---------------------------------------------------------------------------------------------
def twin_of(model: CosmosDiT):
    pytest.importorskip("diffusers", reason="diffusers is not installed")
    from cosmos_policy_core.nn.diffusers_compat import diffusers_twin
    return diffusers_twin(model.config, model.state_dict())


@torch.no_grad()
def test_matches_diffusers_cosmos_transformer(tiny):
    twin = twin_of(tiny)
    x, t, ctx, mask = _inputs(tiny.config)
    padding = torch.zeros(1, 1, 64, 64)
    padding[..., 56:] = 1
    ours = tiny(x, t, ctx, mask, padding)
    theirs = twin(x, t.view(B, 1, T, 1, 1), ctx, condition_mask=mask, padding_mask=padding, return_dict=False)[0]
    assert ours.abs().max() > 0.1
    assert (ours - theirs).abs().max() <= 1e-5
    ours = tiny(x, t[:, 0], ctx, mask, padding)
    theirs = twin(x, t[:, 0], ctx, condition_mask=mask, padding_mask=padding, return_dict=False)[0]
    assert (ours - theirs).abs().max() <= 1e-5
