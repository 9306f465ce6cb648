"""`teleop` node: demonstrations on cosmos/joint_command (25 Hz) with episode markers on cosmos/episode.

Real robot: leader arms (interbotix toolbox, leader JointState topics, or dynamixel) mapped to follower
commands. Sim: the scripted demo of the task, replayed scene by scene after resetting aloha_sim.
"""
from __future__ import annotations

import enum

import numpy as np
from rcl_interfaces.srv import SetParameters
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from cosmos_aloha import topics
from cosmos_aloha.conversions import joints_to_msg, ns_to_stamp, stamp_to_ns
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.robot.arm_layout import ARM_JOINTS, LEADER_NAMES, SIDES, ArmState, arm_state_from_joint_state
from cosmos_policy_core.calibration.files import load_gripper_constants
from cosmos_policy_core.robot.teleop import LeaderArmsSource, TeleopSource, episode_event

PARAMETERS = (
    Param("source", "auto", "auto (the sim's reset service answers -> scripted, else interbotix), scripted, "
                            "interbotix, topics or dynamixel (hardware.md)"),
    Param("gripper", "aloha2", "leader / follower gripper constants: preset or calibration YAML (the sim ignores it)"),
    Param("publish_hz", aloha.CONTROL_HZ, "command rate"),
    Param("task", "transfer_cube", "task string of the episode markers; the sim task for scripted"),
    Param("left_robot_name", LEADER_NAMES["left"], "Interbotix robot name of the left leader"),
    Param("right_robot_name", LEADER_NAMES["right"], "Interbotix robot name of the right leader"),
    Param("left_port", "/dev/ttyDXL_leader_left", "dynamixel: serial port of the left leader"),
    Param("right_port", "/dev/ttyDXL_leader_right", "dynamixel: serial port of the right leader"),
    Param("setup", True, "interbotix: leader setup at start (arm pwm, torque off)"),
    Param("episode_seconds", 0.0, "> 0: an episode started by the start service stops itself after this long "
                                  "(success unknown)"),
    Param("seed", 0, "scripted: the first scene; each further episode uses the next seed"),
    Param("episodes", 1, "scripted episodes to play (0 = until stopped)"),
    Param("sim_node", "aloha_sim", "the sim node whose seed parameter scripted teleop sets before each reset"),
    Param("settle_ticks", 25, "scripted: hold the last command this long before reading success"),
    Param("auto_wait_s", 3.0, "auto: wait this long for the sim's reset service before assuming hardware"),
)


class Phase(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"     # scripted: parameter set + reset requested
    PLAYING = "playing"
    SETTLING = "settling"
    DONE = "done"


class TeleopNode(Node):
    def __init__(self, source: TeleopSource | None = None):
        super().__init__("teleop")
        p = declare_parameters(self, PARAMETERS)
        self.params = p
        self._command_pub = self.create_publisher(JointState, topics.JOINT_COMMAND.name, profile(topics.JOINT_COMMAND))
        self._episode_pub = self.create_publisher(String, topics.EPISODE.name, profile(topics.EPISODE))
        self._leader_states: dict[str, ArmState] = {}
        self._sim_success = False
        self._episode_open = False
        self._episode_ticks = 0
        self._last_command: np.ndarray | None = None
        kind = p.source if source is None else "injected"
        if kind == "auto":
            kind = self._detect_source()
        self.kind = kind
        self.scripted = kind == "scripted"
        if self.scripted:
            self._seed = int(p.seed)
            self._played = 0
            self._phase = Phase.IDLE
            self._futures = []
            self.create_subscription(Bool, topics.SIM_SUCCESS.name, self._on_success, profile(topics.SIM_SUCCESS))
            self._reset_client = self.create_client(Trigger, topics.SIM_RESET.name)
            self._param_client = self.create_client(SetParameters, f"{p.sim_node}/set_parameters")
            self.source: TeleopSource | None = None
        else:
            self.source = source if source is not None else self._make_leader_source(kind)
            self.source.start()
            self._phase = Phase.PLAYING
            self.create_service(Trigger, topics.TELEOP_START.name, self._on_start_episode)
            self.create_service(SetBool, topics.TELEOP_STOP.name, self._on_stop_episode)
        self.create_timer(1.0 / float(p.publish_hz), self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"teleop source '{kind}', task '{p.task}', {p.publish_hz:g} Hz on "
                               f"{topics.JOINT_COMMAND.name}")

    # -- sources ----------------------------------------------------------------------------
    def _detect_source(self) -> str:
        client = self.create_client(Trigger, topics.SIM_RESET.name)
        found = client.wait_for_service(timeout_sec=float(self.params.auto_wait_s))
        self.destroy_client(client)
        return "scripted" if found else "interbotix"

    def _make_leader_source(self, kind: str) -> TeleopSource:
        p = self.params
        constants = load_gripper_constants(p.gripper)
        names = {"left": p.left_robot_name, "right": p.right_robot_name}
        if kind == "topics":
            for side in SIDES:
                self.create_subscription(JointState, topics.arm_joint_states(names[side]).name,
                                         lambda msg, side=side: self._on_leader_state(side, msg),
                                         profile(topics.JOINT_STATES))
            return LeaderArmsSource(self._latest_leader_states, constants)
        if kind == "interbotix":
            from cosmos_policy_core.robot.interbotix_backend import InterbotixConfig, InterbotixLeaders

            leaders = InterbotixLeaders(constants, InterbotixConfig.leaders(
                robot_names=tuple(names.items()), setup=bool(p.setup)))
            return LeaderArmsSource(leaders.arms.read_arm_states, constants, leaders.start, leaders.close)
        if kind == "dynamixel":
            from cosmos_policy_core.robot.dynamixel_backend import DynamixelBackend, DynamixelConfig

            arms = DynamixelBackend(DynamixelConfig.leaders(ports=(("left", p.left_port), ("right", p.right_port))),
                                    constants)
            self._leader_pubs = {side: self.create_publisher(JointState, topics.arm_joint_states(names[side]).name,
                                                             profile(topics.JOINT_STATES)) for side in SIDES}
            return LeaderArmsSource(lambda: self._publish_leader_states(arms.read_arm_states()), constants,
                                    arms.start, arms.close)
        raise ValueError(f"unknown teleop source {kind!r}; use auto, scripted, interbotix, topics or dynamixel")

    def _on_leader_state(self, side: str, msg: JointState) -> None:
        try:
            self._leader_states[side] = arm_state_from_joint_state(list(msg.name), list(msg.position),
                                                                   stamp_to_ns(msg.header.stamp))
        except ValueError as exc:
            self.get_logger().warning(f"bad leader state on {side}: {exc}", throttle_duration_sec=5.0)

    def _latest_leader_states(self) -> dict[str, ArmState]:
        missing = [s for s in SIDES if s not in self._leader_states]
        if missing:
            raise LookupError(f"no leader joint states yet from {missing}")
        return dict(self._leader_states)

    def _publish_leader_states(self, states: dict[str, ArmState]) -> dict[str, ArmState]:
        # Dynamixel leaders have no xs_sdk: publish its 9-entry layout for calibration and recording.
        stamp = ns_to_stamp(self.get_clock().now().nanoseconds)
        for side, s in states.items():
            msg = JointState()
            msg.header.stamp = stamp
            msg.name = [*ARM_JOINTS, "gripper", "left_finger", "right_finger"]
            msg.position = [*s.arm, s.gripper_joint, s.finger_position, -s.finger_position]
            self._leader_pubs[side].publish(msg)
        return states

    # -- episodes ---------------------------------------------------------------------------
    def _publish_event(self, event: str, success: bool | None = None, **extra) -> None:
        self._episode_open = event == "start"
        self._episode_ticks = 0
        self._episode_pub.publish(String(data=episode_event(event, self.params.task, success, **extra)))
        self.get_logger().info(f"episode {event}" + ("" if success is None else f" (success={success})"))

    def _on_start_episode(self, request, response):
        if self._episode_open:
            response.success, response.message = False, "an episode is already running; stop it first"
            return response
        self._publish_event("start")
        response.success, response.message = True, "episode started"
        return response

    def _on_stop_episode(self, request, response):
        if not self._episode_open:
            response.success, response.message = False, "no episode is running"
            return response
        self._publish_event("stop", bool(request.data))
        response.success, response.message = True, f"episode stopped (success={bool(request.data)})"
        return response

    def _on_success(self, msg: Bool) -> None:
        self._sim_success = bool(msg.data)

    # -- loop -------------------------------------------------------------------------------
    def _publish_command(self, command: np.ndarray) -> None:
        self._last_command = command
        self._command_pub.publish(joints_to_msg(command, self.get_clock().now().nanoseconds))

    def _tick(self) -> None:
        if self.scripted:
            self._tick_scripted()
            return
        try:
            command = self.source.next_command()
        except Exception as exc:  # no leader data yet / a read failed: send nothing, the follower holds
            self.get_logger().warning(f"no teleop command: {exc}", throttle_duration_sec=2.0)
            return
        if command is None or not np.isfinite(command).all():
            return
        self._publish_command(command)
        if self._episode_open:
            self._episode_ticks += 1
            limit = float(self.params.episode_seconds) * float(self.params.publish_hz)
            if limit > 0 and self._episode_ticks >= limit:
                self._publish_event("stop", None)

    def _tick_scripted(self) -> None:
        p = self.params
        if self._phase is Phase.IDLE:
            if not (self._reset_client.service_is_ready() and self._param_client.service_is_ready()):
                self.get_logger().info("waiting for the sim's reset and parameter services", throttle_duration_sec=5.0)
                return
            from cosmos_policy_core.sim.demos import scripted_sim_source

            self.source, _ = scripted_sim_source(p.task, self._seed)  # ~2 s of mocap sim, between episodes only
            request = SetParameters.Request(parameters=[Parameter("seed", value=self._seed).to_parameter_msg()])
            self._futures = [self._param_client.call_async(request)]
            self._phase = Phase.PREPARING
        elif self._phase is Phase.PREPARING:
            if not all(f.done() for f in self._futures):
                return
            if len(self._futures) == 1:  # seed set: now reset the scene with it
                self._futures.append(self._reset_client.call_async(Trigger.Request()))
                return
            self._sim_success = False
            self.source.start()
            self._publish_event("start", seed=self._seed)
            self._phase = Phase.PLAYING
        elif self._phase is Phase.PLAYING:
            command = self.source.next_command()
            if command is None:
                self._phase, self._settle = Phase.SETTLING, 0
            else:
                self._publish_command(command)
        elif self._phase is Phase.SETTLING:
            self._settle += 1
            if self._last_command is not None:
                self._publish_command(self._last_command)
            if self._settle >= int(p.settle_ticks) or self._sim_success:
                self._publish_event("stop", self._sim_success, seed=self._seed)
                self._played += 1
                self._seed += 1
                self._phase = Phase.DONE if p.episodes and self._played >= int(p.episodes) else Phase.IDLE
                if self._phase is Phase.DONE:
                    self.get_logger().info(f"played {self._played} scripted episode(s)")

    def close(self) -> None:
        if self._episode_open:
            try:  # a last marker so the recorder closes the episode (fails if ROS is already down)
                self._publish_event("stop", None)
            except Exception:
                pass
        if self.source is not None:
            self.source.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(TeleopNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
