"""Blocking reads of live joint states for the calibration CLI: per-arm Interbotix topics and /joint_states.

Spins a private node in its own context, so `cosmos-aloha calibrate` needs no running executor.
"""
from __future__ import annotations

import time

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import JointState

from cosmos_aloha import topics
from cosmos_aloha.conversions import msg_to_joints, stamp_to_ns
from cosmos_aloha.qos import SENSOR_QOS
from cosmos_policy_core.robot.arm_layout import SIDES, ArmState, arm_state_from_joint_state
from cosmos_policy_core.robot.backend import HardwareError

ROLES = ("leader", "follower")


class RosArmStateReader:
    """`read(role, side)` returns the next /<role>_<side>/joint_states; `read_qpos()` the next /joint_states."""

    def __init__(self, timeout_s: float = 5.0, joint_states_topic: str = topics.JOINT_STATES.name):
        self.timeout_s = timeout_s
        self._context = Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node("cosmos_calibrate", context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._latest: dict[str, JointState] = {}
        self._seen: dict[str, int] = {}
        self._topics = {f"{role}_{side}": topics.arm_joint_states(f"{role}_{side}").name
                        for role in ROLES for side in SIDES}
        self._topics["qpos"] = joint_states_topic
        for key, topic in self._topics.items():
            self._node.create_subscription(JointState, topic, lambda m, k=key: self._store(k, m), SENSOR_QOS)

    def _store(self, key: str, msg: JointState) -> None:
        self._latest[key] = msg
        self._seen[key] = self._seen.get(key, 0) + 1

    def _next(self, key: str) -> JointState:
        count = self._seen.get(key, 0)
        deadline = time.monotonic() + self.timeout_s
        while self._seen.get(key, 0) == count:
            if time.monotonic() > deadline:
                raise HardwareError(f"no message on {self._topics[key]} within {self.timeout_s:g} s: is the driver "
                                    "running, and does this shell have the same ROS_DOMAIN_ID and "
                                    "FASTDDS_BUILTIN_TRANSPORTS / ROS_AUTOMATIC_DISCOVERY_RANGE as the robot?")
            self._executor.spin_once(timeout_sec=0.05)
        return self._latest[key]

    def read(self, role: str, side: str) -> ArmState:
        msg = self._next(f"{role}_{side}")
        return arm_state_from_joint_state(list(msg.name), list(msg.position), stamp_to_ns(msg.header.stamp))

    def read_qpos(self) -> np.ndarray:
        return msg_to_joints(self._next("qpos"))

    def close(self) -> None:
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)
