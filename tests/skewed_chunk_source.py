"""A chunk source on a host whose clock runs `--offset-s` ahead: it stamps chunks with its own clock, not the
observation's, so they arrive stamped in the executor's future (the executor must refuse them).

    python tests/skewed_chunk_source.py --offset-s 2 --seconds 3
Each chunk holds the latest measured pose (harmless if it were played). Prints how many it published.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import rclpy
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from cosmos_aloha import topics
from cosmos_aloha.chunks import chunk_to_msg
from cosmos_aloha.conversions import msg_to_joints
from cosmos_aloha.qos import profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset-s", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--period-s", type=float, default=0.2)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("skewed_chunk_source")
    latest: dict = {}
    node.create_subscription(JointState, topics.JOINT_STATES.name,
                             lambda m: latest.update(q=msg_to_joints(m)), profile(topics.JOINT_STATES))
    pub = node.create_publisher(JointTrajectory, topics.ACTION_CHUNK.name, profile(topics.ACTION_CHUNK))
    # Publish only once the executor's subscription has matched (discovery across hosts takes a moment), and
    # spin a little after the last chunk so that reliable delivery completes before this node goes.
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and not any(
            info.node_name == "executor" for info in node.get_subscriptions_info_by_topic(topics.ACTION_CHUNK.name)):
        rclpy.spin_once(node, timeout_sec=0.1)
    while time.monotonic() < deadline and pub.get_subscription_count() < len(
            node.get_subscriptions_info_by_topic(topics.ACTION_CHUNK.name)):
        rclpy.spin_once(node, timeout_sec=0.1)
    sent, next_s = 0, 0.0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
        if "q" in latest and time.monotonic() >= next_s:
            stamp = node.get_clock().now().nanoseconds + int(args.offset_s * 1e9)
            pub.publish(chunk_to_msg(np.repeat(latest["q"][None], 50, axis=0), stamp, 40_000_000))
            sent += 1
            next_s = time.monotonic() + args.period_s
    linger = time.monotonic() + 1.0
    while time.monotonic() < linger:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(f"published {sent} chunks stamped {args.offset_s:+g} s", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
