"""The Cosmos-Predict2 DiT (`CosmosDiT`), readable top-down, with the reference's parameter names and shapes.

A reference state dict (minus the `net.` prefix and its non-learned buffers) loads with strict=True.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.nn.config import ModelConfig

_NORM_EPS = 1e-6  # every LayerNorm and RMSNorm of the reference network


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def timestep_sinusoid(timesteps_B_T: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] of t * 10000^(-k/half), k < half = dim/2, computed in fp32: (B, T) -> (B, T, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps_B_T.device)
                      * (-math.log(10000.0) / half))
    args_B_T_half = timesteps_B_T.float()[..., None] * freqs
    return torch.cat([torch.cos(args_B_T_half), torch.sin(args_B_T_half)], dim=-1)


def rope_angles(config: ModelConfig, T: int, H: int, W: int, device: torch.device | str | None = None) -> torch.Tensor:
    """RoPE angles per token, (T*H*W, head_dim) in fp32: [t | h | w] repeated twice (rotate-half layout).

    Frequencies follow the reference VideoRopePosition3DEmb: theta = 10000 * ratio^(d / (d - 2)) per axis,
    exponents arange(0, d, 2) / d, integer positions, no fps modulation.
    """
    dim_h, dim_t = config.rope_dim_h, config.rope_dim_t

    def axis_freqs(dim: int, ratio: float) -> torch.Tensor:
        theta = 10000.0 * ratio ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
        return 1.0 / theta ** exponents

    def positions(n: int) -> torch.Tensor:
        return torch.arange(n, dtype=torch.float32, device=device)

    t_T_d = torch.outer(positions(T), axis_freqs(dim_t, config.rope_t_extrapolation_ratio))
    h_H_d = torch.outer(positions(H), axis_freqs(dim_h, config.rope_h_extrapolation_ratio))
    w_W_d = torch.outer(positions(W), axis_freqs(dim_h, config.rope_w_extrapolation_ratio))
    per_axis = [
        t_T_d[:, None, None, :].expand(T, H, W, -1),
        h_H_d[None, :, None, :].expand(T, H, W, -1),
        w_W_d[None, None, :, :].expand(T, H, W, -1),
    ]
    return torch.cat(per_axis * 2, dim=-1).reshape(T * H * W, config.head_dim)


def apply_rope(x_B_L_H_D: torch.Tensor, cos_L_1_D: torch.Tensor, sin_signed_L_1_D: torch.Tensor) -> torch.Tensor:
    """Non-interleaved (rotate-half, TransformerEngine "bshd") rotation, computed in fp32.

    `sin_signed` is sin with its first half negated, so rotate_half(x) * sin == swap_halves(x) * sin_signed.
    """
    x = x_B_L_H_D.float()
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos_L_1_D, torch.cat([x2, x1], dim=-1), sin_signed_L_1_D).to(x_B_L_H_D.dtype)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=_NORM_EPS)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift, in one pass after the norm."""
    return torch.addcmul(shift, _layer_norm(x), 1 + scale)


def _is_tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


# ---------------------------------------------------------------------------------------------
# Modules (attribute names are the reference's: they are the checkpoint's keys)
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain, normalising in fp32 like TransformerEngine's."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) * weight; the fused kernel is ~6x faster on CPU than the written-out form
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), _NORM_EPS).to(x.dtype)


class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T', H', W', D); the patch vector is ordered (c, r, m, n) as the reference's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.p, self.r = config.patch_spatial, config.patch_temporal
        # index 1 of a Sequential, because the reference's index 0 is its (parameter-free) Rearrange
        self.proj = nn.Sequential(nn.Identity(), nn.Linear(config.patch_dim, config.model_channels, bias=False))

    def forward(self, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_B_C_T_H_W.shape
        p, r = self.p, self.r
        x = x_B_C_T_H_W.reshape(B, C, T // r, r, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, T // r, H // p, W // p, C * r * p * p)
        return self.proj(x)


class TimestepEmbedding(nn.Module):
    """The AdaLN-LoRA path of the timestep: sinusoid (D) -> D -> 3D (no biases)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, sinusoid_B_T_D: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sinusoid_B_T_D)))


def _adaln_lora(dim: int, lora_dim: int, n_chunks: int) -> nn.Sequential:
    # reference layout: [SiLU, down, up]; the SiLU holds no weights but keeps the indices 1 and 2
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, lora_dim, bias=False),
                         nn.Linear(lora_dim, n_chunks * dim, bias=False))


class Attention(nn.Module):
    """Multi-head attention with per-head q/k RMSNorm; RoPE only when given (self-attention)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.k_norm = RMSNorm(self.head_dim)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)

    def _heads(self, x_B_L_D: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_B_L_D.shape
        return x_B_L_D.view(B, L, self.num_heads, self.head_dim)

    def forward(self, x_B_L_D: torch.Tensor, context_B_M_C: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        context = x_B_L_D if context_B_M_C is None else context_B_M_C
        # norm and RoPE on the contiguous (B, L, heads, d) layout, as the reference does; SDPA wants heads first
        q_B_L_H_d = self.q_norm(self._heads(self.q_proj(x_B_L_D)))
        k_B_M_H_d = self.k_norm(self._heads(self.k_proj(context)))
        v_B_M_H_d = self._heads(self.v_proj(context))
        if rope is not None:
            cos_L_1_d, sin_L_1_d = rope[0][:, None], rope[1][:, None]
            q_B_L_H_d = apply_rope(q_B_L_H_d, cos_L_1_d, sin_L_1_d)
            k_B_M_H_d = apply_rope(k_B_M_H_d, cos_L_1_d, sin_L_1_d)
        out_B_H_L_d = F.scaled_dot_product_attention(q_B_L_H_d.transpose(1, 2), k_B_M_H_d.transpose(1, 2),
                                                     v_B_M_H_d.transpose(1, 2))
        B, _, L, _ = out_B_H_L_d.shape
        return self.output_proj(out_B_H_L_d.transpose(1, 2).reshape(B, L, -1))


class GPT2FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.gelu(self.layer1(x)))  # exact (erf) GELU


class Block(nn.Module):
    """Self-attention, cross-attention, MLP; each pre-LayerNorm, AdaLN-modulated per latent frame, gated."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.model_channels
        self.self_attn = Attention(D, D, config.num_heads)
        self.cross_attn = Attention(D, config.crossattn_emb_channels, config.num_heads)
        self.mlp = GPT2FeedForward(D, config.mlp_hidden)
        self.adaln_modulation_self_attn = _adaln_lora(D, config.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _adaln_lora(D, config.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _adaln_lora(D, config.adaln_lora_dim, 3)

    def forward(self, x_B_T_N_D: torch.Tensor, emb_B_T_D: torch.Tensor, adaln_lora_B_T_3D: torch.Tensor,
                crossattn_B_M_C: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, N, D = x_B_T_N_D.shape

        def modulation(adaln: nn.Sequential) -> tuple[torch.Tensor, ...]:
            # (B, T, 3D) -> three (B, T, 1, D): one modulation per latent frame, broadcast over its tokens
            return (adaln(emb_B_T_D) + adaln_lora_B_T_3D).unsqueeze(2).chunk(3, dim=-1)

        def tokens(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(B, -1, D)

        def grid(x_B_L_D: torch.Tensor) -> torch.Tensor:
            return x_B_L_D.view(B, T, N, D)

        # x + gate * sublayer(...) as one addcmul pass
        shift, scale, gate = modulation(self.adaln_modulation_self_attn)
        y = self.self_attn(tokens(_modulate(x_B_T_N_D, shift, scale)), rope=rope)
        x_B_T_N_D = torch.addcmul(x_B_T_N_D, gate, grid(y))

        shift, scale, gate = modulation(self.adaln_modulation_cross_attn)
        y = self.cross_attn(tokens(_modulate(x_B_T_N_D, shift, scale)), crossattn_B_M_C)
        x_B_T_N_D = torch.addcmul(x_B_T_N_D, gate, grid(y))

        shift, scale, gate = modulation(self.adaln_modulation_mlp)
        return torch.addcmul(x_B_T_N_D, gate, self.mlp(_modulate(x_B_T_N_D, shift, scale)))


class FinalLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.model_channels
        self.adaln_modulation = _adaln_lora(D, config.adaln_lora_dim, 2)
        self.linear = nn.Linear(D, config.out_patch_dim, bias=False)

    def forward(self, x_B_T_N_D: torch.Tensor, emb_B_T_D: torch.Tensor,
                adaln_lora_B_T_3D: torch.Tensor) -> torch.Tensor:
        D = x_B_T_N_D.shape[-1]
        shift, scale = (self.adaln_modulation(emb_B_T_D) + adaln_lora_B_T_3D[..., : 2 * D]).unsqueeze(2).chunk(2, -1)
        return self.linear(_modulate(x_B_T_N_D, shift, scale))


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class CosmosDiT(nn.Module):
    """Cosmos-Predict2 video DiT as used by Cosmos Policy (reference `MinimalV1LVGDiT`).

    Returns the raw network output (B, out_channels, T, H, W), exactly what the reference `net` returns;
    preconditioning (c_in, c_out, t = sigma / (1 + sigma)) belongs to the diffusion module.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        D = config.model_channels
        self.x_embedder = PatchEmbed(config)
        # index 1 of a Sequential: the reference's index 0 is the (weight-free) sinusoid
        self.t_embedder = nn.Sequential(nn.Identity(), TimestepEmbedding(D))
        self.t_embedding_norm = RMSNorm(D)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.final_layer = FinalLayer(config)
        # (T, H, W, device) -> (cos, signed sin); a cache, not state: it never enters the state dict
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference's initialisation: truncated normal (+-3 std, std = 1/sqrt(fan_in)) for every
        projection, zeros for the AdaLN up-projections (so modulation starts from the LoRA term), ones for norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = 1.0 / math.sqrt(module.in_features)
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for adaln in (block.adaln_modulation_self_attn, block.adaln_modulation_cross_attn,
                          block.adaln_modulation_mlp):
                nn.init.zeros_(adaln[2].weight)
        nn.init.zeros_(self.final_layer.adaln_modulation[2].weight)
        self._rope_cache.clear()

    # -- RoPE tables, cached per token grid ----------------------------------------------------
    def rope_tables(self, T: int, H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) tables (T*H*W, head_dim) in fp32 for a grid of T x H x W tokens."""
        key = (T, H, W, str(device))
        cached = self._rope_cache.get(key)
        if cached is not None:
            return cached
        angles_L_D = rope_angles(self.config, T, H, W, device=device)
        half = self.config.head_dim // 2
        sin_L_D = torch.sin(angles_L_D)
        tables = (torch.cos(angles_L_D), torch.cat([-sin_L_D[:, :half], sin_L_D[:, half:]], dim=-1))
        if not _is_tracing():  # a traced table would be a fake/proxy tensor: never keep it
            self._rope_cache[key] = tables
        return tables

    # -- input checks (shapes only: nothing here depends on tensor values) -----------------------
    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor, crossattn: torch.Tensor,
                      cond_mask: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ShapeError(f"x must be (B, {c.in_channels}, T, H, W), got {tuple(x.shape)}")
        B, _, T, H, W = x.shape
        if H % c.patch_spatial or W % c.patch_spatial or T % c.patch_temporal:
            raise ShapeError(f"latent T, H, W = {T}, {H}, {W} must be multiples of the patch "
                             f"({c.patch_temporal}, {c.patch_spatial}, {c.patch_spatial})")
        if H > c.max_img_h or W > c.max_img_w or T > c.max_frames:
            raise ShapeError(f"latent T, H, W = {T}, {H}, {W} exceed the RoPE range "
                             f"({c.max_frames}, {c.max_img_h}, {c.max_img_w}) of this config")
        if tuple(cond_mask.shape) != (B, 1, T, H, W):
            raise ShapeError(f"condition mask must be {(B, 1, T, H, W)}, got {tuple(cond_mask.shape)}")
        if timesteps.shape not in ((B,), (B, 1), (B, T // c.patch_temporal)):
            raise ShapeError(f"timesteps must be (B,) or (B, T) = ({B},) or ({B}, {T // c.patch_temporal}), "
                             f"got {tuple(timesteps.shape)}")
        if crossattn.ndim != 3 or crossattn.shape[0] != B or crossattn.shape[2] != c.crossattn_emb_channels:
            raise ShapeError(f"crossattn_emb must be ({B}, L, {c.crossattn_emb_channels}), got {tuple(crossattn.shape)}")
        if padding_mask is not None and (padding_mask.ndim != 4 or padding_mask.shape[0] not in (1, B)
                                         or padding_mask.shape[1] != 1):
            raise ShapeError(f"padding mask must be ({B} or 1, 1, H, W), got {tuple(padding_mask.shape)}")

    def forward(self, x_B_C_T_H_W: torch.Tensor, timesteps_B_T: torch.Tensor, crossattn_emb_B_L_D: torch.Tensor,
                condition_video_input_mask_B_C_T_H_W: torch.Tensor,
                padding_mask_B_1_H_W: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) latents (already c_in-scaled), timesteps (B,) or (B, T) in t-space,
        cross-attention context (B, L, crossattn_emb_channels), condition mask (B, 1, T, H, W);
        padding mask (B or 1, 1, H', W'), zeros when None, resized (nearest) to the latent H, W."""
        self._check_inputs(x_B_C_T_H_W, timesteps_B_T, crossattn_emb_B_L_D, condition_video_input_mask_B_C_T_H_W,
                           padding_mask_B_1_H_W)
        c = self.config
        dtype = self.x_embedder.proj[1].weight.dtype
        B, _, T, H, W = x_B_C_T_H_W.shape
        x = x_B_C_T_H_W.to(dtype)

        # 1. input channels: latent | condition mask | padding mask
        channels = [x, condition_video_input_mask_B_C_T_H_W.to(dtype)]
        if c.concat_padding_mask:
            if padding_mask_B_1_H_W is None:
                pad_B_1_H_W = x.new_zeros(B, 1, H, W)
            else:
                pad_B_1_H_W = padding_mask_B_1_H_W.to(dtype)
                if tuple(pad_B_1_H_W.shape[-2:]) != (H, W):
                    pad_B_1_H_W = F.interpolate(pad_B_1_H_W, size=(H, W), mode="nearest")
            channels.append(pad_B_1_H_W[:, :, None].expand(B, 1, T, H, W))
        x_B_T_Hp_Wp_D = self.x_embedder(torch.cat(channels, dim=1))
        _, Tp, Hp, Wp, D = x_B_T_Hp_Wp_D.shape
        x_B_T_N_D = x_B_T_Hp_Wp_D.reshape(B, Tp, Hp * Wp, D)

        # 2. timestep: per latent frame; (B,) is one timestep for all frames
        t_B_T = timesteps_B_T.reshape(B, -1) * c.timestep_scale
        sinusoid_B_T_D = timestep_sinusoid(t_B_T, D).to(dtype)
        adaln_lora_B_T_3D = self.t_embedder[1](sinusoid_B_T_D)
        emb_B_T_D = self.t_embedding_norm(sinusoid_B_T_D)

        # 3. blocks, then the modulated output projection
        rope = self.rope_tables(Tp, Hp, Wp, x.device)
        crossattn = crossattn_emb_B_L_D.to(dtype)
        for block in self.blocks:
            x_B_T_N_D = block(x_B_T_N_D, emb_B_T_D, adaln_lora_B_T_3D, crossattn, rope)
        x_B_T_N_O = self.final_layer(x_B_T_N_D, emb_B_T_D, adaln_lora_B_T_3D)

        # 4. unpatchify: the output vector is ordered (p1, p2, t, C), channel innermost (reference)
        p, r = c.patch_spatial, c.patch_temporal
        x = x_B_T_N_O.reshape(B, Tp, Hp, Wp, p, p, r, c.out_channels)
        return x.permute(0, 7, 1, 6, 2, 4, 3, 5).reshape(B, c.out_channels, Tp * r, Hp * p, Wp * p)
