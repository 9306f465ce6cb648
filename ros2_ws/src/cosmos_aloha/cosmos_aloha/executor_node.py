"""`executor` node: the only publisher of /cosmos/joint_command, a 25 Hz wall-clock timer over ChunkExecutor.

Subscribes policy and planner chunks and /joint_states; e-stop services latch; diagnostics once a second.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from cosmos_aloha.chunks import CHUNK_TOPIC, PLAN_CHUNK_TOPIC, msg_to_chunk
from cosmos_aloha.conversions import joints_to_msg, msg_to_joints
from cosmos_aloha.node_runtime import apply_realtime_priority, declare_parameters, run_node
from cosmos_aloha.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.runtime.execution import (
    ChunkExecutor,
    ExecState,
    ExecutorConfig,
    LoopStats,
    SafetyConfig,
)

COMMAND_TOPIC = "/cosmos/joint_command"
_PRESET = SafetyConfig.aloha_vx300s()
DEFAULTS = {
    "control_hz": 25.0,
    "blend_steps": 8,
    "max_chunk_age_s": 2.0,
    "max_observation_age_s": 0.2,
    "max_future_s": 0.5,
    "prefer_planner": True,
    "temporal_ensemble": False,   # average every live chunk's current step (ACT) instead of playing the newest
    "ensemble_decay": 0.01,       # temporal_ensemble: weight exp(-k i), i = 0 for the oldest chunk (ACT: 0.01)
    # ALOHA ViperX 300 s preset (execution.SafetyConfig.aloha_vx300s), policy joint order.
    "joint_lower": list(_PRESET.lower),
    "joint_upper": list(_PRESET.upper),
    "max_velocity": list(_PRESET.max_velocity),
    "diagnostics_hz": 1.0,
    "rt_priority": 40,     # SCHED_FIFO priority of the whole process; 0 = normal scheduling
}


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


class ExecutorNode(Node):
    def __init__(self):
        super().__init__("executor")
        p = declare_parameters(self, DEFAULTS)
        self.config = config_from_parameters(p)
        self.executor_logic = ChunkExecutor(self.config)
        self._loop = LoopStats(self.config.period_ns)
        self._last_tick = None
        self._last_state = None
        self._compute_ms_max = 0.0
        self._command_pub = self.create_publisher(JointState, COMMAND_TOPIC, COMMAND_QOS)
        self._estop_pub = self.create_publisher(Bool, "/cosmos/estop/engaged", LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointState, "/joint_states", self._on_joint_state, SENSOR_QOS)
        self.create_subscription(JointTrajectory, CHUNK_TOPIC, lambda m: self._on_chunk(m, "policy"), COMMAND_QOS)
        self.create_subscription(JointTrajectory, PLAN_CHUNK_TOPIC, lambda m: self._on_chunk(m, "planner"), COMMAND_QOS)
        self.create_service(Trigger, "/cosmos/estop", self._on_estop)
        self.create_service(Trigger, "/cosmos/estop_clear", self._on_estop_clear)
        self.create_service(Trigger, "/cosmos/executor/reanchor", self._on_reanchor)
        # Steady clock: the loop must keep its rate even if the system time is stepped.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0 / self.config.control_hz, self._tick, clock=steady)
        self.create_timer(1.0 / p.diagnostics_hz, self._publish_diagnostics, clock=steady)
        self._estop_pub.publish(Bool(data=False))
        apply_realtime_priority(self, int(p.rt_priority))
        self.get_logger().info(
            f"executing chunks at {self.config.control_hz:g} Hz, blend {self.config.blend_steps} steps, "
            f"chunk timeout {self.config.max_chunk_age_s:g} s, observation timeout {self.config.max_observation_age_s:g} s"
            + ("" if self.config.ensemble_decay is None else
               f", temporal ensembling of the live chunks (decay {self.config.ensemble_decay:g})")
        )

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

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
        verdict = self.executor_logic.submit(chunk, now)
        if verdict != "accepted":
            self.get_logger().warning(f"{source} chunk {verdict}", throttle_duration_sec=2.0)

    def _on_estop(self, request, response):
        self.executor_logic.engage_estop("service /cosmos/estop", self._now_ns())
        self._estop_pub.publish(Bool(data=True))
        self.get_logger().error("E-STOP engaged: holding position until /cosmos/estop_clear")
        response.success, response.message = True, "e-stop engaged (latched)"
        return response

    def _on_estop_clear(self, request, response):
        was = self.executor_logic.clear_estop()
        self._estop_pub.publish(Bool(data=False))
        self.get_logger().warning("E-STOP cleared" if was else "e-stop clear requested but it was not engaged")
        response.success, response.message = True, "e-stop cleared" if was else "e-stop was not engaged"
        return response

    def _on_reanchor(self, request, response):
        self.executor_logic.reanchor(self._now_ns())
        self.get_logger().info("re-anchored: holding the next measured position, older chunks refused")
        response.success, response.message = True, "holding the next measured position"
        return response

    def _tick(self) -> None:
        start = time.perf_counter()
        now = self._now_ns()
        self._loop.record(time.monotonic_ns())
        tick = self.executor_logic.tick(now)
        self._last_tick = tick
        # Log holds and recoveries, not the blend/play alternation of every chunk switch.
        mode = "play" if tick.state in (ExecState.PLAYING, ExecState.BLENDING) else tick.state.value
        if mode != self._last_state:
            self.get_logger().info(f"state {mode}")
            self._last_state = mode
        if tick.command is not None:
            self._command_pub.publish(joints_to_msg(tick.command, now))
        self._compute_ms_max = max(self._compute_ms_max, (time.perf_counter() - start) * 1e3)

    def _publish_diagnostics(self) -> None:
        tick = self._last_tick
        stats = self._loop.summary()
        values = {**{k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in stats.items()}}
        values["tick_compute_ms_max"] = f"{self._compute_ms_max:.3f}"
        self._compute_ms_max = 0.0
        if tick is not None:
            values.update(state=tick.state.value, source=tick.source, step=str(tick.step),
                          chunk_age_s=f"{tick.chunk_age_s:.3f}")
        values["estop"] = str(self.executor_logic.estop.engaged)
        values.update({k: str(v) for k, v in sorted(self.executor_logic.counters.items())})
        status = DiagnosticStatus(name="cosmos_aloha/executor", hardware_id="executor")
        state = tick.state if tick is not None else ExecState.WAITING
        if state in (ExecState.PLAYING, ExecState.BLENDING):
            status.level, status.message = DiagnosticStatus.OK, state.value
        elif state is ExecState.HOLD_ESTOP:
            status.level, status.message = DiagnosticStatus.ERROR, state.value
        else:
            status.level, status.message = DiagnosticStatus.WARN, state.value
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array_msg = DiagnosticArray(status=[status])
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array_msg)


def main(argv: list[str] | None = None) -> int:
    return run_node(ExecutorNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
