"""Publish /clock as this machine's time plus `--offset-s`: nodes started with use_sim_time:=true then keep the
time of a host whose clock is that far off (a GPU machine without clock sync, in the two-host tests).

    python tests/offset_clock.py --offset-s -2 --seconds 60
"""
from __future__ import annotations

import argparse
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset-s", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hz", type=float, default=200.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("offset_clock")
    pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    offset_ns = int(args.offset_s * 1e9)
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            ns = time.time_ns() + offset_ns
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
            pub.publish(msg)
            time.sleep(1.0 / args.hz)
    except KeyboardInterrupt:
        pass
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
