"""diffusers' `CosmosTransformer3DModel` configured and loaded as a twin of a `CosmosDiT` (same weights).

Used to cross-check our network and to benchmark against it; diffusers is an optional (dev) dependency.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.nn.config import ModelConfig

# Reference (= our) parameter names -> diffusers names, as in diffusers' Cosmos 2.0 conversion script.
REFERENCE_TO_DIFFUSERS = (
    ("t_embedder.1", "time_embed.t_embedder"), ("t_embedding_norm", "time_embed.norm"),
    ("blocks.", "transformer_blocks."),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"), ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"), ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"), ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"), ("cross_attn", "attn2"), ("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"),
    ("output_proj", "to_out.0"), ("q_norm", "norm_q"), ("k_norm", "norm_k"),
    ("mlp.layer1", "ff.net.0.proj"), ("mlp.layer2", "ff.net.2"), ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"), ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
)


def to_diffusers_name(name: str) -> str:
    for ours, theirs in REFERENCE_TO_DIFFUSERS:
        name = name.replace(ours, theirs)
    return name


def diffusers_twin(config: ModelConfig, state_dict: dict[str, torch.Tensor]):
    """A CosmosTransformer3DModel computing what the reference network computes, with our weights.

    Where diffusers differs from the reference, the twin is adapted (our network follows the reference):
    - diffusers builds its q/k RMSNorm with eps 1e-5; the reference (TransformerEngine RMSNorm) uses 1e-6,
      so the twin's eps is set to 1e-6;
    - diffusers orders `rope_scale` as (t, h, w) and counts the condition mask in `in_channels`;
    - diffusers resizes the padding mask with torchvision; where torchvision is absent, its tensor path
      (F.interpolate, mode "nearest") is provided in its place.
    Call it as twin(x, t.view(B, 1, T, 1, 1) or t (B,), context, condition_mask=..., padding_mask=(1, 1, H, W)).
    """
    try:
        from diffusers.models.transformers import transformer_cosmos
    except ImportError as exc:
        raise ConfigError(f"diffusers is needed for the diffusers twin: pip install 'cosmos-aloha[dev]' ({exc})") from exc
    if not hasattr(transformer_cosmos, "transforms"):
        def resize(img, size, interpolation):
            return F.interpolate(img, size=size, mode=interpolation)

        transformer_cosmos.transforms = types.SimpleNamespace(
            InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
            functional=types.SimpleNamespace(resize=resize))
    c = config
    if c.timestep_scale != 1.0:
        raise ConfigError(f"diffusers has no timestep_scale; the twin needs timestep_scale 1.0, not {c.timestep_scale}")
    twin = transformer_cosmos.CosmosTransformer3DModel(
        in_channels=c.in_channels + 1, out_channels=c.out_channels, num_attention_heads=c.num_heads,
        attention_head_dim=c.head_dim, num_layers=c.num_blocks, mlp_ratio=c.mlp_ratio,
        text_embed_dim=c.crossattn_emb_channels, adaln_lora_dim=c.adaln_lora_dim,
        max_size=(c.max_frames, c.max_img_h, c.max_img_w),
        patch_size=(c.patch_temporal, c.patch_spatial, c.patch_spatial),
        rope_scale=(c.rope_t_extrapolation_ratio, c.rope_h_extrapolation_ratio, c.rope_w_extrapolation_ratio),
        concat_padding_mask=c.concat_padding_mask, extra_pos_embed_type=None,
    )
    twin.load_state_dict({to_diffusers_name(k): v for k, v in state_dict.items()}, strict=True)
    for module in twin.modules():
        if getattr(module, "norm_q", None) is not None:
            module.norm_q.eps = module.norm_k.eps = 1e-6
    return twin.eval()
