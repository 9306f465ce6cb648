"""`executor` lifecycle node: the only publisher of cosmos/joint_command, a 25 Hz steady-clock timer over ChunkExecutor.

Subscribes policy and planner chunks and joint_states; commands only while active. The e-stop (request topic
and services) latches in every state; chunk stamps are placed on the steady clock (SteadyClockMap).
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from cosmos_aloha import estop_socket, topics
from cosmos_aloha.chunks import msg_to_chunk
from cosmos_aloha.conversions import joints_to_msg, msg_to_joints
from cosmos_aloha.managed_node import ManagedNode
from cosmos_aloha.node_runtime import apply_realtime_priority, run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.runtime.execution import (
    ChunkExecutor,
    ExecState,
    ExecutorConfig,
    LoopStats,
    SafetyConfig,
    SteadyClockMap,
    TimedChunk,
)

_PRESET = SafetyConfig.aloha_vx300s()
PARAMETERS = (
    Param("control_hz", aloha.CONTROL_HZ, "tick rate"),
    Param("blend_steps", 8, "ticks over which a chunk switch converges (offset blending)"),
    Param("max_chunk_age_s", 2.0, "hold when the played chunk's observation is older than this"),
    Param("max_observation_age_s", 0.2, "hold when joint_states is older than this"),
    Param("max_future_s", 0.5, "reject chunks stamped further in the future (clock mismatch)"),
    Param("prefer_planner", True, "play a fresh planner chunk over the base policy chunk"),
    Param("temporal_ensemble", False,
          "true: command the weighted mean of the current step of every live chunk of a source (ACT's temporal "
          "ensembling) instead of the newest chunk. The launch argument temporal_ensemble sets it (auto: as the "
          "checkpoint's deploy section says), together with the policy's query cadence"),
    Param("ensemble_decay", 0.01,
          "temporal_ensemble: weight exp(-k i) of the i-th live chunk, i = 0 the oldest (ACT's k); the launch file "
          "passes the checkpoint's"),
    Param("joint_lower", list(_PRESET.lower),
          "per-joint lower limits in the policy order (left waist .. left gripper, right ...): ViperX 300 s "
          "ranges in rad, grippers normalised (-0.1)"),
    Param("joint_upper", list(_PRESET.upper), "per-joint upper limits (grippers 1.1)"),
    Param("max_velocity", list(_PRESET.max_velocity),
          "per-joint speed limits (rad/s arms, normalised/s grippers); the per-tick change limit is "
          "max_velocity / control_hz, both directions"),
    Param("rt_priority", 40, "SCHED_FIFO priority of the whole process (0 = normal scheduling); needs "
                             "CAP_SYS_NICE or an rtprio limit"),
)


def config_from_parameters(p) -> ExecutorConfig:
    safety = SafetyConfig(tuple(p.joint_lower), tuple(p.joint_upper), tuple(p.max_velocity), p.control_hz)
    return ExecutorConfig(
        control_hz=p.control_hz,
        blend_steps=p.blend_steps,
        max_chunk_age_s=p.max_chunk_age_s,
        max_observation_age_s=p.max_observation_age_s,
        max_future_s=p.max_future_s,
        prefer_planner=p.prefer_planner,
        safety=safety,
        ensemble_decay=float(p.ensemble_decay) if p.temporal_ensemble else None,
    )


class ExecutorNode(ManagedNode):
    def __init__(self):
        super().__init__("executor", PARAMETERS)
        p = self.p
        self.config = config_from_parameters(p)
        self.executor_logic = ChunkExecutor(self.config)
        # Decisions run on the steady clock; header stamps (system time) are mapped onto it on receipt.
        self.clock_map = SteadyClockMap()
        self._loop = LoopStats(self.config.period_ns)
        self._last_tick = None
        self._last_state = None
        self._compute_ms_max = 0.0
        self._last_rejection = ""
        self._command_pub = self.create_lifecycle_publisher(
            JointState, topics.JOINT_COMMAND.name, profile(topics.JOINT_COMMAND))
        # Inputs and the e-stop work in every lifecycle state: an e-stop before activation still latches.
        self._estop_pub = self.create_publisher(Bool, topics.ESTOP_ENGAGED.name, profile(topics.ESTOP_ENGAGED))
        self.create_subscription(Bool, topics.ESTOP_REQUEST.name, self._on_estop_request, profile(topics.ESTOP_REQUEST))
        self.create_subscription(JointState, topics.JOINT_STATES.name, self._on_joint_state,
                                 profile(topics.JOINT_STATES))
        for topic, source in ((topics.ACTION_CHUNK, "policy"), (topics.PLAN_CHUNK, "planner")):
            self.create_subscription(JointTrajectory, topic.name, lambda m, s=source: self._on_chunk(m, s),
                                     profile(topic))
        self.create_service(Trigger, topics.ESTOP.name, self._on_estop)
        self.create_service(Trigger, topics.ESTOP_CLEAR.name, self._on_estop_clear)
        self.create_service(Trigger, topics.REANCHOR.name, self._on_reanchor)
        self.create_timer(1.0 / self.config.control_hz, self._tick, clock=self.steady_clock)
        self._estop_pub.publish(Bool(data=False))
        # The one-shot `cosmos-aloha estop` on this host reaches us here before its ROS start-up; the socket's
        # thread wakes the spin thread through a guard condition, which engages.
        self._socket_guard = self.create_guard_condition(
            lambda: self.engage_estop("cosmos-aloha estop on this host"))
        try:
            self._estop_socket = estop_socket.Listener(self.get_namespace(), self._socket_guard.trigger)
        except OSError as exc:
            self._estop_socket = None
            self.get_logger().warning(f"e-stop socket unavailable ({exc}): `cosmos-aloha estop` on this host latches "
                                      "through ROS only (after its start-up and discovery)")
        realtime = apply_realtime_priority(self, int(p.rt_priority))
        self._scheduling = f"SCHED_FIFO {int(p.rt_priority)}" if realtime else "normal"

    def _now_ns(self) -> int:
        """Steady time, after reading both clocks into the stamp map."""
        steady = self.steady_clock.now().nanoseconds
        self.clock_map.observe(self.get_clock().now().nanoseconds, steady)
        return steady

    # -- lifecycle --------------------------------------------------------------------------------------
    def on_configure(self, state):
        cfg = self.config
        self.get_logger().info(
            f"executing chunks at {cfg.control_hz:g} Hz, blend {cfg.blend_steps} steps, chunk timeout "
            f"{cfg.max_chunk_age_s:g} s, observation timeout {cfg.max_observation_age_s:g} s"
            + ("" if cfg.ensemble_decay is None else
               f", temporal ensembling of the live chunks (decay {cfg.ensemble_decay:g})"))
        return super().on_configure(state)

    def on_activate(self, state):
        # The arms may have moved while no command went out: start from the measured position.
        self.executor_logic.resume_from_measured()
        self._last_state = None
        self.get_logger().info("active: commanding the robot")
        return super().on_activate(state)

    def on_deactivate(self, state):
        self.get_logger().info("inactive: no more commands (the driver holds the last one)")
        return super().on_deactivate(state)

    # -- callbacks only convert and hand off ---------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            self.executor_logic.observe(msg_to_joints(msg), self._now_ns())
        except (ValueError, ShapeError) as exc:
            self.get_logger().warning(f"ignoring joint state: {exc}", throttle_duration_sec=5.0)

    def _on_chunk(self, msg: JointTrajectory, source: str) -> None:
        now = self._now_ns()
        try:
            chunk = msg_to_chunk(msg, source)
        except ShapeError as exc:
            self.executor_logic.count("chunk_rejected_format")
            self.get_logger().warning(f"rejected {source} chunk: {exc}", throttle_duration_sec=2.0)
            return
        stamp = self.clock_map.to_steady(chunk.stamp_ns, now, int(self.config.max_future_s * 1e9))
        verdict = self.executor_logic.submit(TimedChunk(chunk.actions, stamp, chunk.step_ns, source), now)
        if verdict == "rejected_future":
            # The stamp is the observation's: a stamp ahead of this clock means the clocks disagree.
            self._last_rejection = (
                f"{source} chunk stamped {(stamp - now) / 1e9:.2f} s ahead of this host's clock (limit "
                f"{self.config.max_future_s:g} s): its observation's clock is ahead of the executor's; synchronize "
                "the hosts (chrony / PTP)")
            self.get_logger().error(f"rejected: {self._last_rejection}", throttle_duration_sec=2.0)
        elif verdict != "accepted":
            self._last_rejection = f"{source} chunk {verdict}"
            self.get_logger().warning(f"{source} chunk {verdict}", throttle_duration_sec=2.0)

    def _on_estop_request(self, msg: Bool) -> None:
        if msg.data:
            self.engage_estop(f"topic {topics.ESTOP_REQUEST.name}")
        else:
            self.clear_estop()

    def close(self) -> None:
        """Called by node_runtime.run_node on exit."""
        if self._estop_socket is not None:
            self._estop_socket.close()

    def _on_estop(self, request, response):
        self.engage_estop(f"service {topics.ESTOP.name}")
        response.success, response.message = True, "e-stop engaged (latched)"
        return response

    def _on_estop_clear(self, request, response):
        was = self.clear_estop()
        response.success, response.message = True, "e-stop cleared" if was else "e-stop was not engaged"
        return response

    def engage_estop(self, reason: str) -> None:
        already = self.executor_logic.estop.engaged
        self.executor_logic.engage_estop(reason, self._now_ns())
        if already:
            return
        # Hold at once rather than at the next tick (up to one period later).
        self._tick(scheduled=False)
        self._estop_pub.publish(Bool(data=True))
        self.get_logger().error(f"E-STOP engaged ({reason}): holding position until cleared")

    def clear_estop(self) -> bool:
        was = self.executor_logic.clear_estop(self._now_ns())
        self._estop_pub.publish(Bool(data=False))
        if was:
            self.get_logger().warning("E-STOP cleared: motion resumes with the next chunk, blended from the held pose")
        else:
            self.get_logger().info("e-stop clear requested but it was not engaged")
        return was

    def _on_reanchor(self, request, response):
        self.executor_logic.reanchor(self._now_ns())
        self.get_logger().info("re-anchored: holding the next measured position, older chunks refused")
        response.success, response.message = True, "holding the next measured position"
        return response

    def _tick(self, scheduled: bool = True) -> None:
        if not self.active:
            return
        start = time.perf_counter()
        now = self._now_ns()
        if scheduled:
            self._loop.record(now)
        tick = self.executor_logic.tick(now)
        self._last_tick = tick
        # Log holds and recoveries, not the blend/play alternation of every chunk switch.
        mode = "play" if tick.state in (ExecState.PLAYING, ExecState.BLENDING) else tick.state.value
        if mode != self._last_state:
            self.get_logger().info(f"state {mode}")
            self._last_state = mode
        if tick.command is not None:
            self._command_pub.publish(joints_to_msg(tick.command, self.get_clock().now().nanoseconds))
        self._compute_ms_max = max(self._compute_ms_max, (time.perf_counter() - start) * 1e3)

    # -- status -----------------------------------------------------------------------------------------
    def diagnostic_status(self):
        if not self.active:
            return super().diagnostic_status()
        tick = self._last_tick
        values = {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in self._loop.summary().items()}
        values["tick_compute_ms_max"] = f"{self._compute_ms_max:.3f}"
        values["scheduling"] = self._scheduling
        self._compute_ms_max = 0.0
        if tick is not None:
            values.update(state=tick.state.value, source=tick.source, step=str(tick.step),
                          chunk_age_s=f"{tick.chunk_age_s:.3f}")
        values["estop"] = str(self.executor_logic.estop.engaged)
        values["clock_steps"] = str(self.clock_map.steps)
        if self._last_rejection:
            values["last_rejected_chunk"] = self._last_rejection
        values.update({k: str(v) for k, v in sorted(self.executor_logic.counters.items())})
        state = tick.state if tick is not None else ExecState.WAITING
        if state in (ExecState.PLAYING, ExecState.BLENDING):
            level = DiagnosticStatus.OK
        elif state is ExecState.HOLD_ESTOP:
            level = DiagnosticStatus.ERROR
        else:
            level = DiagnosticStatus.WARN
        return level, state.value, values


def main(argv: list[str] | None = None) -> int:
    return run_node(ExecutorNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
