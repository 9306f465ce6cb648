"""Test-time image pipeline of Cosmos Policy for ALOHA: camera frame (any size) -> the model's 224x224 uint8 image.

Client side raw -> 256² -> 224² (PIL bicubic), server side a √0.9-area center crop resized back (torchvision's
float32 antialiased bilinear, one rounding); no JPEG, no flip. On CPU with PIL, or as torch ops on the policy's
device with the same integer arithmetic (`prepare_images_tensor`), bit for bit.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.layout import TRAIN_CROP_AREA

CLIENT_PREPROCESS_SIZE = 256  # the ALOHA client's first resize (its dataset preprocessing size)
# Pillow resamples 8-bit images with integer filter weights of 22 fractional bits (libImaging/Resample.c).
PIL_PRECISION_BITS = 22
PIL_BICUBIC_SUPPORT = 2.0


def check_image(image, name: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or ShapeError saying what is wrong with it."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ShapeError(f"image {name!r} has shape {arr.shape}, expected (H, W, 3) RGB")
    if arr.dtype != np.uint8:
        raise ShapeError(f"image {name!r} has dtype {arr.dtype}, expected uint8 (convert with np.uint8 / cv2)")
    return np.ascontiguousarray(arr)


def pil_resize(image_H_W_3: np.ndarray, size: int) -> np.ndarray:
    """Square resize with PIL BICUBIC (the aspect ratio is squashed, as the reference does)."""
    return np.asarray(Image.fromarray(image_H_W_3).resize((size, size), resample=Image.BICUBIC))


def client_resize(image_H_W_3: np.ndarray, size: int = 224) -> np.ndarray:
    """The reference client: raw -> 256² -> `size`² (both PIL bicubic).

    An image that already has the model size is taken as client-preprocessed and returned
    unchanged, like the reference server (whose resize is a no-op at 224²).
    """
    if image_H_W_3.shape[:2] == (size, size):
        return image_H_W_3
    return pil_resize(pil_resize(image_H_W_3, CLIENT_PREPROCESS_SIZE), size)


def center_crop_size(size: int, area: float = TRAIN_CROP_AREA) -> int:
    """int(size·√area): 212 for 224 and 90 % area."""
    return int(size * math.sqrt(area))


def center_crop_resize_tensor(images_N_3_S_S: torch.Tensor, area: float = TRAIN_CROP_AREA) -> torch.Tensor:
    """Center crop of √area side resized back to S, uint8 in and out, on the images' device.

    As the reference server: torchvision's center_crop offsets (round((S - crop) / 2)) and its v1 tensor
    resize, which casts to float32, resizes bilinear with antialias and rounds once at the end. (torch's
    uint8 kernel rounds between its horizontal and vertical passes: one level off on ~10 % of the values.)
    """
    if images_N_3_S_S.ndim != 4 or images_N_3_S_S.shape[1] != 3 or images_N_3_S_S.shape[2] != images_N_3_S_S.shape[3]:
        raise ShapeError(f"expected (N, 3, S, S) square images, got {tuple(images_N_3_S_S.shape)}")
    if images_N_3_S_S.dtype != torch.uint8:
        raise ShapeError(f"expected uint8 images, got {images_N_3_S_S.dtype}")
    size = images_N_3_S_S.shape[-1]
    crop = center_crop_size(size, area)
    top = int(round((size - crop) / 2.0))
    cropped = images_N_3_S_S[:, :, top:top + crop, top:top + crop].float()
    resized = F.interpolate(cropped, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # Non-negative weights that sum to one keep the values in [0, 255]: no clamp before the cast.
    return resized.round().to(torch.uint8)


def center_crop_resize(images_N_H_W_3: np.ndarray, area: float = TRAIN_CROP_AREA) -> np.ndarray:
    """`center_crop_resize_tensor` for (N, S, S, 3) uint8 arrays."""
    if images_N_H_W_3.ndim != 4 or images_N_H_W_3.shape[1] != images_N_H_W_3.shape[2]:
        raise ShapeError(f"expected (N, S, S, 3) square images, got {images_N_H_W_3.shape}")
    x_N_3_S_S = torch.from_numpy(np.ascontiguousarray(images_N_H_W_3)).permute(0, 3, 1, 2)
    return center_crop_resize_tensor(x_N_3_S_S, area).permute(0, 2, 3, 1).contiguous().numpy()


def prepare_images(images: list[np.ndarray], size: int = 224, names: list[str] | None = None,
                   crop_area: float | None = TRAIN_CROP_AREA) -> np.ndarray:
    """Camera frames of any size -> (N, size, size, 3) uint8, exactly as the model saw them at test time.

    `crop_area=None` skips the center crop (for a model trained without crop augmentation).
    """
    names = names or [f"image{i}" for i in range(len(images))]
    resized = np.stack([client_resize(check_image(img, n), size) for img, n in zip(images, names)])
    return center_crop_resize(resized, crop_area) if crop_area is not None else resized


# --- the same pipeline as torch ops (CUDA, or CPU) --------------------------------------------------------
def _pil_bicubic(x: float) -> float:
    """Pillow's bicubic filter (a = -0.5), in its operation order so the doubles are the same."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=32)
def pil_bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index (out,), integer weights (out, K)) of Pillow's bicubic resample along one axis.

    Pillow's precompute_coeffs + normalize_coeffs_8bpc: the filter widened by the downscale factor,
    weights normalized in double, then rounded half away from zero to 22 fractional bits.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = PIL_BICUBIC_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale
    one = 1 << PIL_PRECISION_BITS
    start = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), in_size) - xmin
        k = [_pil_bicubic((x + xmin - center + 0.5) * inv_filterscale) for x in range(n)]
        total = 0.0
        for w in k:
            total += w
        if total != 0.0:
            k = [w / total for w in k]
        start[xx] = xmin
        weights[xx, :n] = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in k]
    return start, weights


@functools.lru_cache(maxsize=32)
def _taps_on(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    start, weights = pil_bicubic_taps(in_size, out_size)
    index = np.minimum(start[:, None] + np.arange(weights.shape[1]), in_size - 1)  # taps past the edge weigh 0
    return (torch.from_numpy(index).to(device), torch.from_numpy(weights).to(device=device, dtype=torch.int32))


def _resample_last_axis(x_uint8: torch.Tensor, out_size: int) -> torch.Tensor:
    """Pillow's 8-bit bicubic pass along the last axis: integer sums, rounded and clipped to 0..255."""
    index, weights = _taps_on(x_uint8.shape[-1], out_size, x_uint8.device)
    taps = x_uint8[..., index].to(torch.int32)                              # (..., out, K)
    # Pillow's int accumulator cannot overflow: 255 * sum(|w|) < 2^31 for its filters.
    acc = (taps * weights).sum(-1, dtype=torch.int32) + (1 << (PIL_PRECISION_BITS - 1))
    return (acc >> PIL_PRECISION_BITS).clamp(0, 255).to(torch.uint8)


def pil_resize_tensor(images_N_3_H_W: torch.Tensor, size: int) -> torch.Tensor:
    """`pil_resize` as torch ops on the images' device: the same uint8 result, bit for bit.

    Two passes with an 8-bit image between them, as Pillow: horizontal first, unless the height shrinks
    by more than twice as many pixels as the width (Pillow 13's order; ALOHA's 640x480 -> 256 -> 224 is
    horizontal first either way).
    """
    height, width = images_N_3_H_W.shape[-2:]
    horizontal = functools.partial(_resample_last_axis, out_size=size)

    def vertical(x: torch.Tensor) -> torch.Tensor:
        return _resample_last_axis(x.transpose(-1, -2), size).transpose(-1, -2)

    passes = []
    if width != size:
        passes.append(horizontal)
    if height != size:
        passes.append(vertical)
    if (height - size) > 0 and (height - size) > 2 * (width - size):
        passes.reverse()
    x = images_N_3_H_W
    for resample in passes:
        x = resample(x)
    return x.contiguous()


def prepare_images_tensor(images: Sequence[np.ndarray | torch.Tensor], size: int = 224,
                          names: Sequence[str] | None = None, crop_area: float | None = TRAIN_CROP_AREA,
                          device: str | torch.device = "cpu") -> torch.Tensor:
    """`prepare_images` as torch ops on `device`: (N, 3, size, size) uint8, the same values bit for bit.

    Frames (H, W, 3) uint8 go to the device as they are (a 640x480 frame is 0.9 MB) and are resized there;
    frames of one size are resized together.
    """
    names = list(names or [f"image{i}" for i in range(len(images))])
    device = torch.device(device)
    frames = []
    for image, name in zip(images, names):
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
                raise ShapeError(f"image {name!r} has shape {tuple(image.shape)} and dtype {image.dtype}, "
                                 "expected (H, W, 3) uint8 RGB")
            frames.append(image.to(device, non_blocking=True))
        else:
            frames.append(torch.from_numpy(check_image(image, name)).to(device, non_blocking=True))
    out: list[torch.Tensor | None] = [None] * len(frames)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, frame in enumerate(frames):
        by_shape.setdefault(tuple(frame.shape[:2]), []).append(i)
    for (height, width), idx in by_shape.items():
        x_N_3_H_W = torch.stack([frames[i] for i in idx]).permute(0, 3, 1, 2)
        if (height, width) != (size, size):  # already model-sized: taken as client-preprocessed
            x_N_3_H_W = pil_resize_tensor(pil_resize_tensor(x_N_3_H_W, CLIENT_PREPROCESS_SIZE), size)
        for i, image in zip(idx, x_N_3_H_W):
            out[i] = image
    resized = torch.stack(out)
    return center_crop_resize_tensor(resized, crop_area) if crop_area is not None else resized.contiguous()


__all__ = ["check_image", "pil_resize", "client_resize", "center_crop_size", "center_crop_resize",
           "center_crop_resize_tensor", "prepare_images", "pil_bicubic_taps", "pil_resize_tensor",
           "prepare_images_tensor"]
