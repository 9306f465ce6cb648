"""The latest synchronized observation on a node: three camera topics (raw or JPEG) + joint_states within a skew.

Subscriptions only convert and hand off to cosmos_policy_core.runtime.sync; used by the policy and planner nodes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState

from cosmos_aloha import topics
from cosmos_aloha.conversions import msg_to_joints, stamp_to_ns
from cosmos_aloha.image_transport import pixels, subscribe_image
from cosmos_aloha.qos import SENSOR_QOS
from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.runtime.policy import Observation
from cosmos_policy_core.runtime.sync import ObservationSynchronizer, SyncConfig, SyncedSet

JOINTS = "joint_states"


class ObservationSync:
    """Subscribes the cameras and joint states, keeps the last few of each, returns the newest set.

    The observation time is the joint state's stamp (the chunk starts from the measured pose). With
    `transport` compressed the frames stay JPEG until `observation` decodes the three it uses.
    `on_message` is called after every accepted message, so a node can start work the moment a set
    completes instead of polling.
    """

    def __init__(self, node: Node, cameras: Sequence[str], max_skew_ms: float, max_age_ms: float,
                 joint_topic: str = topics.JOINT_STATES.name, on_message: Callable[[], None] | None = None,
                 qos=SENSOR_QOS, transport: str = "raw", max_future_ms: float = 500.0) -> None:
        self.node = node
        self.cameras = tuple(cameras)
        self.config = SyncConfig.from_ms(self.cameras + (JOINTS,), JOINTS, max_skew_ms, max_age_ms,
                                         max_future_ms=max_future_ms)
        self.sync = ObservationSynchronizer(self.config)
        self.rejected = 0
        self._on_message = on_message or (lambda: None)
        self.subscriptions = [
            subscribe_image(node, topics.image(cam).name, transport, lambda f, s, c=cam: self._on_image(c, f, s), qos,
                            on_error=lambda why, c=cam: self._reject(f"{c}: {why}"))
            for cam in self.cameras
        ]
        self.subscriptions.append(node.create_subscription(JointState, joint_topic, self._on_joints, qos))

    def _on_image(self, camera: str, frame, stamp_ns: int) -> None:
        # `frame` is a view of the message buffer (raw) or the JPEG itself: no copy per frame.
        self.sync.add(camera, stamp_ns, frame)
        self._on_message()

    def _on_joints(self, msg: JointState) -> None:
        try:
            qpos = msg_to_joints(msg)
        except (ValueError, ShapeError) as exc:
            self._reject(f"joint state: {exc}")
            return
        self.sync.add(JOINTS, stamp_to_ns(msg.header.stamp), qpos)
        self._on_message()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        self.node.get_logger().warning(f"ignoring message: {why}", throttle_duration_sec=5.0)

    def latest(self, now_ns: int) -> SyncedSet | None:
        return self.sync.latest(now_ns)

    def why_not(self, now_ns: int) -> str:
        return self.sync.why_not(now_ns)

    def observation(self, synced: SyncedSet, task: str) -> Observation:
        """The library's Observation of a synchronized set (timestamp in seconds of the ROS clock).

        JpegDecodeError (a ValueError) when a compressed frame does not decode."""
        images = {cam: pixels(synced.items[cam]) for cam in self.cameras}
        proprio = np.asarray(synced.items[JOINTS], dtype=np.float64)
        return Observation(images=images, proprio=proprio, task=task, timestamp=synced.stamp_ns / 1e9)

    def destroy(self) -> None:
        for sub in self.subscriptions:
            self.node.destroy_subscription(sub)
        self.subscriptions = []
