"""Watch a graph split over two hosts from one of them: image and chunk latency, commands, the executor, link bytes/s.

    python -m cosmos_aloha.link_monitor --interface eth0 --seconds 20 --json link.json
On the robot it gives observation -> chunk latency across hosts (a chunk carries its observation's stamp, so
both ends are the robot's clock); `--images compressed` on the GPU host gives image latency across the link
(needs the hosts' clocks in sync). Run it with the graph's environment (`cosmos-aloha bringup --role ... --list`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Int32
from trajectory_msgs.msg import JointTrajectory

from cosmos_aloha import topics
from cosmos_aloha.conversions import stamp_to_ns
from cosmos_aloha.image_transport import TRANSPORTS, subscribe_image
from cosmos_aloha.node_runtime import apply_realtime_priority, stop_signals, watch
from cosmos_aloha.qos import OBSERVER_COMMAND_QOS, OBSERVER_SENSOR_QOS, profile
from cosmos_policy_core.robot import aloha

HEARTBEAT = "cosmos_aloha/"


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {}
    v = np.asarray(values_ms)
    return {"latency_ms_p50": float(np.percentile(v, 50)), "latency_ms_p90": float(np.percentile(v, 90)),
            "latency_ms_p99": float(np.percentile(v, 99)), "latency_ms_max": float(v.max())}


def interface_counters(interface: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a network interface (Linux sysfs; in a network namespace, that namespace's)."""
    stats = Path("/sys/class/net") / interface / "statistics"
    if not stats.is_dir():
        raise FileNotFoundError(f"no network interface {interface!r} here (see `ip link`); pass --interface")
    return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


class LinkMonitor:
    """The subscriptions and their logs; `summary()` after spinning."""

    def __init__(self, node, images: str, cameras=aloha.CAMERAS, interface: str = "") -> None:
        self.node = node
        self.interface = interface
        self.image_log = {cam: {"receive_ns": [], "latency_ms": [], "bytes": []} for cam in cameras}
        self.chunks = {"receive_ns": [], "stamp_ns": []}
        self.commands = {"receive_ns": [], "stamp_ns": [], "positions": []}
        self.joint_states: list[int] = []            # receipt times: the sensor rate the images should match
        self.status: dict[str, list] = {}          # node -> [(receive_ns, message, values)]
        self.link_samples: list[tuple[int, int, int]] = []
        self.sim = {"success": False, "success_ns": None, "max_reward": 0}
        if images != "none":
            for cam in cameras:
                subscribe_image(node, topics.image(cam).name, images, lambda f, s, c=cam: self._on_image(c, f, s),
                                OBSERVER_SENSOR_QOS)
        node.create_subscription(JointTrajectory, topics.ACTION_CHUNK.name, self._on_chunk, profile(topics.ACTION_CHUNK))
        node.create_subscription(JointState, topics.JOINT_COMMAND.name, self._on_command, OBSERVER_COMMAND_QOS)
        node.create_subscription(JointState, topics.JOINT_STATES.name, lambda m: self.joint_states.append(self.now_ns()),
                                 OBSERVER_SENSOR_QOS)
        node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS.name, self._on_diagnostics,
                                 profile(topics.DIAGNOSTICS))
        node.create_subscription(Bool, topics.SIM_SUCCESS.name, self._on_success, profile(topics.SIM_SUCCESS))
        node.create_subscription(Int32, topics.SIM_REWARD.name, self._on_reward, profile(topics.SIM_REWARD))
        if interface:
            interface_counters(interface)   # fail now, not after the run
            node.create_timer(0.1, self._sample_link)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_image(self, camera: str, frame, stamp_ns: int) -> None:
        now = self.now_ns()
        log = self.image_log[camera]
        log["receive_ns"].append(now)
        log["latency_ms"].append((now - stamp_ns) / 1e6)
        log["bytes"].append(int(frame.nbytes) if isinstance(frame, np.ndarray) else len(frame.data))

    def _on_chunk(self, msg: JointTrajectory) -> None:
        self.chunks["receive_ns"].append(self.now_ns())
        self.chunks["stamp_ns"].append(stamp_to_ns(msg.header.stamp))

    def _on_command(self, msg: JointState) -> None:
        self.commands["receive_ns"].append(self.now_ns())
        self.commands["stamp_ns"].append(stamp_to_ns(msg.header.stamp))
        self.commands["positions"].append(list(msg.position))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = self.now_ns()
        for status in msg.status:
            if status.name.startswith(HEARTBEAT):
                values = {kv.key: kv.value for kv in status.values}
                self.status.setdefault(status.name[len(HEARTBEAT):], []).append((now, status.message, values))

    def _on_success(self, msg: Bool) -> None:
        if msg.data and not self.sim["success"]:
            self.sim.update(success=True, success_ns=self.now_ns())

    def _on_reward(self, msg: Int32) -> None:
        self.sim["max_reward"] = max(self.sim["max_reward"], int(msg.data))

    def _sample_link(self) -> None:
        rx, tx = interface_counters(self.interface)
        self.link_samples.append((time.time_ns(), rx, tx))

    def summary(self) -> dict:
        images = {}
        for cam, log in self.image_log.items():
            out = {"count": len(log["receive_ns"])}
            if len(log["receive_ns"]) > 2:
                t = np.asarray(log["receive_ns"])
                out["rate_hz"] = float((len(t) - 1) / ((t[-1] - t[0]) / 1e9))
                out["bytes_mean"] = float(np.mean(log["bytes"]))
            images[cam] = {**out, **percentiles(log["latency_ms"]), "receive_ns": log["receive_ns"],
                           "latency_ms": log["latency_ms"]}
        latency = [(r - s) / 1e6 for r, s in zip(self.chunks["receive_ns"], self.chunks["stamp_ns"])]
        link = {}
        if len(self.link_samples) > 1:
            (t0, rx0, tx0), (t1, rx1, tx1) = self.link_samples[0], self.link_samples[-1]
            seconds = (t1 - t0) / 1e9
            link = {"interface": self.interface, "seconds": seconds, "rx_bytes_per_s": (rx1 - rx0) / seconds,
                    "tx_bytes_per_s": (tx1 - tx0) / seconds, "samples": self.link_samples}
        return {
            "images": images,
            "chunks": {"count": len(latency), **percentiles(latency), **self.chunks},
            "commands": {"count": len(self.commands["receive_ns"]), **self.commands},
            "joint_states": {"count": len(self.joint_states), "receive_ns": self.joint_states},
            "status": {node: {"timeline": [(t, m) for t, m, _ in entries], "last": entries[-1][2],
                              "last_message": entries[-1][1]} for node, entries in self.status.items()},
            "link": link,
            "sim": self.sim,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--images", default="none", choices=("none", *TRANSPORTS),
                        help="also subscribe the camera images in this transport and time them")
    parser.add_argument("--interface", default="", help="network interface whose bytes/s to sample (e.g. eth0)")
    parser.add_argument("--json", help="write the summary here (default: print it)")
    parser.add_argument("--rt-priority", type=int, default=0,
                        help="run under SCHED_FIFO at this priority (0 = normal scheduling), below the executor's "
                             "rt_priority, so that on a busy machine no command is lost to the monitor's waits")
    args = parser.parse_args(argv)
    stop = stop_signals()
    rclpy.init()
    node = rclpy.create_node("link_monitor")
    apply_realtime_priority(node, args.rt_priority)
    try:
        monitor = LinkMonitor(node, args.images, interface=args.interface)
    except FileNotFoundError as exc:
        print(f"link_monitor: {exc}", file=sys.stderr)
        return 2
    watch(node, args.seconds, stop)    # Ctrl-C / SIGINT ends the watch early: report what was seen
    summary = monitor.summary()
    node.destroy_node()
    rclpy.try_shutdown()
    text = json.dumps(summary)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
