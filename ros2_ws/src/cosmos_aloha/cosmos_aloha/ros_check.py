"""Cross-process ROS 2 check: one process publishes camera images and joint states, another
receives and verifies them and reports rate and latency (`cosmos-aloha doctor ros`).

    python -m cosmos_aloha.ros_check pub --seconds 5
    python -m cosmos_aloha.ros_check sub --seconds 6 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

from cosmos_aloha.conversions import (
    image_to_msg,
    joints_to_msg,
    msg_to_image,
    msg_to_joints,
    stamp_to_ns,
)
from cosmos_aloha.qos import SENSOR_QOS

IMAGE_TOPIC = "/ros_check/image_raw"
JOINT_TOPIC = "/ros_check/joint_states"


def pattern_image(index: int, height: int, width: int) -> np.ndarray:
    """A frame whose content encodes its index (checked on the receiving side)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = index % 251
    image[..., 1] = np.arange(width, dtype=np.uint16)[None, :] % 256
    image[..., 2] = np.arange(height, dtype=np.uint16)[:, None] % 256
    return image


def pattern_joints(index: int) -> np.ndarray:
    return np.arange(14, dtype=np.float64) * 0.1 + index * 1e-3


class CheckPublisher(Node):
    def __init__(self, rate_hz: float, height: int, width: int):
        super().__init__("ros_check_pub")
        self._image_pub = self.create_publisher(Image, IMAGE_TOPIC, SENSOR_QOS)
        self._joint_pub = self.create_publisher(JointState, JOINT_TOPIC, SENSOR_QOS)
        self._shape = (height, width)
        self._index = 0
        self.create_timer(1.0 / rate_hz, self._tick)

    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds
        msg = image_to_msg(pattern_image(self._index, *self._shape), now, frame_id=str(self._index))
        self._image_pub.publish(msg)
        joints = joints_to_msg(pattern_joints(self._index), now)
        joints.header.frame_id = str(self._index)
        self._joint_pub.publish(joints)
        self._index += 1


class CheckSubscriber(Node):
    def __init__(self):
        super().__init__("ros_check_sub")
        self.images: list[tuple[int, float, bool]] = []  # (index, latency_ms, content ok)
        self.joints: list[tuple[int, bool]] = []
        self.create_subscription(Image, IMAGE_TOPIC, self._on_image, SENSOR_QOS)
        self.create_subscription(JointState, JOINT_TOPIC, self._on_joints, SENSOR_QOS)

    def _on_image(self, msg: Image) -> None:
        latency_ms = (self.get_clock().now().nanoseconds - stamp_to_ns(msg.header.stamp)) / 1e6
        index = int(msg.header.frame_id)
        image = msg_to_image(msg)
        ok = np.array_equal(image, pattern_image(index, msg.height, msg.width))
        self.images.append((index, latency_ms, bool(ok)))

    def _on_joints(self, msg: JointState) -> None:
        index = int(msg.header.frame_id)
        ok = np.allclose(msg_to_joints(msg), pattern_joints(index))
        self.joints.append((index, bool(ok)))


def _spin_for(node: Node, seconds: float) -> None:
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)


def summarize(sub: CheckSubscriber, seconds: float) -> dict:
    latencies = np.array([lat for _, lat, _ in sub.images]) if sub.images else np.zeros(0)
    indices = sorted(i for i, _, _ in sub.images)
    span = (indices[-1] - indices[0] + 1) if indices else 0
    return {
        "images": len(sub.images),
        "joint_states": len(sub.joints),
        "images_ok": all(ok for *_, ok in sub.images),
        "joints_ok": all(ok for _, ok in sub.joints),
        "image_loss": (1.0 - len(indices) / span) if span else 1.0,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies.size else None,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["pub", "sub"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--json", help="write the subscriber's summary here")
    args = parser.parse_args(argv)
    rclpy.init()
    try:
        if args.role == "pub":
            node = CheckPublisher(args.rate, args.height, args.width)
            _spin_for(node, args.seconds)
            return 0
        node = CheckSubscriber()
        _spin_for(node, args.seconds)
        summary = summarize(node, args.seconds)
        text = json.dumps(summary)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text)
        return 0 if summary["images"] and summary["images_ok"] and summary["joints_ok"] else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
