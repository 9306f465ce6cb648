"""The VAE encoder of the policy's hot path: the clip's conditioning frames -> their latents, as one fixed graph.

What torch.compile compiles and what ONNX / TensorRT export; the eager policy encodes the same frames with the VAE's stream.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.layout import LatentLayout, conditioning_frames
from cosmos_policy_core.nn.wan_vae import CausalCache, normalize_latent

log = logging.getLogger(__name__)


def conditioning_pixel_frames(layout: LatentLayout) -> int:
    """Pixel frames up to the last latent frame the policy role conditions on (ALOHA: 17 of 41).

    The VAE is causal, so the latents of those frames do not depend on the pixel frames after them.
    """
    last = max(conditioning_frames(layout, "policy"))
    return layout.pixel_frame(last) + layout.duplicates_per_image if last > 0 else 1


def constant_prefix_frames(layout: LatentLayout) -> int:
    """Pixel frames before the first camera slot (ALOHA: 5): black at inference, so their encoder state is constant."""
    first_camera = min(layout.index(c) for c in layout.cameras)
    return layout.pixel_frame(first_camera) if first_camera >= 1 else 0


class ConditioningEncoderModule(nn.Module):
    """[-1, 1] camera frames (B, 3, F, S, S) of the clip -> normalized latents of the conditioning frames.

    The clip's first `prefix_frames` (blank + proprio slots) are black at inference: their latents and
    the causal state the encoder carries out of them are computed once here and held as buffers, so the
    graph encodes only the F = frames - prefix_frames camera frames. Output: (B, C, T_cond, S/8, S/8),
    the same latents as encoding the clip's first `frames` frames in one causal pass.
    """

    def __init__(self, vae: nn.Module, layout: LatentLayout) -> None:
        super().__init__()
        self.vae = vae.eval()
        self.frames = conditioning_pixel_frames(layout)
        self.prefix_frames = constant_prefix_frames(layout)
        self.image_size = layout.image_size
        if self.prefix_frames < 1 or (self.prefix_frames - 1) % vae.config.temporal_factor:
            raise ConfigError(f"layout {layout.name!r}: the constant prefix has {self.prefix_frames} pixel frames; "
                              f"the encoder state can be cached only after 1 + {vae.config.temporal_factor}k frames")
        S = layout.image_size
        param = next(vae.parameters())
        black = -torch.ones(1, 3, self.prefix_frames, S, S, dtype=param.dtype, device=param.device)
        stream = vae.encoder_stream()
        self.register_buffer("prefix_latent", stream.push(black), persistent=False)
        # The stream's state, keyed by layer: registered as buffers so it moves with .to() and enters every
        # traced / compiled graph as a constant.
        self._state_layers: list[tuple[nn.Module, str]] = []
        for i, (layer, past) in enumerate(stream.cache_items()):
            name = f"prefix_state_{i}"
            self.register_buffer(name, past, persistent=False)
            self._state_layers.append((layer, name))

    @property
    def input_frames(self) -> int:
        return self.frames - self.prefix_frames

    def forward(self, camera_frames_B_3_F_S_S: torch.Tensor) -> torch.Tensor:
        cache = CausalCache()
        for layer, name in self._state_layers:
            cache.put(layer, getattr(self, name))
        vae = self.vae
        h = vae.encoder(camera_frames_B_3_F_S_S.to(self.prefix_latent.dtype), cache)
        mu_B_C_T_H_W = vae.conv1(h)[:, : vae.config.z_dim]
        rest = normalize_latent(mu_B_C_T_H_W, vae.latent_mean, vae.latent_std)
        B = camera_frames_B_3_F_S_S.shape[0]
        prefix = self.prefix_latent.expand(B, *self.prefix_latent.shape[1:])
        return torch.cat([prefix, rest], dim=2).float()


class ClipEncoder:
    """Base of the fast-path encoders: a [-1, 1] clip (B, 3, T >= frames, S, S) -> float32 conditioning latents.

    The policy hands it the clip (or its first `frames` frames); frames [0, prefix_frames) must be the black
    blank / proprio slots, as `layout.build_pixel_clip` makes them.
    """

    name = "encoder"
    frames: int
    prefix_frames: int
    device: torch.device = torch.device("cpu")

    def check_clip(self, video_B_3_T_H_W: torch.Tensor, image_size: int) -> torch.Tensor:
        """The camera frames the graph takes, (B, 3, frames - prefix_frames, S, S)."""
        if video_B_3_T_H_W.ndim != 5 or video_B_3_T_H_W.shape[1] != 3 or video_B_3_T_H_W.shape[2] < self.frames \
                or tuple(video_B_3_T_H_W.shape[3:]) != (image_size, image_size):
            raise ShapeError(f"{self.name} encoder takes a clip (B, 3, T >= {self.frames}, {image_size}, {image_size}), "
                             f"got {tuple(video_B_3_T_H_W.shape)}")
        return video_B_3_T_H_W[:, :, self.prefix_frames:self.frames]

    def __call__(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchClipEncoder(ClipEncoder):
    """`ConditioningEncoderModule` in-process: eager, or torch.compile'd (CUDA graphs with "reduce-overhead")."""

    def __init__(self, vae: nn.Module, layout: LatentLayout, *, compile: str | None = None) -> None:
        self.module = ConditioningEncoderModule(vae, layout).eval()
        self.frames, self.prefix_frames = self.module.frames, self.module.prefix_frames
        self.image_size = layout.image_size
        self.device = self.module.prefix_latent.device
        self.name = "torch" if compile is None else "torch+compile"
        self._fn = self.module
        if compile is not None:
            mode = None if compile == "default" else compile
            self._fn = torch.compile(self.module, mode=mode, dynamic=False, fullgraph=True)
            log.info("VAE encoder: torch.compile(mode=%s) on %s; the first call compiles", compile, self.device)

    @torch.no_grad()
    def __call__(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        frames = self.check_clip(video_B_3_T_H_W, self.image_size).to(self.device)
        # CUDA graphs reuse their output buffer on the next replay; the latent outlives the call.
        return self._fn(frames).clone()
