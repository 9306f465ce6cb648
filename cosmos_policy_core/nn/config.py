"""Hyper-parameters of the Cosmos-Predict2 DiT (`ModelConfig`), with the 2B preset and a tiny CPU preset.

A config is data: `to_dict()` / `from_dict()` round-trip through a checkpoint directory's config.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from cosmos_policy_core.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """The DiT's shape. Field names follow the reference `MiniTrainDIT` arguments.

    `in_channels` counts latent channels only: the network adds the condition-mask channel
    and (with `concat_padding_mask`) the padding-mask channel in front of the patch embedding.
    AdaLN-LoRA is always on and RoPE fps modulation always off, as in every Cosmos Policy config.
    """

    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    concat_padding_mask: bool = True
    crossattn_emb_channels: int = 1024
    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    rope_h_extrapolation_ratio: float = 3.0
    rope_w_extrapolation_ratio: float = 3.0
    rope_t_extrapolation_ratio: float = 1.0
    timestep_scale: float = 1.0

    @classmethod
    def cosmos_predict2_2b(cls) -> "ModelConfig":
        """Cosmos-Predict2-2B as resolved for Cosmos Policy (reference §8.1): 1.96 B parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> "ModelConfig":
        """Same structure at toy width: head_dim 32 keeps all three RoPE axes non-trivial."""
        return cls(model_channels=64, num_blocks=2, num_heads=2, adaln_lora_dim=16, crossattn_emb_channels=32)

    def __post_init__(self) -> None:
        positive = ("model_channels", "num_blocks", "num_heads", "adaln_lora_dim", "in_channels", "out_channels",
                    "patch_spatial", "patch_temporal", "crossattn_emb_channels", "max_img_h", "max_img_w",
                    "max_frames")
        bad = [f"{name}={getattr(self, name)!r}" for name in positive
               if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool)
               or getattr(self, name) <= 0]
        if bad:
            raise ConfigError(f"ModelConfig needs positive integers, got {', '.join(bad)}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"ModelConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.model_channels % self.num_heads:
            raise ConfigError(f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}")
        if self.model_channels % 2:
            raise ConfigError(f"model_channels {self.model_channels} must be even (sin/cos timestep embedding)")
        # RoPE splits head_dim into t/h/w parts; the NTK factor ratio**(d/(d-2)) needs d_h > 2.
        if self.head_dim % 2 or self.rope_dim_h <= 2:
            raise ConfigError(f"head_dim {self.head_dim} (model_channels / num_heads) must be even and >= 12 "
                              f"to split into the t/h/w RoPE axes")
        if self.max_img_h % self.patch_spatial or self.max_img_w % self.patch_spatial:
            raise ConfigError(f"max_img_h/w {self.max_img_h}/{self.max_img_w} must be multiples of "
                              f"patch_spatial {self.patch_spatial}")
        if min(self.rope_h_extrapolation_ratio, self.rope_w_extrapolation_ratio,
               self.rope_t_extrapolation_ratio) <= 0:
            raise ConfigError("RoPE extrapolation ratios must be > 0")

    # -- derived sizes -----------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def rope_dim_h(self) -> int:
        """Per-head channels rotated by the row index (the same number for columns)."""
        return self.head_dim // 6 * 2

    @property
    def rope_dim_t(self) -> int:
        return self.head_dim - 2 * self.rope_dim_h

    @property
    def mlp_hidden(self) -> int:
        return int(self.model_channels * self.mlp_ratio)

    @property
    def patch_in_channels(self) -> int:
        """Channels entering the patch embedding: latent + condition mask (+ padding mask)."""
        return self.in_channels + 1 + int(self.concat_padding_mask)

    @property
    def patch_dim(self) -> int:
        return self.patch_in_channels * self.patch_spatial ** 2 * self.patch_temporal

    @property
    def out_patch_dim(self) -> int:
        return self.out_channels * self.patch_spatial ** 2 * self.patch_temporal

    @property
    def max_latent_hw(self) -> tuple[int, int]:
        """Largest token grid (rows, columns) the RoPE tables cover: 120 x 120 for the 2B model."""
        return self.max_img_h // self.patch_spatial, self.max_img_w // self.patch_spatial

    # -- config.json ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; every field must be present and no other key may be."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"model config has unknown keys {unknown}; known keys: {names}")
        missing = [n for n in names if n not in data]
        if missing:
            raise ConfigError(f"model config lacks keys {missing}; write it with ModelConfig.to_dict()")
        return cls(**dict(data))
