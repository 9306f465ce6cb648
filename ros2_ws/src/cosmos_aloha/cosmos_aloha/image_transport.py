"""Camera frames on image_transport's topic names: raw `<base>` (sensor_msgs/Image, rgb8) and JPEG `<base>/compressed`
(sensor_msgs/CompressedImage), so rviz, `ros2 topic` and image_transport tools read ours as any camera's.

Publishers fill a transport only while it has a subscriber, as image_transport does: a robot whose policy runs
on another host encodes JPEG for it and serializes no raw frame that nobody reads. Subscribers take the
transport a parameter names; JPEG frames are kept encoded until an observation uses them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from cosmos_aloha.conversions import image_to_msg, msg_to_image, ns_to_stamp, stamp_to_ns
from cosmos_aloha.parameters import Param
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.jpeg import DEFAULT_JPEG_QUALITY, check_quality, decode_jpeg, encode_jpeg

TRANSPORTS = ("raw", "compressed")
# compressed_image_transport's words for a JPEG made from an rgb8 image (decoders return BGR, hence "bgr8").
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"
_JPEG_START = b"\xff\xd8"

# Parameters of every node that publishes camera frames (sim, cameras; the policy for its predicted frames).
PUBLISHER_PARAMETERS = (
    Param("compressed", True, "also offer each image topic as <topic>/compressed (JPEG, sensor_msgs/CompressedImage); "
                              "frames are encoded only while someone subscribes to it"),
    Param("jpeg_quality", DEFAULT_JPEG_QUALITY, "JPEG quality 1-100 of the compressed topics (launch argument "
                                                "jpeg_quality)"),
)
# Parameter of the nodes that take camera frames (policy, planner).
SUBSCRIBER_PARAMETERS = (
    Param("image_transport", "raw", "raw: <cam>/image_raw (sensor_msgs/Image); compressed: <cam>/image_raw/compressed "
                                    "(JPEG, for a policy on another host); launch argument image_transport"),
)


def check_transport(value: str, parameter: str = "image_transport") -> str:
    if value not in TRANSPORTS:
        raise ConfigError(f"parameter {parameter!r} is {value!r}; choose raw (sensor_msgs/Image on <camera>/image_raw) "
                          f"or compressed (JPEG on <camera>/image_raw/compressed, for a policy on another host)")
    return value


def transport_topic(base: str, transport: str) -> str:
    """`cam_high/image_raw` -> `cam_high/image_raw/compressed` for the compressed transport."""
    return base if check_transport(transport) == "raw" else f"{base}/compressed"


def image_to_compressed_msg(image: np.ndarray, stamp_ns: int, frame_id: str, quality: int) -> CompressedImage:
    msg = CompressedImage()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = JPEG_FORMAT
    msg.data = encode_jpeg(image, quality).tobytes()
    return msg


class EncodedFrame:
    """A received JPEG, not yet decoded: the message's own buffer (no copy), decoded when an observation uses it."""

    __slots__ = ("data",)

    def __init__(self, data) -> None:
        self.data = data

    def decode(self) -> np.ndarray:
        return decode_jpeg(self.data)


def compressed_msg_to_frame(msg: CompressedImage) -> EncodedFrame:
    """CompressedImage -> EncodedFrame; ValueError for anything but a JPEG (png, empty, foreign data)."""
    if "jpeg" not in msg.format.lower() and "jpg" not in msg.format.lower():
        raise ValueError(f"unsupported compressed format {msg.format!r} (need JPEG, e.g. {JPEG_FORMAT!r})")
    if bytes(msg.data[:2]) != _JPEG_START:
        raise ValueError(f"compressed image of {len(msg.data)} bytes does not start like a JPEG")
    return EncodedFrame(msg.data)


def pixels(frame) -> np.ndarray:
    """HxWx3 uint8 RGB of a received frame (raw arrays as they are, JPEG decoded now)."""
    return frame.decode() if isinstance(frame, EncodedFrame) else frame


class ImagePublisher:
    """One camera's raw and compressed topics; each message is made only for a transport with subscribers.

    `create` is the node's create_publisher (or create_lifecycle_publisher for a lifecycle node).
    """

    def __init__(self, create: Callable, base_topic: str, qos, jpeg_quality: int, compressed: bool = True) -> None:
        self.quality = check_quality(jpeg_quality)
        self.raw = create(Image, base_topic, qos)
        self.compressed = create(CompressedImage, f"{base_topic}/compressed", qos) if compressed else None

    @property
    def publishers(self) -> tuple:
        return (self.raw,) if self.compressed is None else (self.raw, self.compressed)

    def publish(self, image: np.ndarray, stamp_ns: int, frame_id: str = "") -> None:
        if self.raw.get_subscription_count():
            self.raw.publish(image_to_msg(image, stamp_ns, frame_id))
        if self.compressed is not None and self.compressed.get_subscription_count():
            self.compressed.publish(image_to_compressed_msg(image, stamp_ns, frame_id, self.quality))


def subscribe_image(node, base_topic: str, transport: str, callback: Callable[[object, int], None], qos,
                    on_error: Callable[[str], None] | None = None):
    """Subscribe `base_topic` in `transport`; `callback(frame, stamp_ns)` gets an HxWx3 RGB array (raw, a view
    of the message) or an EncodedFrame (compressed; `pixels` decodes it). Bad messages go to `on_error`."""
    def convert(msg, to_frame):
        try:
            frame = to_frame(msg)
        except ValueError as exc:
            if on_error is not None:
                on_error(str(exc))
            return
        callback(frame, stamp_to_ns(msg.header.stamp))

    if check_transport(transport) == "raw":
        return node.create_subscription(Image, base_topic, lambda m: convert(m, msg_to_image), qos)
    return node.create_subscription(CompressedImage, f"{base_topic}/compressed",
                                    lambda m: convert(m, compressed_msg_to_frame), qos)


__all__ = ["TRANSPORTS", "JPEG_FORMAT", "PUBLISHER_PARAMETERS", "SUBSCRIBER_PARAMETERS", "check_transport", "transport_topic", "image_to_compressed_msg",
           "EncodedFrame", "compressed_msg_to_frame", "pixels", "ImagePublisher", "subscribe_image"]
