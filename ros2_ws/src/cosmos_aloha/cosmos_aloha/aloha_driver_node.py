"""`aloha_driver` lifecycle node: the real follower arms behind joint_states (14 joints, 25 Hz) and cosmos/joint_command.

Backend by parameter (`interbotix` toolbox or `dynamixel` sdk, cosmos_policy_core.robot); gripper constants
from a preset name or calibration YAML. Activate: torque on, holding the current position; commands are
written as they arrive while active. Deactivate, errors and a silent executor: the arms hold. Torque goes
off only on an explicit request (torque_off_on_close).
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import JointState

from cosmos_aloha import topics
from cosmos_aloha.conversions import joints_to_msg, msg_to_joints, ns_to_stamp
from cosmos_aloha.managed_node import ManagedNode
from cosmos_aloha.node_runtime import run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.calibration.files import load_gripper_constants
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.robot.arm_layout import ARM_JOINTS, ArmState, proprio_from_follower_states
from cosmos_policy_core.robot.backend import RobotBackend
from cosmos_policy_core.robot.dynamixel_backend import DynamixelBackend, DynamixelConfig
from cosmos_policy_core.robot.interbotix_backend import InterbotixBackend, InterbotixConfig

ARM_STATE_NAMES = [*ARM_JOINTS, "gripper", "left_finger", "right_finger"]
PARAMETERS = (
    Param("backend", "interbotix", "interbotix (the xs_sdk and toolbox running) or dynamixel (owns the serial ports)"),
    Param("gripper", "aloha2", "gripper constants: aloha2, original_aloha or calibration/grippers/<robot>.yaml"),
    Param("publish_hz", aloha.CONTROL_HZ, "joint_states rate"),
    Param("command_timeout_s", 0.5, "no command for this long while active: report that the arms hold the last "
                                    "commanded position (they keep holding it)"),
    Param("left_robot_name", "follower_left", "interbotix: xs_sdk namespace of the left follower"),
    Param("right_robot_name", "follower_right", "interbotix: xs_sdk namespace of the right follower"),
    Param("robot_model", "vx300s", "follower arm model"),
    Param("setup", True, "interbotix: reboot grippers, set operating modes, torque on at activate"),
    Param("left_port", "/dev/ttyDXL_follower_left", "dynamixel: serial port of the left arm"),
    Param("right_port", "/dev/ttyDXL_follower_right", "dynamixel: serial port of the right arm"),
    Param("baudrate", 1000000, "dynamixel bus speed"),
    Param("horn_radius", 0.022, "gripper geometry (finger position from the gripper angle, vx300s)"),
    Param("arm_length", 0.036, "gripper geometry"),
    Param("set_operating_modes", True, "dynamixel: write operating modes at activate"),
    Param("torque", True, "false: read-only (e.g. to move the follower grippers by hand for calibration)"),
    Param("torque_off_on_close", False, "the explicit request to turn torque off when the node stops (the arms drop "
                                        "onto their cradles: stop with the arms at rest); false keeps them holding"),
    Param("publish_arm_states", True, "dynamixel: also publish <robot_name>/joint_states in the xs_sdk 9-entry "
                                      "layout, for tools written for the xs_sdk"),
)


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


class AlohaDriverNode(ManagedNode):
    def __init__(self, backend: RobotBackend | None = None):
        super().__init__("aloha_driver", PARAMETERS)
        p = self.p
        self.constants = load_gripper_constants(p.gripper)
        self._injected = backend
        self.backend: RobotBackend | None = None
        self._pubs: list = []
        self._arm_pubs = {}
        self._read_failures = 0
        self._last_command_ns: int | None = None
        self._holding_reported = False
        self.create_subscription(JointState, topics.JOINT_COMMAND.name, self._on_command, profile(topics.JOINT_COMMAND))
        self.create_timer(1.0 / float(p.publish_hz), self._tick, clock=self.steady_clock)

    # -- lifecycle --------------------------------------------------------------------------------------
    def on_configure(self, state):
        p = self.p
        try:
            self.backend = self._injected if self._injected is not None else make_backend(p)
        except Exception as exc:   # unknown backend, a toolbox that is not installed
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._joint_pub = self.create_lifecycle_publisher(JointState, topics.JOINT_STATES.name,
                                                          profile(topics.JOINT_STATES))
        if p.backend == "dynamixel" and p.publish_arm_states:
            self._arm_pubs = {side: self.create_lifecycle_publisher(
                JointState, topics.arm_joint_states(name).name, profile(topics.JOINT_STATES))
                for side, name in (("left", p.left_robot_name), ("right", p.right_robot_name))}
        self._pubs = [self._joint_pub, *self._arm_pubs.values()]
        self.get_logger().info(f"aloha_driver: backend {p.backend}, grippers '{self.constants.name}', "
                               f"joint_states at {float(p.publish_hz):g} Hz while active")
        return super().on_configure(state)

    def on_activate(self, state):
        try:
            self.backend.start()       # torque on (idempotent), goal = present position
            self._hold_position("activate")
        except Exception as exc:
            self.get_logger().error(f"activate failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._last_command_ns = None
        return super().on_activate(state)

    def on_deactivate(self, state):
        try:
            self._hold_position("deactivate")
        except Exception as exc:   # the servos keep their last goal either way
            self.get_logger().error(f"reading the arms to hold them failed: {exc}")
        return super().on_deactivate(state)

    def on_error(self, state):
        try:
            self._hold_position("error")
        except Exception as exc:
            self.get_logger().error(f"reading the arms to hold them failed: {exc}")
        return super().on_error(state)

    def _hold_position(self, why: str) -> None:
        """Command the measured position: the arms stay where they are, torque on."""
        if self.backend is None or not self.p.torque:
            return
        self.backend.write_command(self.backend.read_positions())
        self.get_logger().info(f"{why}: holding the current position (torque on)")

    def release(self) -> None:
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        self._pubs, self._arm_pubs = [], {}
        self.close()

    def _stamp(self, states: dict[str, ArmState], before_ns: int, after_ns: int) -> int:
        # The data's own time: the xs_sdk stamps at its read (use the older arm, the conservative
        # age for the executor's staleness check); without one, the middle of our read.
        stamps = [s.stamp_ns for s in states.values()]
        return min(stamps) if all(stamps) else (before_ns + after_ns) // 2

    def _tick(self) -> None:
        if not self.active:
            return
        self._watch_commands()
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
        if not self.active:
            return
        try:
            command = msg_to_joints(msg)
            if not np.isfinite(command).all():
                raise ValueError("command contains NaN/Inf")
            self.backend.write_command(command)
        except Exception as exc:
            self.get_logger().warning(f"command not executed: {exc}", throttle_duration_sec=2.0)
            return
        self._last_command_ns = self.steady_clock.now().nanoseconds
        if self._holding_reported:
            self._holding_reported = False
            self.get_logger().info("commands resumed")

    def _watch_commands(self) -> None:
        """The servos keep the last goal when commands stop; say so once (the executor is inactive, held,
        or gone)."""
        if self._last_command_ns is None or self._holding_reported:
            return
        silent_s = (self.steady_clock.now().nanoseconds - self._last_command_ns) / 1e9
        if silent_s > float(self.p.command_timeout_s):
            self._holding_reported = True
            self.get_logger().warning(f"no command for {silent_s:.2f} s: holding the last commanded position")
            self.publish_diagnostics()

    def diagnostic_status(self):
        level, message, values = super().diagnostic_status()
        if self.active and self._holding_reported:
            level, message = DiagnosticStatus.WARN, "holding the last commanded position (no commands)"
        if self._read_failures:
            values["read_failures"] = str(self._read_failures)
        return level, message, values

    def close(self) -> None:
        if self.backend is None:
            return
        started = time.monotonic()
        self.backend.close()
        self.backend = None
        torque = "off (torque_off_on_close)" if self.p.torque_off_on_close else "left on: the arms hold"
        self.get_logger().info(f"backend closed in {time.monotonic() - started:.2f} s, torque {torque}")


def main(argv: list[str] | None = None) -> int:
    return run_node(AlohaDriverNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
