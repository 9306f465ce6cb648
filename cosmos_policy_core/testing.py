"""Random-weight checkpoints for tests, demos and benchmarks: the real format, toy sizes, no downloads.

`build_random_checkpoint(dir)` writes a tiny DiT + tiny Wan VAE + ALOHA-like statistics + text embeddings for a few tasks.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cosmos_policy_core.checkpoint import CosmosCheckpoint, DatasetStats, save_checkpoint_dir
from cosmos_policy_core.diffusion import DiffusionConfig
from cosmos_policy_core.layout import LatentLayout

DEFAULT_TASKS = ("put candy in bag", "fold shirt")


def tiny_vae_config():
    """The smallest VAE with the Wan2.1 latent layout (16 channels, /8 space, /4 time): fast enough for CPU tests."""
    from cosmos_policy_core.nn.wan_vae import VAEConfig

    return VAEConfig(dim=4, num_res_blocks=1)


def aloha_like_stats(seed: int = 0, action_dim: int = 14, proprio_dim: int = 14) -> DatasetStats:
    """Plausible ALOHA ranges: arm joints within about ±1.5 rad, grippers in [0, 1]."""
    rng = np.random.default_rng(seed)

    def ranges(dim: int) -> tuple[np.ndarray, np.ndarray]:
        lo = -rng.uniform(0.2, 1.5, dim)
        hi = rng.uniform(0.2, 1.5, dim)
        for g in (6, 13):
            if g < dim:
                lo[g], hi[g] = 0.0, 1.0
        return lo, hi

    a_lo, a_hi = ranges(action_dim)
    p_lo, p_hi = ranges(proprio_dim)
    return DatasetStats(actions_min=a_lo, actions_max=a_hi, proprio_min=p_lo, proprio_max=p_hi,
                        actions_mean=(a_lo + a_hi) / 2, proprio_mean=(p_lo + p_hi) / 2)


def random_text_embeddings(tasks: Sequence[str], dim: int, length: int = 512, true_len: int = 8,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """Reference-format embeddings: (1, length, dim), zero past the 'true token count'."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for task in tasks:
        emb = torch.zeros(1, length, dim)
        emb[:, :true_len] = torch.randn(1, true_len, dim, generator=g) * 0.2
        out[task] = emb
    return out


def build_random_checkpoint(
    path: str | Path,
    *,
    model_config=None,
    vae_config=None,
    layout: LatentLayout | None = None,
    image_size: int | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    text_len: int = 512,
    seed: int = 0,
    perturb_std: float = 0.02,
) -> Path:
    """Write a random checkpoint directory and return its path.

    Defaults: ModelConfig.tiny(), tiny_vae_config(), the ALOHA layout (optionally at a smaller
    `image_size`, e.g. 64 for fast tests: 8x8 latents still hold one 50x14 chunk). The DiT's
    zero-initialised AdaLN up-projections get small random values (`perturb_std`) so that every
    input, timestep included, influences the output as in a trained network.
    """
    from cosmos_policy_core.nn.config import ModelConfig
    from cosmos_policy_core.nn.dit import CosmosDiT
    from cosmos_policy_core.nn.wan_vae import WanVAE

    model_config = model_config or ModelConfig.tiny()
    vae_config = vae_config or tiny_vae_config()
    layout = layout or LatentLayout.aloha()
    if image_size is not None:
        layout = replace(layout, image_size=image_size)
    torch.manual_seed(seed)
    net = CosmosDiT(model_config)
    if perturb_std:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "adaln_modulation" in name and not p.any():
                    p.normal_(0.0, perturb_std)
    vae = WanVAE(vae_config)
    ckpt = CosmosCheckpoint(
        model_config=model_config, layout=layout, model_state=net.state_dict(),
        stats=aloha_like_stats(seed, layout.action_dim, layout.proprio_dim),
        text_embeddings=random_text_embeddings(tasks, model_config.crossattn_emb_channels, text_len, seed=seed),
        vae_config=vae_config, vae_state=vae.state_dict(), diffusion=DiffusionConfig(),
        metadata={"source": "cosmos_policy_core.testing.build_random_checkpoint", "seed": seed},
    )
    return save_checkpoint_dir(path, ckpt)


def random_observation(layout: LatentLayout | None = None, *, task: str = DEFAULT_TASKS[0], seed: int = 0,
                       height: int = 480, width: int = 640, stats: DatasetStats | None = None, timestamp: float = 0.0):
    """An `Observation` with smooth random camera frames and proprio inside the stats range."""
    from cosmos_policy_core.runtime.policy import Observation

    layout = layout or LatentLayout.aloha()
    rng = np.random.default_rng(seed)
    images = {}
    yy, xx = np.mgrid[0:height, 0:width]
    for i, cam in enumerate(layout.camera_sources):
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(0.005, 0.03, 3)
        channels = [127.5 + 100 * np.sin(freq[c] * (xx + (c + 1) * yy) + phase[c]) for c in range(3)]
        images[cam] = np.clip(np.stack(channels, -1) + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    if stats is not None:
        proprio = stats.proprio_min + rng.uniform(0.2, 0.8, layout.proprio_dim) * (stats.proprio_max - stats.proprio_min)
    else:
        proprio = rng.uniform(-0.5, 0.5, layout.proprio_dim)
    return Observation(images=images, proprio=proprio, task=task, timestamp=timestamp)


__all__ = ["build_random_checkpoint", "random_observation", "aloha_like_stats", "random_text_embeddings",
           "tiny_vae_config", "DEFAULT_TASKS"]
