"""Observe a running cosmos_aloha graph for a while and report rates, latencies and task state as JSON.

    python -m cosmos_aloha.graph_monitor --seconds 15 --json out.json
Used by `cosmos-aloha demo`, the composed-graph test and by hand; run it with the graph's environment.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int32
from trajectory_msgs.msg import JointTrajectory

from cosmos_aloha import topics
from cosmos_aloha.conversions import stamp_to_ns
from cosmos_aloha.node_runtime import apply_realtime_priority, stop_signals, watch
from cosmos_aloha.qos import OBSERVER_COMMAND_QOS, OBSERVER_SENSOR_QOS, profile
from cosmos_policy_core.robot.aloha import CAMERAS

CAMERA_TOPICS = tuple(topics.image(c).name for c in CAMERAS)
PREDICTED_TOPICS = tuple(topics.predicted_image(c).name for c in CAMERAS)
PLAN_PREDICTED_TOPICS = tuple(topics.predicted_image(c, topics.PLAN_PREDICTED).name for c in CAMERAS)


class TopicLog:
    """Receive times, header-stamp latencies and (for images) sizes of one topic."""

    def __init__(self) -> None:
        self.receive_ns: list[int] = []
        self.latency_ms: list[float] = []
        self.shapes: set[tuple[int, int]] = set()
        self.values: list = []

    def add(self, receive_ns: int, stamp_ns: int | None) -> None:
        self.receive_ns.append(receive_ns)
        if stamp_ns:
            self.latency_ms.append((receive_ns - stamp_ns) / 1e6)

    def summary(self, skip_s: float) -> dict:
        times = np.asarray(self.receive_ns, dtype=np.int64)
        out: dict = {"count": int(times.size)}
        if times.size:
            # The first seconds include discovery and start-up; rates are measured after `skip_s`.
            window = times[times >= times[0] + skip_s * 1e9]
            if window.size > 2:
                periods = np.diff(window) / 1e6
                out["rate_hz"] = float((window.size - 1) / ((window[-1] - window[0]) / 1e9))
                out["period_ms_p50"] = float(np.percentile(periods, 50))
                out["period_ms_p99"] = float(np.percentile(periods, 99))
                out["period_ms_max"] = float(periods.max())
        if self.latency_ms:
            lat = np.asarray(self.latency_ms)
            out["latency_ms_p50"] = float(np.percentile(lat, 50))
            out["latency_ms_p99"] = float(np.percentile(lat, 99))
        if self.shapes:
            out["shapes"] = sorted(self.shapes)
        return out


class GraphMonitor(Node):
    def __init__(self, namespace: str = ""):
        super().__init__("graph_monitor", namespace=namespace or None)
        self.logs: dict[str, TopicLog] = {}
        for topic in CAMERA_TOPICS:
            self._watch(Image, topic, OBSERVER_SENSOR_QOS, image=True)
        for topic in PREDICTED_TOPICS + PLAN_PREDICTED_TOPICS:
            self._watch(Image, topic, profile(topics.image("cam")), image=True)
        self._watch(JointState, topics.JOINT_STATES.name, OBSERVER_SENSOR_QOS)
        self._watch(JointState, topics.JOINT_COMMAND.name, OBSERVER_COMMAND_QOS, keep=True)
        self._watch(JointTrajectory, topics.ACTION_CHUNK.name, profile(topics.ACTION_CHUNK))
        self._watch(JointTrajectory, topics.PLAN_CHUNK.name, profile(topics.PLAN_CHUNK))
        self.success = False
        self.max_reward = 0
        self.executor_status: dict[str, str] = {}
        self.statuses: dict[str, dict] = {}   # every diagnostics status by name, the last one received
        self.events: list[dict] = []           # each status whose level or message changed, in order
        self.create_subscription(Bool, topics.SIM_SUCCESS.name, self._on_success, profile(topics.SIM_SUCCESS))
        self.create_subscription(Int32, topics.SIM_REWARD.name, self._on_reward, profile(topics.SIM_REWARD))
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS.name, self._on_diagnostics,
                                 profile(topics.DIAGNOSTICS))

    def _watch(self, msg_type, topic: str, qos, image: bool = False, keep: bool = False) -> None:
        log = self.logs.setdefault(topic, TopicLog())

        def callback(msg) -> None:
            log.add(self.get_clock().now().nanoseconds, stamp_to_ns(msg.header.stamp))
            if image:
                log.shapes.add((int(msg.height), int(msg.width)))
            if keep:
                log.values.append(list(msg.position))

        self.create_subscription(msg_type, topic, callback, qos)

    def _on_success(self, msg: Bool) -> None:
        self.success = self.success or bool(msg.data)

    def _on_reward(self, msg: Int32) -> None:
        self.max_reward = max(self.max_reward, int(msg.data))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            level = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else int(status.level)
            previous = self.statuses.get(status.name)
            if previous is None or (previous["level"], previous["message"]) != (level, status.message):
                self.events.append({"t": now, "name": status.name, "level": level, "message": status.message})
            self.statuses[status.name] = {"level": level, "message": status.message, "values": values}
            if status.name == "cosmos_aloha/executor":
                self.executor_status = {**values, "message": status.message}

    def summary(self, skip_s: float) -> dict:
        commands = np.asarray(self.logs[topics.JOINT_COMMAND.name].values, dtype=float)
        steps = np.abs(np.diff(commands, axis=0)).max(axis=1) if len(commands) > 1 else np.zeros(0)
        return {
            "topics": {t: log.summary(skip_s) for t, log in self.logs.items()},
            "command_step_max": float(steps.max()) if steps.size else None,
            "command_finite": bool(np.isfinite(commands).all()) if commands.size else None,
            "sim_success": self.success,
            "sim_max_reward": self.max_reward,
            "executor": self.executor_status,
            "diagnostics": self.statuses,
            "events": self.events,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip", type=float, default=3.0, help="seconds of start-up excluded from rates")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--commands", help="write every received joint command (T, 14) here as .npy")
    parser.add_argument("--namespace", default="", help="the graph's namespace (launch argument namespace)")
    parser.add_argument("--rt-priority", type=int, default=0,
                        help="run under SCHED_FIFO at this priority (0 = normal scheduling), so that on a busy "
                             "machine receive times are the graph's, not those of a monitor waiting for a CPU; "
                             "below the executor's rt_priority")
    args = parser.parse_args(argv)
    stop = stop_signals()
    rclpy.init()
    node = GraphMonitor(args.namespace)
    apply_realtime_priority(node, args.rt_priority)
    watch(node, args.seconds, stop)    # Ctrl-C ends the watch early: report what was seen
    summary = node.summary(args.skip)
    if args.commands:
        np.save(args.commands, np.asarray(node.logs[topics.JOINT_COMMAND.name].values, dtype=float))
    node.destroy_node()
    rclpy.try_shutdown()
    text = json.dumps(summary)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
