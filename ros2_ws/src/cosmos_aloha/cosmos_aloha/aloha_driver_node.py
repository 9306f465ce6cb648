"""`aloha_driver` node: the real follower arms behind /joint_states (14 joints, 25 Hz) and /cosmos/joint_command.

Backend by parameter (`interbotix` toolbox or `dynamixel` sdk, cosmos_policy_core.robot); gripper
constants from a preset name or calibration YAML. Commands are written as they arrive.
"""
from __future__ import annotations

import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState

from cosmos_aloha.conversions import joints_to_msg, msg_to_joints, ns_to_stamp
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.qos import COMMAND_QOS, SENSOR_QOS
from cosmos_policy_core.robot.arm_layout import ARM_JOINTS, ArmState, proprio_from_follower_states
from cosmos_policy_core.robot.backend import RobotBackend
from cosmos_policy_core.robot.dynamixel_backend import DynamixelBackend, DynamixelConfig
from cosmos_policy_core.calibration.files import load_gripper_constants
from cosmos_policy_core.robot.interbotix_backend import InterbotixBackend, InterbotixConfig

COMMAND_TOPIC = "/cosmos/joint_command"
ARM_STATE_NAMES = [*ARM_JOINTS, "gripper", "left_finger", "right_finger"]
DEFAULTS = {
    "backend": "interbotix",            # interbotix | dynamixel
    "gripper": "aloha2",                # preset (aloha2, original_aloha) or calibration/grippers/*.yaml
    "publish_hz": 25.0,
    # interbotix: xs_sdk namespaces of the followers
    "left_robot_name": "follower_left",
    "right_robot_name": "follower_right",
    "robot_model": "vx300s",
    "setup": True,                      # ALOHA setup sequence (reboot gripper, modes, torque on)
    # dynamixel: serial ports and motor setup
    "left_port": "/dev/ttyDXL_follower_left",
    "right_port": "/dev/ttyDXL_follower_right",
    "baudrate": 1000000,
    "horn_radius": 0.022,
    "arm_length": 0.036,
    "set_operating_modes": True,
    "torque": True,                     # false: read-only (e.g. gripper calibration by hand)
    "torque_off_on_close": True,
    # dynamixel only: also publish /<robot_name>/joint_states in the Interbotix 9-entry layout, so
    # tools written for the xs_sdk (calibrate grippers, bag profiles) work with this backend.
    "publish_arm_states": True,
}


def make_backend(p) -> RobotBackend:
    constants = load_gripper_constants(p.gripper)
    if p.backend == "interbotix":
        config = InterbotixConfig.followers(
            robot_names=(("left", p.left_robot_name), ("right", p.right_robot_name)),
            robot_model=p.robot_model, setup=bool(p.setup))
        return InterbotixBackend(config, constants)
    if p.backend == "dynamixel":
        config = DynamixelConfig.followers(
            ports=(("left", p.left_port), ("right", p.right_port)), baudrate=int(p.baudrate),
            horn_radius=float(p.horn_radius), arm_length=float(p.arm_length),
            set_operating_modes=bool(p.set_operating_modes) and bool(p.torque), torque_on_start=bool(p.torque),
            torque_off_on_close=bool(p.torque_off_on_close))
        return DynamixelBackend(config, constants)
    raise ValueError(f"unknown backend {p.backend!r}; use 'interbotix' or 'dynamixel'")


class AlohaDriverNode(Node):
    def __init__(self, backend: RobotBackend | None = None):
        super().__init__("aloha_driver")
        p = declare_parameters(self, DEFAULTS)
        self.params = p
        self.constants = load_gripper_constants(p.gripper)
        self.backend = backend if backend is not None else make_backend(p)
        self.backend.start()
        self._joint_pub = self.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self._arm_pubs = {}
        if p.backend == "dynamixel" and p.publish_arm_states:
            self._arm_pubs = {side: self.create_publisher(JointState, f"/{name}/joint_states", SENSOR_QOS)
                              for side, name in (("left", p.left_robot_name), ("right", p.right_robot_name))}
        self.create_subscription(JointState, COMMAND_TOPIC, self._on_command, COMMAND_QOS)
        self._read_failures = 0
        self.create_timer(1.0 / float(p.publish_hz), self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"aloha_driver: backend {p.backend}, grippers '{self.constants.name}', "
                               f"/joint_states at {p.publish_hz:g} Hz")

    def _stamp(self, states: dict[str, ArmState], before_ns: int, after_ns: int) -> int:
        # The data's own time: the xs_sdk stamps at its read (use the older arm, the conservative
        # age for the executor's staleness check); without one, the middle of our read.
        stamps = [s.stamp_ns for s in states.values()]
        return min(stamps) if all(stamps) else (before_ns + after_ns) // 2

    def _tick(self) -> None:
        before = self.get_clock().now().nanoseconds
        try:
            states = self.backend.read_arm_states()
        except Exception as exc:  # a bad read must not kill the node: the executor holds on stale data
            self._read_failures += 1
            self.get_logger().error(f"reading the arms failed ({self._read_failures}x): {exc}",
                                    throttle_duration_sec=2.0)
            return
        after = self.get_clock().now().nanoseconds
        stamp = self._stamp(states, before, after)
        qpos = proprio_from_follower_states(states["left"], states["right"], self.constants)
        self._joint_pub.publish(joints_to_msg(qpos, stamp))
        for side, pub in self._arm_pubs.items():
            s = states[side]
            msg = JointState()
            msg.header.stamp = ns_to_stamp(stamp)
            msg.name = list(ARM_STATE_NAMES)
            msg.position = [*s.arm, s.gripper_joint, s.finger_position, -s.finger_position]
            pub.publish(msg)

    def _on_command(self, msg: JointState) -> None:
        try:
            command = msg_to_joints(msg)
            if not np.isfinite(command).all():
                raise ValueError("command contains NaN/Inf")
            self.backend.write_command(command)
        except Exception as exc:
            self.get_logger().warning(f"command not executed: {exc}", throttle_duration_sec=2.0)

    def close(self) -> None:
        started = time.monotonic()
        self.backend.close()
        self.get_logger().info(f"backend closed in {time.monotonic() - started:.2f} s")


def main(argv: list[str] | None = None) -> int:
    return run_node(AlohaDriverNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
