"""The Wan2.1 causal 3D VAE of Cosmos Policy: parameter names of the released `tokenizer.pth`, explicit causal caches.

Encodes a [-1, 1] video (1 + 4k frames, H and W multiples of 8) to normalized latents (1 + k frames, /8) and back.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError

log = logging.getLogger(__name__)

# Frames of history a 3x3x3 causal convolution needs; what each cache entry holds.
CACHE_T = 2

# Per-channel statistics of the Wan2.1 posterior mean (reference `CosmosPolicyWanVAE.__init__`, = Wan2.1's).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the Wan2.1 VAE (field names as the reference's `WanVAE_` arguments)."""

    z_dim: int = 16
    dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN21_LATENT_STD

    def __post_init__(self) -> None:
        # Tuples even when built from JSON lists, so the config stays hashable and comparable.
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latent_mean", "latent_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(
                f"temperal_downsample has {len(self.temperal_downsample)} entries, dim_mult {len(self.dim_mult)}: "
                f"one temporal flag per downsampling step (len(dim_mult) - 1) is needed"
            )
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ConfigError(
                f"latent_mean/latent_std have {len(self.latent_mean)}/{len(self.latent_std)} values, "
                f"z_dim is {self.z_dim}: give one mean and one std per latent channel"
            )
        if any(s <= 0 for s in self.latent_std):
            raise ConfigError(f"latent_std must be positive, got {self.latent_std}")
        if self.dim <= 0 or self.z_dim <= 0 or self.num_res_blocks <= 0:
            raise ConfigError(f"dim, z_dim and num_res_blocks must be positive, got {self}")

    @classmethod
    def wan21(cls) -> "VAEConfig":
        """The released Wan2.1 VAE used by Cosmos-Predict2 and Cosmos Policy (~127M parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """Same structure and latent layout (16 channels, /8, /4 in time), 12x narrower: for tests and demos."""
        return cls(dim=8)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown VAEConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def latent_num_frames(num_pixel_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames of a causal clip: the first frame alone, then one latent per `temporal_factor` frames."""
    return 1 + (num_pixel_frames - 1) // temporal_factor


def pixel_num_frames(num_latent_frames: int, temporal_factor: int = 4) -> int:
    return 1 + (num_latent_frames - 1) * temporal_factor


def normalize_latent(mu_B_C_T_H_W: torch.Tensor, mean_C: torch.Tensor, std_C: torch.Tensor) -> torch.Tensor:
    """z = (mu - mean) * (1 / std), per channel, written as the reference does (multiply by the inverse std)."""
    inv_std = (1.0 / std_C).view(1, -1, 1, 1, 1)
    return (mu_B_C_T_H_W - mean_C.view(1, -1, 1, 1, 1)) * inv_std


def denormalize_latent(z_B_C_T_H_W: torch.Tensor, mean_C: torch.Tensor, std_C: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize_latent`: mu = z / (1 / std) + mean."""
    inv_std = (1.0 / std_C).view(1, -1, 1, 1, 1)
    return z_B_C_T_H_W / inv_std + mean_C.view(1, -1, 1, 1, 1)


class CausalCache:
    """The past frames each causal layer of one encoder or decoder stream has seen, keyed by layer.

    Entries are replaced, never modified in place, so `fork()` is a cheap shallow copy.
    """

    def __init__(self) -> None:
        self._past: dict[nn.Module, torch.Tensor] = {}

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._past.get(layer)

    def put(self, layer: nn.Module, past: torch.Tensor) -> None:
        self._past[layer] = past

    def fork(self) -> "CausalCache":
        twin = CausalCache()
        twin._past = dict(self._past)
        return twin

    def __len__(self) -> int:
        return len(self._past)


def _cpu_fast_path_ok(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # dynamo refuses to trace the mkldnn availability probe below
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    # oneDNN at every frame size (small frames as fast as with slow_conv3d on the 2-core CI box): its result for a
    # frame does not depend on how many frames a call holds (calls that give a single latent frame excepted), while
    # slow_conv3d's GEMM rounds differently per clip length. So a clip encoded in pieces of two or more latent frames,
    # or only as far as a caller needs, gives the one-pass latents bit for bit on CPU.
    if not torch.backends.mkldnn.enabled:
        return False
    # Exported / traced / compiled graphs keep the plain conv3d op.
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or exporting)


class CausalConv3d(nn.Conv3d):
    """3D convolution, causal in time: the past (cached frames, or zeros at the stream start) is prepended."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=padding)
        pad_t, pad_h, pad_w = self.padding
        # Symmetric time padding of p becomes 2p frames of past; space keeps the convolution's own zero padding.
        self.causal_pad_t = 2 * pad_t
        self.padding = (0, pad_h, pad_w)

    def forward(self, x_B_C_T_H_W: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.causal_pad_t == 0:
            return self.conv_valid(x_B_C_T_H_W)
        past = cache.get(self) if cache is not None else None
        if past is None:
            b, c, _, h, w = x_B_C_T_H_W.shape
            past = x_B_C_T_H_W.new_zeros(b, c, self.causal_pad_t, h, w)
        x_in = torch.cat([past, x_B_C_T_H_W], dim=2)
        if cache is not None:
            cache.put(self, x_in[:, :, -self.causal_pad_t:].clone())
        return self.conv_valid(x_in)

    def conv_valid(self, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        """The convolution over frames the caller has already prepended with their past."""
        if _cpu_fast_path_ok(x_B_C_T_H_W):
            # PyTorch's CPU dispatcher sends batch-1 conv3d with few channels to `slow_conv3d` (im2col, ~8x slower
            # than oneDNN at the tiny preset's widths at 224x224); the oneDNN kernel computes the same convolution.
            return torch.mkldnn_convolution(x_B_C_T_H_W.contiguous(), self.weight, self.bias, self.padding,
                                            self.stride, self.dilation, self.groups)
        return super().forward(x_B_C_T_H_W)


class RMSNorm(nn.Module):
    """L2 normalization over channels times sqrt(C) and a learned per-channel gain (reference `RMS_norm`)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        # images=True: (B, C, H, W) inputs; False: (B, C, T, H, W). Only the gain's shape differs.
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """norm-SiLU-conv-norm-SiLU-dropout-conv plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Sequential indices are the checkpoint's names: residual.0/.3 norms, residual.2/.6 convs.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x_B_C_T_H_W: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.shortcut(x_B_C_T_H_W)
        x = x_B_C_T_H_W
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (frames never attend to each other)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # the reference starts the block as an identity

    def forward(self, x_B_C_T_H_W: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x_B_C_T_H_W.shape
        x_N_C_H_W = x_B_C_T_H_W.transpose(1, 2).reshape(b * t, c, h, w)
        qkv_N_3C_L = self.to_qkv(self.norm(x_N_C_H_W)).reshape(b * t, 3 * c, h * w)
        q, k, v = qkv_N_3C_L.transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # each (N, 1, L, C)
        y_N_1_L_C = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        y_N_C_H_W = y_N_1_L_C.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y_B_C_T_H_W = self.proj(y_N_C_H_W).reshape(b, t, c, h, w).transpose(1, 2)
        return y_B_C_T_H_W + x_B_C_T_H_W


class _NearestUpsample2x(nn.Module):
    """2x nearest-exact upsampling in space, computed in fp32 (bf16 nearest is not supported everywhere)."""

    def forward(self, x_N_C_H_W: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x_N_C_H_W.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x_N_C_H_W)


def _per_frame(module: nn.Module, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x_B_C_T_H_W.shape
    y = module(x_B_C_T_H_W.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Resample(nn.Module):
    """Spatial 2x down/up sampling, optionally with a causal 2x temporal step.

    Time keeps the causal first frame apart: `downsample3d` passes frame 0 through and then merges frames
    (2i-2, 2i-1, 2i) into latent i; `upsample3d` passes frame 0 through and turns every later frame into two, with
    frame 0 seen as zeros by the temporal convolution (the reference's "Rep" cache state).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ConfigError(f"unknown Resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # Pad right/bottom only: the stride-2 convolution then sees pixels (2i, 2i+1, 2i+2).
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x_B_C_T_H_W: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x_B_C_T_H_W = self._time_upsample(x_B_C_T_H_W, cache)
        x_B_C_T_H_W = _per_frame(self.resample, x_B_C_T_H_W)
        if self.mode == "downsample3d":
            x_B_C_T_H_W = self._time_downsample(x_B_C_T_H_W, cache)
        return x_B_C_T_H_W

    def _time_downsample(self, x_B_C_T_H_W: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        past = cache.get(self) if cache is not None else None
        if cache is not None:
            cache.put(self, x_B_C_T_H_W[:, :, -1:].clone())
        if past is None:  # stream start: frame 0 alone, then windows (0,1,2), (2,3,4), …
            first = x_B_C_T_H_W[:, :, :1]
            if x_B_C_T_H_W.shape[2] == 1:
                return first
            return torch.cat([first, self.time_conv(x_B_C_T_H_W)], dim=2)
        return self.time_conv(torch.cat([past, x_B_C_T_H_W], dim=2))

    def _time_upsample(self, x_B_C_T_H_W: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        b, c, t, h, w = x_B_C_T_H_W.shape
        past = cache.get(self) if cache is not None else None
        first = None
        if past is None:  # stream start: frame 0 passes through and is zeros in the temporal history
            first, x_B_C_T_H_W = x_B_C_T_H_W[:, :, :1], x_B_C_T_H_W[:, :, 1:]
            past = first.new_zeros(b, c, CACHE_T, h, w)
        x_in = torch.cat([past, x_B_C_T_H_W], dim=2)
        if cache is not None:
            cache.put(self, x_in[:, :, -CACHE_T:].clone())
        t_rest = x_B_C_T_H_W.shape[2]
        if t_rest == 0:
            return first
        # Channels [0, C) are the even output frames, [C, 2C) the odd ones.
        y_B_2C_T_H_W = self.time_conv.conv_valid(x_in)
        y_B_C_2T_H_W = y_B_2C_T_H_W.reshape(b, 2, c, t_rest, h, w).permute(0, 2, 3, 1, 4, 5).reshape(
            b, c, 2 * t_rest, h, w)
        return y_B_C_2T_H_W if first is None else torch.cat([first, y_B_C_2T_H_W], dim=2)


def _run(layer: nn.Module, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
    if isinstance(layer, (CausalConv3d, ResidualBlock, AttentionBlock, Resample)):
        return layer(x, cache)
    return layer(x)


class Encoder3d(nn.Module):
    """Video (B, 3, T, H, W) -> (B, 2*z_dim, T', H/8, W/8): posterior mean and log-variance before `conv1`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        cfg = config
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        downsamples: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                downsamples.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    downsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                downsamples.append(Resample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*downsamples)
        top = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(top, top, cfg.dropout), AttentionBlock(top), ResidualBlock(top, top, cfg.dropout))
        self.head = nn.Sequential(RMSNorm(top, images=False), nn.SiLU(), CausalConv3d(top, cfg.z_dim * 2, 3, padding=1))

    def forward(self, x_B_3_T_H_W: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.conv1(x_B_3_T_H_W, cache)
        for layer in (*self.downsamples, *self.middle, *self.head):
            x = _run(layer, x, cache)
        return x


class Decoder3d(nn.Module):
    """Latent (B, z_dim, T', h, w) after `conv2` -> video (B, 3, 1 + 4(T'-1), 8h, 8w), unclamped."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        cfg = config
        temperal_upsample = cfg.temperal_downsample[::-1]
        dims = [cfg.dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], cfg.dropout), AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], cfg.dropout))
        upsamples: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim = in_dim // 2  # every upsampling convolution halves the width
            for _ in range(cfg.num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    upsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                upsamples.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*upsamples)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, z_B_C_T_H_W: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.conv1(z_B_C_T_H_W, cache)
        for layer in (*self.middle, *self.upsamples, *self.head):
            x = _run(layer, x, cache)
        return x


class EncoderStream:
    """Feeds a clip to the encoder piece by piece: first 1 + 4k frames, then multiples of 4; returns normalized z.

    The latents equal those of encoding the concatenated clip at once. `fork()` branches the stream, e.g. to encode
    a shared prefix once and several continuations from it.
    """

    def __init__(self, vae: "WanVAE") -> None:
        self._vae = vae
        self._cache = CausalCache()
        self.frames_seen = 0

    @torch.no_grad()
    def push(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        vae = self._vae
        t = vae.check_video(video_B_3_T_H_W, first=self.frames_seen == 0)
        in_dtype = video_B_3_T_H_W.dtype
        h = vae.encoder(video_B_3_T_H_W.to(vae.dtype), self._cache)
        mu_B_C_T_H_W = vae.conv1(h)[:, : vae.config.z_dim]
        self.frames_seen += t
        return normalize_latent(mu_B_C_T_H_W, vae.latent_mean, vae.latent_std).to(in_dtype)

    @torch.no_grad()
    def push_chunks(self, video_B_3_T_H_W: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        """`push` in pieces of `chunk_frames` (a multiple of 4; a new stream's first frame alone); None: one piece.

        Less memory per call, the same latents up to float rounding.
        """
        if chunk_frames is None:
            return self.push(video_B_3_T_H_W)
        factor = self._vae.config.temporal_factor
        if chunk_frames <= 0 or chunk_frames % factor:
            raise ConfigError(f"chunk_frames must be a positive multiple of {factor} or None, got {chunk_frames}")
        start = 1 if self.frames_seen == 0 else 0
        pieces = [self.push(video_B_3_T_H_W[:, :, :1])] if start else []
        for s in range(start, video_B_3_T_H_W.shape[2], chunk_frames):
            pieces.append(self.push(video_B_3_T_H_W[:, :, s:s + chunk_frames]))
        return torch.cat(pieces, dim=2)

    def cache_items(self) -> list[tuple[nn.Module, torch.Tensor]]:
        """(causal layer, the past frames it keeps): the stream's whole state after the frames pushed so far."""
        return list(self._cache._past.items())

    def fork(self) -> "EncoderStream":
        twin = EncoderStream(self._vae)
        twin._cache = self._cache.fork()
        twin.frames_seen = self.frames_seen
        return twin


class DecoderStream:
    """Feeds normalized latents to the decoder piece by piece; the first piece gives 1 + 4(n-1) frames, later 4n."""

    def __init__(self, vae: "WanVAE", clamp: bool = True) -> None:
        self._vae = vae
        self._cache = CausalCache()
        self._clamp = clamp
        self.latents_seen = 0

    @torch.no_grad()
    def push(self, z_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        vae = self._vae
        vae.check_latent(z_B_C_T_H_W)
        in_dtype = z_B_C_T_H_W.dtype
        mu = denormalize_latent(z_B_C_T_H_W.to(vae.dtype), vae.latent_mean, vae.latent_std)
        video_B_3_T_H_W = vae.decoder(vae.conv2(mu), self._cache)
        self.latents_seen += z_B_C_T_H_W.shape[2]
        if self._clamp:
            video_B_3_T_H_W = video_B_3_T_H_W.clamp(-1.0, 1.0)
        return video_B_3_T_H_W.to(in_dtype)


class WanVAE(nn.Module):
    """The Wan2.1 VAE (reference `WanVAE_` parameter names) with normalized-latent encode/decode.

    How the reference runs it (NVlabs/cosmos-policy, `cosmos_policy/tokenizers/wan2pt1.py` on top of
    `_src/predict2/tokenizers/wan2pt1.py`, itself Alibaba's Wan2.1 `WanVAE_`), and what this module keeps:

    - The released `tokenizer.pth` is a *flat* state dict of `WanVAE_` (no wrapper prefix): the reference builds
      `WanVAE_` on the meta device and calls `model.load_state_dict(ckpt, assign=True)` (strict). `WanVAE` here has the
      same module tree (`encoder.conv1`, `encoder.downsamples.N`, `encoder.middle`, `encoder.head`, `conv1`, `conv2`,
      `decoder.…`), so `WanVAE.from_checkpoint(path)` loads it strictly, with no renaming.
    - Encode returns the posterior mean only, normalized per channel: z = (mu - mean) * (1 / std), with the 16 + 16
      constants `WAN21_LATENT_MEAN` / `WAN21_LATENT_STD` (as the reference: `scale = [mean, 1 / std]` in the model dtype). Decode inverts it.
    - The clip is processed chunk-wise (first frame alone, then chunks of 4 frames) and every causal layer carries the
      last frames it saw in a `CausalCache`. Because every layer is causal, any chunking (1, 4, 4, … as Wan; 1, 16, 16, 8
      as the reference's resolved `temporal_window=16`; or the whole clip in one pass) gives the same latents.
    - Decode clamps to [-1, 1] as Wan2.1 and diffusers do; the Cosmos wrapper leaves the clamp to its uint8 conversion
      (`((x + 1) * 127.5).clamp(0, 255)`), which gives the same images.
    - The reference casts the VAE to bf16 (`is_amp=False`); cast this module with `.to(torch.bfloat16)` for the same
      (RMS norms then normalize in bf16 like the reference; diffusers upcasts them to fp32). bf16 is for GPUs: on CPU
      without bf16 hardware PyTorch runs bf16 conv3d through `slow_conv3d`, several times slower than fp32.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or VAEConfig.wan21()
        z = self.config.z_dim
        self.encoder = Encoder3d(self.config)
        self.conv1 = CausalConv3d(z * 2, z * 2, 1)  # -> (mu, log_var)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(self.config)
        # Not in the checkpoint (the reference hardcodes them); they follow .to(device/dtype) like the weights.
        self.register_buffer("latent_mean", torch.tensor(self.config.latent_mean), persistent=False)
        self.register_buffer("latent_std", torch.tensor(self.config.latent_std), persistent=False)

    @classmethod
    def tiny(cls) -> "WanVAE":
        return cls(VAEConfig.tiny())

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: VAEConfig | None = None,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "WanVAE":
        """Load a Wan2.1 `tokenizer.pth` (a flat `WanVAE_` state dict, e.g. from
        `nvidia/Cosmos-Predict2-2B-Video2World/tokenizer/tokenizer.pth`) strictly."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"VAE checkpoint {path} not found: download tokenizer/tokenizer.pth of "
                                  f"nvidia/Cosmos-Predict2-2B-Video2World and pass its path")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or non-tensor files
            raise CheckpointError(f"cannot read VAE checkpoint {path}: {exc}") from exc
        with torch.device("meta"):
            vae = cls(config)
        vae.load_reference_state_dict(state)
        # Buffers are not in the checkpoint: rebuild them off the meta device.
        vae.latent_mean = torch.tensor(vae.config.latent_mean)
        vae.latent_std = torch.tensor(vae.config.latent_std)
        log.info("loaded Wan2.1 VAE from %s (%d tensors)", path, len(state))
        return vae.to(device=device, dtype=dtype).eval()

    def load_reference_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load of a reference-named state dict, with a message that names the mismatch."""
        if not isinstance(state, dict):
            raise CheckpointError(f"VAE checkpoint holds a {type(state).__name__}, expected a flat state dict")
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"VAE state dict does not match the Wan2.1 layout (config dim={self.config.dim}): "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                f"pass the flat WanVAE_ state dict of tokenizer.pth and the matching VAEConfig")
        wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
        if wrong:
            raise CheckpointError(f"VAE tensor shapes differ from the config: {wrong[:3]} (file, expected)")
        self.load_state_dict(state, strict=True, assign=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def check_video(self, video_B_3_T_H_W: torch.Tensor, first: bool = True) -> int:
        """Validate a pixel chunk; returns its frame count."""
        if video_B_3_T_H_W.ndim != 5 or video_B_3_T_H_W.shape[1] != 3:
            raise ShapeError(f"video must be (B, 3, T, H, W), got {tuple(video_B_3_T_H_W.shape)}")
        t, h, w = video_B_3_T_H_W.shape[2:]
        f, s = self.config.temporal_factor, self.config.spatial_factor
        if h % s or w % s:
            raise ShapeError(f"video height and width must be multiples of {s}, got {h}x{w}: resize or pad")
        if first and (t - 1) % f:
            raise ShapeError(f"a clip (or a stream's first chunk) needs 1 + {f}k frames, got {t}: "
                             f"the causal first frame stands alone, then groups of {f}")
        if not first and (t == 0 or t % f):
            raise ShapeError(f"later stream chunks need a positive multiple of {f} frames, got {t}")
        return t

    def check_latent(self, z_B_C_T_H_W: torch.Tensor) -> None:
        if z_B_C_T_H_W.ndim != 5 or z_B_C_T_H_W.shape[1] != self.config.z_dim or z_B_C_T_H_W.shape[2] == 0:
            raise ShapeError(f"latent must be (B, {self.config.z_dim}, T>0, h, w), got {tuple(z_B_C_T_H_W.shape)}")

    def encoder_stream(self) -> EncoderStream:
        return EncoderStream(self)

    def decoder_stream(self, clamp: bool = True) -> DecoderStream:
        return DecoderStream(self, clamp=clamp)

    @torch.no_grad()
    def encode(self, video_B_3_T_H_W: torch.Tensor, chunk_frames: int | None = 4) -> torch.Tensor:
        """[-1, 1] video -> normalized posterior mean z (B, 16, 1 + (T-1)//4, H/8, W/8), in the input's dtype.

        chunk_frames: frames per chunk after the first frame (4 as Wan2.1, 16 as the reference's resolved config,
        any multiple of 4), or None for one pass over the whole clip (more memory, fewer kernel launches).
        """
        self.check_video(video_B_3_T_H_W, first=True)
        return self.encoder_stream().push_chunks(video_B_3_T_H_W, chunk_frames)

    @torch.no_grad()
    def decode(self, z_B_C_T_H_W: torch.Tensor, chunk_latents: int | None = 1, clamp: bool = True) -> torch.Tensor:
        """Normalized latent -> video (B, 3, 1 + 4(T'-1), 8h, 8w), clamped to [-1, 1] unless clamp=False.

        chunk_latents: latent frames per decoder call (1 as the reference), or None for one pass.
        """
        self.check_latent(z_B_C_T_H_W)
        stream = self.decoder_stream(clamp=clamp)
        if chunk_latents is None:
            return stream.push(z_B_C_T_H_W)
        if chunk_latents <= 0:
            raise ConfigError(f"chunk_latents must be positive or None, got {chunk_latents}")
        pieces = [stream.push(z_B_C_T_H_W[:, :, s:s + chunk_latents])
                  for s in range(0, z_B_C_T_H_W.shape[2], chunk_latents)]
        return torch.cat(pieces, dim=2)
