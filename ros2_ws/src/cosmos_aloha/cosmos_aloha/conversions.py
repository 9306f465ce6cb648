"""Message <-> plain type conversions (numpy arrays + nanosecond stamps). No logic beyond that."""
from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState

from cosmos_policy_core.robot.aloha import JOINT_NAMES  # the policy layout of the 14 joints


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def image_to_msg(image: np.ndarray, stamp_ns: int, frame_id: str = "") -> Image:
    """HxWx3 uint8 RGB -> sensor_msgs/Image (rgb8). Fills data through a buffer, not a list."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(image).tobytes())
    msg.data = data
    return msg


def msg_to_image(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> HxWx3 uint8 RGB (a view when already rgb8)."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (need rgb8 or bgr8)")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    rows = buf.reshape(msg.height, msg.step)[:, : msg.width * 3]
    image = rows.reshape(msg.height, msg.width, 3)
    return image[..., ::-1].copy() if msg.encoding == "bgr8" else image


def joints_to_msg(positions: np.ndarray, stamp_ns: int, names=JOINT_NAMES) -> JointState:
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(names),):
        raise ValueError(f"expected {len(names)} joint positions, got shape {positions.shape}")
    msg = JointState()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.name = list(names)
    msg.position = positions.tolist()
    return msg


def msg_to_joints(msg: JointState, names=JOINT_NAMES) -> np.ndarray:
    """JointState -> positions in `names` order (by name when names are present)."""
    if msg.name and list(msg.name) != list(names):
        index = {n: i for i, n in enumerate(msg.name)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(f"JointState lacks joints {missing}")
        return np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    if len(msg.position) != len(names):
        raise ValueError(f"JointState has {len(msg.position)} positions, expected {len(names)}")
    return np.asarray(msg.position, dtype=np.float64)
