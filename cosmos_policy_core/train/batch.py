"""Batch assembly: the frozen VAE encodes each sample's pixel clip (optionally cached), then the low-dim targets
(proprio, action chunk, future proprio, value) are injected into the latent and the per-role masks stacked.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from cosmos_policy_core.errors import DataError
from cosmos_policy_core.layout import (
    LatentLayout, build_pixel_clip, clip_to_vae_input, condition_mask, inject_action_chunk, inject_proprio,
    inject_value, loss_frame_mask,
)
from cosmos_policy_core.nn.wan_vae import WanVAE
from cosmos_policy_core.train.samples import TrainingSample


def image_tensors(images: Mapping[str, object]) -> dict[str, torch.Tensor]:
    # PIL-resized frames are read-only numpy views: copy them into tensors torch may own.
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in images.items()}


class LatentEncoder:
    """Frozen-VAE encode of sample clips: one causal pass per sample per step, optionally cached.

    The cache (in memory, or .npy files in a directory) is keyed by (episode, step) and is only
    valid without augmentation, since the clip of a key is then always the same.
    """

    def __init__(self, vae: WanVAE, layout: LatentLayout, cache: str | None = None, device="cpu"):
        self.vae, self.layout, self.device = vae.eval(), layout, torch.device(device)
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self._memory: dict[tuple, torch.Tensor] | None = {} if cache == "memory" else None
        self._dir = Path(cache) if cache not in (None, "memory") else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        self.encoded = 0
        self.cache_hits = 0

    def _path(self, key: tuple) -> Path:
        name = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
        return self._dir / f"{name}.npy"

    def has(self, key: tuple) -> bool:
        """Whether the latent of `key` is cached (its sample then needs no frames read)."""
        if self._memory is not None:
            return key in self._memory
        return self._dir is not None and bool(key) and self._path(key).exists()

    def _lookup(self, key: tuple) -> torch.Tensor | None:
        if self._memory is not None:
            return self._memory.get(key)
        if self._dir is not None and key and self._path(key).exists():
            return torch.from_numpy(np.load(self._path(key)))
        return None

    def _store(self, key: tuple, latent: torch.Tensor) -> None:
        if self._memory is not None:
            self._memory[key] = latent
        elif self._dir is not None and key:
            tmp = self._path(key).with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, latent.numpy())
            os.replace(tmp, self._path(key))

    @torch.no_grad()
    def encode(self, samples: Sequence[TrainingSample]) -> torch.Tensor:
        """(B, C, T, H, W) clean latents of the samples' pixel clips (before any injection)."""
        cached = [self._lookup(s.key) if s.key else None for s in samples]
        todo = [i for i, c in enumerate(cached) if c is None]
        if todo:
            clips = [build_pixel_clip(self.layout, image_tensors(samples[i].current), image_tensors(samples[i].future))
                     for i in todo]
            video = clip_to_vae_input(torch.cat(clips).to(self.device), dtype=self.vae.dtype)
            latents = self.vae.encode(video, chunk_frames=None).float().cpu()
            self.encoded += len(todo)
            for j, i in enumerate(todo):
                cached[i] = latents[j]
                if self._memory is not None or self._dir is not None:
                    self._store(samples[i].key, latents[j].clone())
        self.cache_hits += len(samples) - len(todo)
        return torch.stack(cached)


@dataclass
class Batch:
    x0_B_C_T_H_W: torch.Tensor          # latent with proprio, actions, future proprio and value injected
    mask_B_1_T_H_W: torch.Tensor        # conditioning frames of each sample's role
    loss_mask_B_T: torch.Tensor
    crossattn_B_L_D: torch.Tensor
    roles: list[str]


def assemble_batch(layout: LatentLayout, samples: Sequence[TrainingSample], clean_B_C_T_H_W: torch.Tensor,
                   text: Mapping[str, torch.Tensor]) -> Batch:
    """Inject the low-dim targets into the clean latents and stack the per-role masks."""
    x = clean_B_C_T_H_W
    x = inject_proprio(x, torch.from_numpy(np.stack([s.proprio for s in samples])), layout.index("proprio"))
    x = inject_action_chunk(x, torch.from_numpy(np.stack([s.actions for s in samples])), layout.index("action"))
    x = inject_proprio(x, torch.from_numpy(np.stack([s.future_proprio for s in samples])),
                       layout.index("future_proprio"))
    x = inject_value(x, torch.tensor([s.value for s in samples], dtype=torch.float32), layout.index("value"))
    roles = [s.role for s in samples]
    mask = torch.cat([condition_mask(layout, r, 1) for r in roles])
    loss_mask = torch.cat([loss_frame_mask(layout, r, 1) for r in roles])
    try:
        crossattn = torch.cat([text[s.task] for s in samples])
    except KeyError as e:
        raise DataError(f"no text embedding for task {e.args[0]!r}; known: {sorted(text)}") from None
    return Batch(x, mask, loss_mask, crossattn, roles)



__all__ = ["image_tensors", "LatentEncoder", "Batch", "assemble_batch"]
