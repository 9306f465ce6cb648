"""Engage or clear the executor's e-stop from a shell where the `ros2` CLI is absent.

    python -m cosmos_aloha.estop_client            # /cosmos/estop       (latches a hold)
    python -m cosmos_aloha.estop_client --clear    # /cosmos/estop_clear
"""
from __future__ import annotations

import argparse
import sys

import rclpy
from std_srvs.srv import Trigger


def call_trigger(service: str, timeout_s: float) -> tuple[bool, str]:
    rclpy.init()
    node = rclpy.create_node("cosmos_estop_client")
    try:
        client = node.create_client(Trigger, service)
        if not client.wait_for_service(timeout_sec=timeout_s):
            return False, f"service {service} not available after {timeout_s:g} s (is the executor running, same ROS_DOMAIN_ID?)"
        future = client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout_s)
        if future.result() is None:
            return False, f"no answer from {service} within {timeout_s:g} s"
        return bool(future.result().success), future.result().message
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clear", action="store_true", help="clear a latched e-stop")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    service = "/cosmos/estop_clear" if args.clear else "/cosmos/estop"
    ok, message = call_trigger(service, args.timeout)
    print(f"{service}: {'ok' if ok else 'FAILED'} {message}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
