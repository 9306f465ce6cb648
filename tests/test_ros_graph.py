"""The ROS 2 graph for real: composed sim bringup rates, and the executor's safety behaviour across processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cosmos_policy_core.runtime.execution import SafetyConfig
from graph_run import MONITOR, assert_sensor_rates, run_monitored_bringup, spin_until

MAX_STEP = SafetyConfig.aloha_vx300s().max_step
PERIOD_S = 0.04


def test_composed_sim_bringup_rates(ros_env, tmp_path):
    """sim + replay chunk source + executor (cosmos-aloha bringup) for 20 s, observed by another process."""
    summary, log = run_monitored_bringup(
        ros_env, tmp_path, ["--sim", "--image-height", "224", "--image-width", "224"], seconds=20, skip=4)
    topics = summary["topics"]
    assert topics["cam_high/image_raw"]["shapes"] == [[224, 224]]
    assert topics["cosmos/action_chunk"]["count"] >= 10  # one per second for ~16 s
    assert topics["cosmos/joint_command"]["rate_hz"] == pytest.approx(25.0, rel=0.05), topics["cosmos/joint_command"]
    assert summary["command_finite"] is True
    # chunk switches every second, gripper jump at the start: never a step above the limit
    assert summary["command_step_max"] <= MAX_STEP.max() + 1e-9
    assert summary["executor"]["message"] in ("playing", "blending"), summary["executor"]
    assert_sensor_rates(topics, log)


# -- executor behaviour with an in-process probe ---------------------------------------------------
class Probe:
    """An rclpy node in the test process: fake /joint_states, records commands, calls e-stop services."""

    def __init__(self, ros_env: dict):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import JointState
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from cosmos_aloha.topics import ACTION_CHUNK
        from cosmos_aloha.conversions import joints_to_msg, stamp_to_ns
        from cosmos_aloha.qos import COMMAND_QOS, SENSOR_QOS

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
        self.node = Node("probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.home = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
        self.commands: list[tuple[float, np.ndarray]] = []
        self.chunk_stamps: list[float] = []
        self._joints_to_msg, self._stamp_to_ns = joints_to_msg, stamp_to_ns
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.chunk_pub = self.node.create_publisher(JointTrajectory, ACTION_CHUNK.name, COMMAND_QOS)
        self.node.create_subscription(JointState, "/cosmos/joint_command", self._on_command, COMMAND_QOS)
        self.node.create_subscription(JointTrajectory, ACTION_CHUNK.name,
                                      lambda m: self.chunk_stamps.append(stamp_to_ns(m.header.stamp) / 1e9), COMMAND_QOS)
        self.diagnostics: dict[str, str] = {}
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.node.create_timer(PERIOD_S, self._publish_joints)
        self.estop = self.node.create_client(Trigger, "/cosmos/estop")
        self.estop_clear = self.node.create_client(Trigger, "/cosmos/estop_clear")
        self._trigger = Trigger

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds / 1e9

    def _publish_joints(self) -> None:
        self.joint_pub.publish(self._joints_to_msg(self.home, self.node.get_clock().now().nanoseconds))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == "cosmos_aloha/executor":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _on_command(self, msg) -> None:
        self.commands.append((self.now(), np.asarray(msg.position, dtype=float)))

    def spin(self, seconds: float) -> None:
        spin_until(self.executor, seconds)

    def call(self, client) -> bool:
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(self._trigger.Request())
        spin_until(self.executor, 10.0, future.done)
        return bool(future.result().success)

    def commands_between(self, t0: float, t1: float) -> np.ndarray:
        return np.array([c for t, c in self.commands if t0 <= t < t1])

    def close(self) -> None:
        self.node.destroy_node()
        self.executor.shutdown()
        self.rclpy.try_shutdown(context=self.context)


@pytest.fixture
def probe(ros_env_in_process):
    p = Probe(ros_env_in_process)
    yield p
    p.close()


def _start(module: str, ros_env: dict, *params: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", module, "--ros-args", *[x for p in params for x in ("-p", p)]]
    return subprocess.Popen(argv, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _varies(commands: np.ndarray) -> bool:
    return len(commands) > 2 and np.abs(np.diff(commands, axis=0)).max() > 1e-6


def test_executor_nan_rejection_source_loss_and_estop(ros_env, probe):
    max_age = 1.2
    executor = _start("cosmos_aloha.executor_node", ros_env, f"max_chunk_age_s:={max_age}")
    source = _start("cosmos_aloha.replay_chunk_node", ros_env, "publish_period_s:=0.5")
    source2 = None
    try:
        end = time.monotonic() + 20.0  # process start + discovery; slow on a loaded 2-core machine
        while (len(probe.chunk_stamps) < 2 or not probe.commands) and time.monotonic() < end:
            probe.spin(0.2)
        t_play = probe.now()
        probe.spin(1.5)
        assert _varies(probe.commands_between(t_play, probe.now())), "executor does not play the chunks"

        # A NaN chunk, newer than anything else, is rejected: commands stay finite and keep playing.
        from cosmos_aloha.chunks import chunk_to_msg

        bad = np.repeat(probe.home[None], 50, axis=0)
        bad[10, 3] = np.nan
        probe.chunk_pub.publish(chunk_to_msg(bad, probe.node.get_clock().now().nanoseconds, 40_000_000))
        t_nan = probe.now()
        probe.spin(1.0)
        after_nan = probe.commands_between(t_nan, probe.now())
        assert np.isfinite(after_nan).all() and _varies(after_nan)
        probe.spin(1.0)  # diagnostics come once a second
        assert probe.diagnostics.get("chunk_rejected_nonfinite") == "1", probe.diagnostics

        # Kill the chunk source: the played chunk times out and the executor holds within one period.
        source.send_signal(signal.SIGKILL)
        source.wait(timeout=10)
        t_kill = probe.now()
        probe.spin(max_age + 1.0)
        last_stamp = max(probe.chunk_stamps)
        assert last_stamp <= t_kill
        hold_from = last_stamp + max_age + PERIOD_S + 0.02  # one period, plus delivery latency
        held = probe.commands_between(hold_from, probe.now())
        assert len(held) >= 10 and not _varies(held), "executor did not hold after its chunk source died"
        rate = [t for t, _ in probe.commands if t >= t_kill]
        assert (len(rate) - 1) / (rate[-1] - rate[0]) == pytest.approx(25.0, rel=0.1)  # still commanding
        assert executor.poll() is None

        # E-stop latches: a new chunk source starts, commands stay frozen until the clear.
        source2 = _start("cosmos_aloha.replay_chunk_node", ros_env, "publish_period_s:=0.5")
        assert probe.call(probe.estop)
        t_stop = probe.now()
        end = time.monotonic() + 15.0  # the new process needs a few seconds to start and discover
        while len([s for s in probe.chunk_stamps if s > t_stop]) < 3 and time.monotonic() < end:
            probe.spin(0.2)
        assert len([s for s in probe.chunk_stamps if s > t_stop]) >= 3, "second chunk source silent"
        probe.spin(0.5)
        frozen = probe.commands_between(t_stop + PERIOD_S + 0.02, probe.now())
        assert probe.diagnostics.get("state") == "hold_estop", probe.diagnostics
        assert len(frozen) >= 50 and not _varies(frozen), "e-stop did not hold"
        assert probe.call(probe.estop_clear)
        t_clear = probe.now()
        probe.spin(2.0)
        assert _varies(probe.commands_between(t_clear, probe.now())), "no motion after clearing the e-stop"

        every = np.array([c for _, c in probe.commands])
        assert np.isfinite(every).all()
        assert (np.abs(np.diff(every, axis=0)) <= MAX_STEP + 1e-9).all(), "a command step exceeded the limit"
    finally:
        for proc in (source, source2, executor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        log = executor.communicate(timeout=20)[0]
        for proc in (source, source2):
            if proc is not None:
                proc.communicate(timeout=20)
    assert executor.returncode == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "E-STOP engaged" in log and "E-STOP cleared" in log


def test_a_namespace_moves_the_whole_graph(ros_env, tmp_path):
    """`--namespace left_cell`: sensors, chunks and commands flow under /left_cell; the root stays empty."""
    seconds = 20
    bringup = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cosmos_policy_core.cli import main; sys.exit(main())", "bringup",
         "--namespace", "left_cell", "--image-height", "96", "--image-width", "128", "--seconds", str(seconds)],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monitors = {ns: subprocess.Popen(
        [*MONITOR, "--seconds", str(seconds - 3), "--skip", "4",
         "--namespace", ns, "--json", str(tmp_path / f"{ns or 'root'}.json")], env=ros_env)
        for ns in ("left_cell", "")}
    log, _ = bringup.communicate(timeout=seconds + 90)
    for monitor in monitors.values():
        assert monitor.wait(timeout=90) == 0
    assert bringup.returncode == 0 and "Traceback" not in log, log[-3000:]
    cell = json.loads((tmp_path / "left_cell.json").read_text())["topics"]
    root = json.loads((tmp_path / "root.json").read_text())["topics"]
    assert cell["cosmos/action_chunk"]["count"] >= 5, cell["cosmos/action_chunk"]
    assert cell["cosmos/joint_command"]["count"] >= 50 and cell["joint_states"]["count"] >= 50
    assert all(t["count"] == 0 for t in root.values()), {k: v["count"] for k, v in root.items() if v["count"]}
