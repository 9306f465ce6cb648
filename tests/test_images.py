"""Image pipeline: the centre crop as torchvision's v1 tensor resize, and the device pipeline bit for bit with PIL."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.runtime.images import (
    center_crop_resize, center_crop_resize_tensor, pil_resize, pil_resize_tensor, prepare_images, prepare_images_tensor,
)


def antialiased_bilinear_taps(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """(first input index, float32 weights) per output pixel of antialiased bilinear resampling, written from the
    algorithm ATen documents for `_upsample_bilinear2d_aa` (PIL's), in its float32 arithmetic: output pixel i is
    centred at scale * (i + 0.5) in the input (scale = in / out); the triangle filter is widened by the scale
    when shrinking (support = scale, taps scaled by 1 / scale, else support 1); its taps run over
    [int(center - support + 0.5), int(center + support + 0.5)) clipped to the image; the weights are divided by
    their sum."""
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    taps = []
    for i in range(out_size):
        center = f32(f64(scale) * (i + 0.5))
        lo = max(int(f64(center - support) + 0.5), 0)
        hi = min(int(f64(center + support) + 0.5), in_size)
        x = np.abs((np.arange(lo, hi).astype(f32) - center).astype(f64) + 0.5) * f64(invscale)
        w = np.where(x.astype(f32) < 1.0, f32(1.0) - x.astype(f32), f32(0.0)).astype(f32)
        total = f32(0.0)
        for v in w:
            total = f32(total + v)
        taps.append((lo, (w / total).astype(f32)))
    return taps


def resample_last_axis(x: np.ndarray, taps) -> np.ndarray:
    """One separable pass in float32, each product added to the running sum with one rounding (a fused
    multiply-add, as the compiled kernel; double precision holds the exact product and sum here)."""
    out = np.empty(x.shape[:-1] + (len(taps),), np.float32)
    for i, (lo, w) in enumerate(taps):
        acc = np.zeros(x.shape[:-1])
        for j, wj in enumerate(w):
            acc = (x[..., lo + j].astype(np.float64) * np.float64(wj) + acc).astype(np.float32).astype(np.float64)
        out[..., i] = acc
    return out


def reference_center_crop(images_N_S_S_3: np.ndarray, crop: int) -> np.ndarray:
    """The reference server's rule, unrounded: torchvision's center_crop, then its v1 tensor resize of a uint8
    image (cast to float32, antialiased bilinear, horizontal pass then vertical)."""
    size = images_N_S_S_3.shape[1]
    top = int(round((size - crop) / 2.0))
    x_N_C_H_W = images_N_S_S_3[:, top:top + crop, top:top + crop].astype(np.float32).transpose(0, 3, 1, 2)
    taps = antialiased_bilinear_taps(crop, size)
    horizontal = resample_last_axis(x_N_C_H_W, taps)
    return resample_last_axis(horizontal.swapaxes(-1, -2), taps).swapaxes(-1, -2).transpose(0, 2, 3, 1)


def _frames(seed: int, n: int, height: int, width: int) -> np.ndarray:
    """Half noise, half smooth gradients (camera-like): both kinds of content."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = 127.5 + 127 * np.sin(xx[None, ..., None] / 9.0 + yy[None, ..., None] / 13.0
                                  + rng.uniform(0, 6, (n, 1, 1, 3)))
    noise[n // 2:] = smooth[n // 2:].astype(np.uint8)
    return noise


def test_center_crop_is_float_resize_rounded_once():
    images = _frames(1, 4, 224, 224)
    got = center_crop_resize(images)
    unrounded = reference_center_crop(images, 212)
    # A kernel built without fused multiply-adds may land one float32 step away, which changes the rounding
    # only within 1e-4 of a half level (exact halves, e.g. the mean of two pixels, round to even either way):
    # those few values are left out.
    offset = np.abs(unrounded - np.floor(unrounded) - 0.5)
    decided = (offset > 1e-4) | (offset == 0)
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(got[decided], np.round(unrounded[decided]).astype(np.uint8))
    assert (np.abs(got - unrounded) <= 0.5 + 1e-4).all()
    # The uint8 kernel (rounding between its passes) is one level off on many values: the check above sees it.
    x = torch.from_numpy(images).permute(0, 3, 1, 2)[:, :, 6:218, 6:218].contiguous()
    two_roundings = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True).permute(0, 2, 3, 1).numpy()
    assert (two_roundings != np.round(unrounded)).mean() > 0.05
    # a constant image stays constant: the crop is centred and the weights sum to one
    assert (center_crop_resize(np.full((1, 224, 224, 3), 77, np.uint8)) == 77).all()


@pytest.mark.parametrize("height,width,size", [(480, 640, 256), (256, 256, 224), (120, 160, 256), (64, 64, 224),
                                               (126, 197, 58), (300, 200, 150), (45, 181, 19)])
def test_pil_resize_tensor_is_pil(height, width, size):
    """Pillow's integer bicubic, both pass orders (the last three shrink the height first or not)."""
    images = _frames(height + width, 2, height, width)
    got = pil_resize_tensor(torch.from_numpy(images).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()
    for image, out in zip(images, got):
        np.testing.assert_array_equal(out, np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)))
        assert np.array_equal(out, pil_resize(image, size))


@pytest.mark.parametrize("crop_area", [0.9, None])
def test_prepare_images_tensor_is_the_cpu_pipeline(crop_area):
    """Three camera frames of the robot's size and one already at the model size, with and without the crop."""
    frames = list(_frames(7, 3, 480, 640)) + [_frames(8, 1, 224, 224)[0]]
    cpu = prepare_images(frames, 224, crop_area=crop_area)
    device = prepare_images_tensor(frames, 224, crop_area=crop_area)
    assert device.shape == (4, 3, 224, 224) and device.dtype == torch.uint8
    np.testing.assert_array_equal(device.permute(0, 2, 3, 1).numpy(), cpu)


def test_center_crop_tensor_shape_errors():
    with pytest.raises(ShapeError, match="square"):
        center_crop_resize_tensor(torch.zeros(1, 3, 10, 12, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="uint8"):
        center_crop_resize_tensor(torch.zeros(1, 3, 10, 10))
    with pytest.raises(ShapeError, match="uint8"):
        prepare_images_tensor([torch.zeros(10, 10, 3)], 224)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prepare_images_on_cuda_is_the_cpu_pipeline():
    frames = list(_frames(9, 3, 480, 640))
    cpu = prepare_images(frames, 224)
    cuda = prepare_images_tensor(frames, 224, device="cuda")
    assert cuda.device.type == "cuda"
    diff = np.abs(cuda.permute(0, 2, 3, 1).cpu().numpy().astype(np.int64) - cpu)
    # The resize to 224 is integer arithmetic (exact); the crop's float32 resize may round a hair apart.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
