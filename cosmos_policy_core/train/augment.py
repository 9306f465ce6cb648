"""Training image augmentation of the reference (§1): one random parameter set per sample, applied to all its frames.

Random resized crop of 90 % area (square), rotation in ±5° (zero fill), then brightness, contrast, saturation and hue jitter; torch only (no torchvision).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cosmos_policy_core.errors import ConfigError, ShapeError

# ITU-R 601 luma weights (what torchvision's rgb_to_grayscale uses).
_GRAY = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """The reference's "stronger" augmentation (`use_image_aug=True, use_stronger_image_aug=True`)."""

    crop_area: float = 0.9
    max_rotation_deg: float = 5.0
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.6, 1.4)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: tuple[float, float] = (-0.05, 0.05)

    def __post_init__(self) -> None:
        if not 0 < self.crop_area <= 1:
            raise ConfigError(f"crop_area must be in (0, 1], got {self.crop_area}")
        if self.max_rotation_deg < 0:
            raise ConfigError(f"max_rotation_deg must be >= 0, got {self.max_rotation_deg}")
        if not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ConfigError(f"hue range must lie in [-0.5, 0.5], got {self.hue}")


@dataclass(frozen=True)
class AugmentParams:
    """One draw: the crop window (top, left, side) in pixels, the angle and the four jitter factors."""

    top: int
    left: int
    crop: int
    angle_deg: float
    brightness: float
    contrast: float
    saturation: float
    hue: float


def crop_side(image_size: int, crop_area: float) -> int:
    """Side of the square crop covering `crop_area` of the image (213 for 224 at 90 %, as torchvision)."""
    return min(image_size, int(round(math.sqrt(crop_area * image_size * image_size))))


def sample_params(image_size: int, generator: torch.Generator | None = None,
                  config: AugmentConfig = AugmentConfig()) -> AugmentParams:
    def uniform(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=generator))

    side = crop_side(image_size, config.crop_area)
    top = int(torch.randint(0, image_size - side + 1, (), generator=generator))
    left = int(torch.randint(0, image_size - side + 1, (), generator=generator))
    return AugmentParams(
        top=top, left=left, crop=side,
        angle_deg=uniform(-config.max_rotation_deg, config.max_rotation_deg),
        brightness=uniform(*config.brightness), contrast=uniform(*config.contrast),
        saturation=uniform(*config.saturation), hue=uniform(*config.hue),
    )


# --- the operations, on float images in [0, 1], (N, 3, H, W) ---------------------------------------
def _grayscale(x_N_3_H_W: torch.Tensor) -> torch.Tensor:
    r, g, b = x_N_3_H_W.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def resized_crop(x_N_3_H_W: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    H, W = x_N_3_H_W.shape[-2:]
    window = x_N_3_H_W[..., top:top + side, left:left + side]
    return F.interpolate(window, size=(H, W), mode="bilinear", align_corners=False, antialias=True)


def rotate(x_N_3_H_W: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate about the image centre by `angle_deg`, same size, zero fill (the draw is symmetric, so the sign convention is immaterial)."""
    if angle_deg == 0:
        return x_N_3_H_W
    N = x_N_3_H_W.shape[0]
    a = math.radians(angle_deg)
    # grid_sample maps output -> input coordinates, so the inverse rotation goes in the matrix.
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=x_N_3_H_W.dtype, device=x_N_3_H_W.device)
    grid = F.affine_grid(theta.expand(N, 2, 3), list(x_N_3_H_W.shape), align_corners=False)
    return F.grid_sample(x_N_3_H_W, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    # Per image: blend towards the mean grey level of that image (a black image stays black).
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, (rk, gk, bk) in enumerate(choices):
        sel = i == k
        out[0] = torch.where(sel, rk, out[0])
        out[1] = torch.where(sel, gk, out[1])
        out[2] = torch.where(sel, bk, out[2])
    return torch.stack(out, dim=1)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    if shift == 0:
        return x
    hsv = _rgb_to_hsv(x)
    hsv = torch.cat([((hsv[:, :1] + shift) % 1.0), hsv[:, 1:]], dim=1)
    return _hsv_to_rgb(hsv).clamp(0.0, 1.0)


def apply_params(images_N_H_W_3: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Augment uint8 (N, H, W, 3) images with one parameter set; returns uint8 (N, H, W, 3).

    Every image gets the identical crop, rotation and jitter; an all-black image stays all black
    (zero fill, and every jitter maps black to black).
    """
    if images_N_H_W_3.ndim != 4 or images_N_H_W_3.shape[-1] != 3 or images_N_H_W_3.dtype != torch.uint8:
        raise ShapeError(f"augment expects uint8 (N, H, W, 3) images, got {tuple(images_N_H_W_3.shape)} "
                         f"{images_N_H_W_3.dtype}")
    H, W = images_N_H_W_3.shape[1:3]
    if H != W:
        raise ShapeError(f"augment expects square images (the model's 224²), got {H}x{W}")
    x = images_N_H_W_3.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    x = resized_crop(x, params.top, params.left, params.crop).clamp(0.0, 1.0)
    x = rotate(x, params.angle_deg)
    x = adjust_brightness(x, params.brightness)
    x = adjust_contrast(x, params.contrast)
    x = adjust_saturation(x, params.saturation)
    x = adjust_hue(x, params.hue)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def augment_sample_images(
    current: dict, future: dict, generator: torch.Generator | None = None, config: AugmentConfig = AugmentConfig(),
) -> tuple[dict, dict, AugmentParams]:
    """Augment all current and future camera images of one sample with a single parameter draw."""
    keys = list(current) + [f"future/{k}" for k in future]
    stack = torch.stack([torch.as_tensor(v) for v in list(current.values()) + list(future.values())])
    params = sample_params(stack.shape[1], generator, config)
    out = apply_params(stack, params)
    result = dict(zip(keys, out))
    cur = {k: result[k] for k in current}
    fut = {k: result[f"future/{k}"] for k in future}
    return cur, fut, params


__all__ = [
    "AugmentConfig", "AugmentParams", "crop_side", "sample_params", "resized_crop", "rotate",
    "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "apply_params",
    "augment_sample_images",
]
