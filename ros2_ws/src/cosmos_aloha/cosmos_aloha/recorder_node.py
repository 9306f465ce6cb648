"""`recorder` node: records the preset topics (config/record_topics.yaml) into a rosbag2 directory via rosbags.

Messages are taken serialized (raw CDR) and written as is; episodes are delimited by cosmos/episode markers
(published here by the cosmos/recorder/{start,stop,stop_failure} services, or by anyone on the topic).
Relative preset names are subscribed in the recorder's namespace and stored under the root (`/joint_states`),
so bags of every cell convert with one profile.
"""
from __future__ import annotations

import importlib
import json

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import String
from std_srvs.srv import Trigger

from cosmos_aloha import topics
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.data.bags import RecordPreset, SplitBagWriter, TopicSpec

PARAMETERS = (
    Param("output", "", "bag directory to create (required)"),
    Param("preset", "", "topic preset YAML; \"\" = the package's config/record_topics.yaml"),
    Param("split_seconds", 0.0, "close a complete .mcap file this often; 0 = the preset's value"),
    Param("compress", False, "zstd chunk compression inside the .mcap files"),
    Param("task", "", "task string of episodes started by the start service"),
    Param("sim", False, "mark episodes as simulated"),
    Param("max_seconds", 0.0, "stop recording after this long; 0 = until Ctrl-C / SIGTERM"),
    Param("queue_depth", 100, "subscription depth: the writer may stall on disk without losing frames"),
)


def bag_topic(name: str) -> str:
    """The name a preset topic is stored under: relative names at the root, whatever the namespace."""
    return name if name.startswith("/") else f"/{name}"


INFINITE_SEC, INFINITE_NSEC = 2147483647, 4294967295   # rosbag2's encoding of an infinite duration


def _duration(d) -> dict:
    ns = int(d.nanoseconds)
    if ns >= 2**63 - 1 or ns < 0:
        return {"sec": INFINITE_SEC, "nsec": INFINITE_NSEC}
    sec, nsec = divmod(ns, 1_000_000_000)
    return {"sec": sec, "nsec": nsec}


def qos_to_dict(qos: QoSProfile) -> dict:
    """An rclpy QoS profile in the form metadata.yaml records (offered_qos_profiles)."""
    return {
        "history": qos.history.name.lower(),
        "depth": int(qos.depth),
        "reliability": qos.reliability.name.lower(),
        "durability": qos.durability.name.lower(),
        "deadline": _duration(qos.deadline),
        "lifespan": _duration(qos.lifespan),
        "liveliness": qos.liveliness.name.lower(),
        "liveliness_lease_duration": _duration(qos.liveliness_lease_duration),
        "avoid_ros_namespace_conventions": bool(qos.avoid_ros_namespace_conventions),
    }


def adapted_qos(offered: list[QoSProfile], depth: int) -> QoSProfile:
    """What `ros2 bag record` does: reliable / transient-local only when every publisher offers it."""
    reliable = bool(offered) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
    latched = bool(offered) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def message_class(msgtype: str):
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class RecorderNode(Node):
    def __init__(self):
        super().__init__("recorder")
        p = declare_parameters(self, PARAMETERS)
        if not p.output:
            raise ValueError("parameter 'output' (the bag directory to create) is required")
        self.params = p
        self.preset = RecordPreset.load(p.preset or None)
        split = float(p.split_seconds) or self.preset.split_seconds
        self.writer = SplitBagWriter(p.output, split_seconds=split, compress=bool(p.compress),
                                     custom_data={"recorder": "cosmos_aloha", "task": str(p.task)})
        self.episode_topic = self.preset.episode_topic
        self.active = False
        self.task = str(p.task)
        self._pending = dict(self.preset.topics)   # topic -> type, until a publisher is seen
        self._record_subscriptions = []
        self._started_ns = self.get_clock().now().nanoseconds
        self._last_report_ns = self._started_ns
        self._episode_pub = self.create_publisher(String, self.episode_topic, profile(topics.EPISODE))
        self.create_service(Trigger, topics.RECORDER_START.name, self._on_start)
        self.create_service(Trigger, topics.RECORDER_STOP.name, lambda req, res: self._on_stop(res, True))
        self.create_service(Trigger, topics.RECORDER_STOP_FAILURE.name, lambda req, res: self._on_stop(res, False))
        self.create_timer(0.25, self._tick)
        self._discover()
        self.get_logger().info(f"recording {len(self.preset.topics)} topics into {p.output} "
                               f"(a complete .mcap every {split:g} s)")

    # -- subscriptions -----------------------------------------------------------------------------
    def _discover(self) -> None:
        """Subscribe to each preset topic once a publisher exists, with QoS adapted to the publishers."""
        for topic, msgtype in list(self._pending.items()):
            infos = self.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            offered = [info.qos_profile for info in infos]
            self.writer.add_topic(TopicSpec(bag_topic(topic), msgtype, tuple(qos_to_dict(q) for q in offered)))
            self._record_subscriptions.append(self.create_subscription(
                message_class(msgtype), topic, self._make_callback(topic),
                adapted_qos(offered, int(self.params.queue_depth)), raw=True,
            ))
            del self._pending[topic]
            self.get_logger().info(f"subscribed {topic} ({msgtype}, {len(infos)} publisher(s))")

    def _make_callback(self, topic: str):
        def on_message(raw: bytes) -> None:
            self.writer.write(bag_topic(topic), self.get_clock().now().nanoseconds, raw)
            if topic == self.episode_topic:
                self._on_episode_event(raw)
        return on_message

    def _on_episode_event(self, raw: bytes) -> None:
        try:
            event = json.loads(deserialize_message(raw, String).data)
        except (ValueError, TypeError):
            self.get_logger().warning("episode marker is not JSON; recorded but ignored")
            return
        if event.get("event") == "start":
            self.active, self.task = True, str(event.get("task", self.task))
        elif event.get("event") == "stop":
            self.active = False
            self.writer.split()   # the finished episode is on disk in complete files right away

    # -- episodes ----------------------------------------------------------------------------------
    def _publish_event(self, event: str, **fields) -> None:
        payload = {"event": event, "task": self.task, "sim": bool(self.params.sim),
                   "stamp_ns": self.get_clock().now().nanoseconds, **fields}
        self._episode_pub.publish(String(data=json.dumps(payload)))

    def _on_start(self, request, response):
        if self.active:
            response.success, response.message = False, "an episode is already being recorded; stop it first"
            return response
        self.active = True
        self._publish_event("start")
        response.success, response.message = True, f"episode started (task {self.task!r})"
        return response

    def _on_stop(self, response, success: bool):
        if not self.active:
            response.success, response.message = False, "no episode is being recorded"
            return response
        self.active = False
        self._publish_event("stop", success=success)
        response.success, response.message = True, f"episode stopped (success={success})"
        return response

    # -- housekeeping ------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds
        if self._pending:
            self._discover()
        self.writer.split_if_due(now)
        if now - self._last_report_ns > 10e9:
            self._last_report_ns = now
            self.get_logger().info(f"{self.writer.message_count} messages recorded"
                                   + (f"; waiting for {sorted(self._pending)}" if self._pending else ""))
        if self.params.max_seconds and now - self._started_ns >= self.params.max_seconds * 1e9:
            self.get_logger().info(f"{self.params.max_seconds:g} s recorded, stopping")
            self.context.try_shutdown()

    def close(self) -> None:
        """Close the bag (runs on Ctrl-C, SIGTERM and max_seconds); an open episode is marked failed."""
        if self.active and bag_topic(self.episode_topic) in self.writer.topics:
            stop = {"event": "stop", "task": self.task, "success": False,
                    "reason": "recorder shut down mid-episode", "stamp_ns": self.get_clock().now().nanoseconds}
            self.writer.write(bag_topic(self.episode_topic), stop["stamp_ns"],
                              serialize_message(String(data=json.dumps(stop))))
            self.active = False
        self.writer.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(RecorderNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
