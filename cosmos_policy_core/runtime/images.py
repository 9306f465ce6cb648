"""Test-time image pipeline of Cosmos Policy for ALOHA: camera frame (any size) -> the model's 224x224 uint8 image.

Client side raw -> 256² -> 224² (PIL bicubic), server side a √0.9-area center crop resized back (bilinear, antialias); no JPEG, no flip.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.layout import TRAIN_CROP_AREA

CLIENT_PREPROCESS_SIZE = 256  # the ALOHA client's first resize (its dataset preprocessing size)


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


def center_crop_resize(images_N_H_W_3: np.ndarray, area: float = TRAIN_CROP_AREA) -> np.ndarray:
    """Center crop of √area side, resized back to the input size, bilinear with antialias, uint8 in and out.

    Crop offsets follow torchvision's center_crop (round((H - crop) / 2)). The resize runs torch's
    native uint8 antialiased bilinear kernel — the kernel torchvision's CPU uint8 path calls — so
    no torchvision is needed. Resizing float and rounding instead differs by at most 1 grey level.
    """
    if images_N_H_W_3.ndim != 4 or images_N_H_W_3.shape[1] != images_N_H_W_3.shape[2]:
        raise ShapeError(f"expected (N, S, S, 3) square images, got {images_N_H_W_3.shape}")
    size = images_N_H_W_3.shape[1]
    crop = center_crop_size(size, area)
    top = int(round((size - crop) / 2.0))
    x_N_3_H_W = torch.from_numpy(np.ascontiguousarray(images_N_H_W_3)).permute(0, 3, 1, 2)
    cropped = x_N_3_H_W[:, :, top:top + crop, top:top + crop]
    resized = F.interpolate(cropped.contiguous(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def prepare_images(images: list[np.ndarray], size: int = 224, names: list[str] | None = None,
                   crop_area: float | None = TRAIN_CROP_AREA) -> np.ndarray:
    """Camera frames of any size -> (N, size, size, 3) uint8, exactly as the model saw them at test time.

    `crop_area=None` skips the center crop (for a model trained without crop augmentation).
    """
    names = names or [f"image{i}" for i in range(len(images))]
    resized = np.stack([client_resize(check_image(img, n), size) for img, n in zip(images, names)])
    return center_crop_resize(resized, crop_area) if crop_area is not None else resized


__all__ = ["check_image", "pil_resize", "client_resize", "center_crop_size", "center_crop_resize", "prepare_images"]
