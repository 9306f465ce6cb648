"""JPEG for camera frames that cross a network: HxWx3 uint8 RGB <-> JPEG bytes through OpenCV (libjpeg-turbo).

The ROS image transport (`<camera>/image_raw/compressed`) and `sim eval --jpeg-quality` share it, so the
closed loop in the sim sees exactly the compression a remote policy sees.
"""
from __future__ import annotations

import numpy as np

from cosmos_policy_core.errors import ConfigError, DataError, ShapeError

# Sim frames lose a mean 0.2 grey levels at 90 and shrink ~50x (921,600 -> ~18,000 bytes at 480x640); what
# it does to the shipped policy's actions and success: benchmarks/RESULTS.md, "The policy on a remote host".
DEFAULT_JPEG_QUALITY = 90


class JpegDecodeError(DataError, ValueError):
    """Bytes that are not a decodable JPEG (a truncated or foreign message)."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - only without the data extra
        raise ConfigError("JPEG images need OpenCV: pip install opencv-python-headless "
                          "(or the repository's extra: pip install -e '.[data]')") from exc
    return cv2


def check_quality(quality: int) -> int:
    if isinstance(quality, bool) or int(quality) != quality or not 1 <= int(quality) <= 100:
        raise ConfigError(f"jpeg quality must be an integer in 1..100 (libjpeg's scale; {DEFAULT_JPEG_QUALITY} "
                          f"is the default), got {quality!r}")
    return int(quality)


def encode_jpeg(image_H_W_3: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> np.ndarray:
    """RGB uint8 frame -> JPEG as a 1-D uint8 array (4:2:0, baseline: what every decoder reads)."""
    cv2 = _cv2()
    image = np.asarray(image_H_W_3)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError(f"JPEG encoding needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, check_quality(quality)])
    if not ok:  # pragma: no cover - OpenCV fails only on allocation errors here
        raise DataError(f"OpenCV could not JPEG-encode a {image.shape} image")
    return data.reshape(-1)


def decode_jpeg(data) -> np.ndarray:
    """JPEG bytes (bytes, array.array, memoryview or uint8 array) -> HxWx3 uint8 RGB.

    The input is read in place (np.frombuffer, no copy of the message) and decoded straight to RGB, so
    the decoded frame is the only new buffer.
    """
    cv2 = _cv2()
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise JpegDecodeError("empty JPEG data: the message carries no image")
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag)
    if image is None:
        raise JpegDecodeError(f"{buf.size} bytes are not a decodable JPEG (truncated, or another format)")
    if rgb_flag is None:  # OpenCV < 4.10 decodes to BGR only: swap in place
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return image


def jpeg_round_trip(image_H_W_3: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> np.ndarray:
    """The frame as a subscriber of the compressed topic receives it."""
    return decode_jpeg(encode_jpeg(image_H_W_3, quality))


__all__ = ["DEFAULT_JPEG_QUALITY", "JpegDecodeError", "check_quality", "encode_jpeg", "decode_jpeg",
           "jpeg_round_trip"]
