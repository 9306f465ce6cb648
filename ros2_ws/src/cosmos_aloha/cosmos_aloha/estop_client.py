"""Latch or clear the executor's e-stop from a shell: `cosmos-aloha estop [--clear] [--console]`.

The request goes out on cosmos/estop/request (reliable, transient-local) the moment the participant exists,
with no wait for discovery: the executor gets it as soon as it matches, and the client stays until the
executor's cosmos/estop/engaged confirms it. `--console` keeps one participant up, so each Enter latches
within the transport's delay.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Bool

from cosmos_aloha import topics
from cosmos_aloha.qos import profile


class EStopClient:
    """One participant with the request publisher and the engaged-state subscription."""

    def __init__(self, namespace: str = "") -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("cosmos_estop", namespace=namespace or None, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.engaged: bool | None = None      # the executor's state, as last reported
        self._reports = 0
        self._pub = self.node.create_publisher(Bool, topics.ESTOP_REQUEST.name, profile(topics.ESTOP_REQUEST))
        self.node.create_subscription(Bool, topics.ESTOP_ENGAGED.name, self._on_engaged, profile(topics.ESTOP_ENGAGED))

    def _on_engaged(self, msg: Bool) -> None:
        self.engaged = bool(msg.data)
        self._reports += 1

    def request(self, engage: bool, timeout_s: float) -> tuple[bool, float]:
        """Publish the request; (confirmed, seconds from publish to the executor's confirmation)."""
        reports = self._reports
        start = time.monotonic()
        self._pub.publish(Bool(data=engage))
        matched = self._pub.get_subscription_count() > 0
        while time.monotonic() - start < timeout_s:
            if not matched and self._pub.get_subscription_count() > 0:
                # A late-joining reader gets the latched sample only at the writer's next heartbeat; sent
                # again now, it arrives as soon as the executor is matched (a repeated request changes nothing).
                matched = True
                self._pub.publish(Bool(data=engage))
            self.executor.spin_once(timeout_sec=0.002)
            # The latched state may already say so (an e-stop someone else latched); a newer report must.
            if self.engaged is engage and (self._reports > reports or not engage):
                return True, time.monotonic() - start
        return False, time.monotonic() - start

    def close(self) -> None:
        self.node.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)


def _say(engage: bool, ok: bool, seconds: float, timeout_s: float, out: TextIO) -> None:
    what = "e-stop engaged (latched until cleared)" if engage else "e-stop cleared"
    if ok:
        print(f"{what}: confirmed by the executor {seconds * 1e3:.0f} ms after the request", file=out)
    else:
        print(f"no confirmation from the executor within {timeout_s:g} s (is it running, with the same "
              "ROS_DOMAIN_ID and namespace?); the request stays latched while this client runs", file=out)


def run_once(engage: bool, namespace: str, timeout_s: float, out: TextIO = sys.stdout) -> int:
    client = EStopClient(namespace)
    try:
        ok, seconds = client.request(engage, timeout_s)
    finally:
        client.close()
    _say(engage, ok, seconds, timeout_s, out)
    return 0 if ok else 1


def run_console(namespace: str, timeout_s: float, read_line: Callable[[], str] = sys.stdin.readline,
                out: TextIO = sys.stdout) -> int:
    """Enter: e-stop; `c` Enter: clear; `q` or end of input: quit (the e-stop stays as it is)."""
    client = EStopClient(namespace)
    print("e-stop console: Enter = e-stop, c + Enter = clear, q = quit", file=out, flush=True)
    try:
        while True:
            line = read_line()
            if line == "" or line.strip().lower() == "q":
                return 0
            engage = line.strip().lower() != "c"
            ok, seconds = client.request(engage, timeout_s)
            _say(engage, ok, seconds, timeout_s, out)
            out.flush()
    finally:
        client.close()
