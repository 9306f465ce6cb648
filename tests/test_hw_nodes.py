"""Real-hardware nodes on a real ROS graph without hardware: the cameras node (separate process,
synthetic source) publishes rgb8 + CameraInfo at its rate; the driver node (fake backend) and the
teleop node (leader JointState topics) convert between the 14-D layout and their devices."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from cosmos_aloha.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS  # noqa: E402
from cosmos_policy_core.robot.arm_layout import ArmState  # noqa: E402
from cosmos_policy_core.robot.gripper import GripperConstants  # noqa: E402


@pytest.fixture
def ros(ros_env, monkeypatch):
    """This process gets the isolated environment of `ros_env`; each test calls rclpy.init itself."""
    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)
    yield ros_env
    rclpy.try_shutdown()


def spin(executor, seconds, until=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
        if until is not None and until():
            return True
    return until() if until is not None else True


def test_cameras_node_publishes_rgb8_and_camera_info_at_the_set_rate(ros, tmp_path):
    rclpy.init()
    from cosmos_policy_core.calibration.cameras import CameraIntrinsics

    intr = CameraIntrinsics("cam_high", 64, 48, (55.0, 0.0, 31.5, 0.0, 56.0, 23.5, 0.0, 0.0, 1.0), (0.01, 0, 0, 0, 0))
    intr.to_yaml(tmp_path / "cam_high.yaml")
    node = rclpy.create_node("camera_listener")
    frames = {c: [] for c in ("cam_high", "cam_left_wrist")}
    infos = {c: [] for c in frames}
    for cam in frames:
        node.create_subscription(Image, f"/{cam}/image_raw",
                                 lambda m, c=cam: frames[c].append((time.monotonic(), m)), SENSOR_QOS)
        node.create_subscription(CameraInfo, f"/{cam}/camera_info", lambda m, c=cam: infos[c].append(m), SENSOR_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosmos_aloha.cameras_node", "--ros-args",
         "-p", "cameras:=[cam_high, cam_left_wrist]", "-p", "devices:=['0', '1']",
         "-p", "source:=synthetic", "-p", "width:=64", "-p", "height:=48", "-p", "capture_fps:=30.0",
         "-p", "publish_hz:=20.0", "-p", f"calibration_dir:={tmp_path}"],
        env=ros, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert spin(executor, 20.0, lambda: all(len(f) >= 5 for f in frames.values())), "no camera frames"
        for f in frames.values():
            f.clear()
        spin(executor, 3.0)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
        node.destroy_node()
    for cam, received in frames.items():
        assert received, out
        t0, t1 = received[0][0], received[-1][0]
        rate = (len(received) - 1) / (t1 - t0)
        assert 16.0 <= rate <= 24.0, f"{cam}: {rate:.1f} Hz, expected 20"
        msg = received[-1][1]
        assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 48, 64, 192)
        image = np.frombuffer(msg.data, np.uint8).reshape(48, 64, 3)
        assert (image[..., 1] == np.arange(64, dtype=np.uint8)[None, :]).all()  # the synthetic pattern
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in received]
        assert all(b > a for a, b in zip(stamps, stamps[1:])), "capture stamps must increase"
        counters = [int(np.frombuffer(m.data, np.uint8)[0]) for _, m in received]
        assert len(set(counters)) == len(counters), "a frame was published twice"
    info = infos["cam_high"][-1]
    assert list(info.k) == list(intr.K) and info.distortion_model == "plumb_bob" and info.width == 64
    assert infos["cam_left_wrist"][-1].k[2] == pytest.approx(32.0)  # nominal fallback: centre of 64 px


class FakeBackend:
    """Arms that report a fixed pose, record every command and whether torque is on."""

    def __init__(self):
        self.commands, self.started, self.closed = [], False, False

    def start(self):
        self.started = True

    def read_arm_states(self):
        return {"left": ArmState((0.1, -0.9, 1.1, 0.0, -0.3, 0.05), 1.0, 0.05),
                "right": ArmState((0.0, -0.96, 1.16, 0.0, -0.3, 0.0), -0.6, 0.01844)}

    def read_positions(self):
        from cosmos_policy_core.robot.arm_layout import proprio_from_follower_states

        states = self.read_arm_states()
        return proprio_from_follower_states(states["left"], states["right"], GripperConstants.load("aloha2"))

    def write_command(self, command):
        self.commands.append(np.asarray(command))

    def close(self):
        self.closed = True


def test_driver_node_is_a_lifecycle_node_that_holds_and_reports(ros):
    """Activate: torque on, the measured position commanded (hold). Commands execute only while active; when
    they stop the node says it holds; deactivate holds again; closing leaves torque on unless asked."""
    from cosmos_aloha.aloha_driver_node import AlohaDriverNode
    from cosmos_aloha.conversions import JOINT_NAMES, joints_to_msg
    from diagnostic_msgs.msg import DiagnosticArray

    rclpy.init(args=["--ros-args", "-p", "aloha_driver:gripper:=aloha2", "-p", "aloha_driver:autostart:=false",
                     "-p", "aloha_driver:command_timeout_s:=0.3", "-p", "aloha_driver:diagnostics_hz:=5.0"])
    backend = FakeBackend()
    driver = AlohaDriverNode(backend=backend)
    probe = rclpy.create_node("driver_probe")
    states, statuses = [], []
    probe.create_subscription(JointState, "joint_states", states.append, SENSOR_QOS)
    probe.create_subscription(DiagnosticArray, "diagnostics",
                              lambda m: statuses.extend(s for s in m.status if s.name == "cosmos_aloha/aloha_driver"),
                              10)
    command_pub = probe.create_publisher(JointState, "cosmos/joint_command", COMMAND_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(driver)
    executor.add_node(probe)
    measured = backend.read_positions()
    try:
        spin(executor, 1.0)
        assert driver.lifecycle_state == "unconfigured" and not backend.started and not states
        command_pub.publish(joints_to_msg(np.zeros(14), 0))
        spin(executor, 0.3)
        assert backend.commands == [], "an unconfigured driver must not move the arms"
        from rclpy.lifecycle import TransitionCallbackReturn

        assert driver.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert driver.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert driver.lifecycle_state == "active" and backend.started
        np.testing.assert_allclose(backend.commands[-1], measured)          # torque on, holding where it is
        assert spin(executor, 5.0, lambda: len(states) >= 2)
        msg = states[-1]
        assert list(msg.name) == list(JOINT_NAMES)
        np.testing.assert_allclose(msg.position[:6], [0.1, -0.9, 1.1, 0.0, -0.3, 0.05])
        assert msg.position[6] == pytest.approx(GripperConstants.load("aloha2").follower_position_normalize(0.05))
        command = measured + 0.01
        command_pub.publish(joints_to_msg(command, 0))
        assert spin(executor, 5.0, lambda: len(backend.commands) >= 2)
        np.testing.assert_allclose(backend.commands[-1], command)
        bad = command.copy()
        bad[3] = np.nan
        command_pub.publish(joints_to_msg(bad, 0))
        spin(executor, 0.2)
        assert not np.isnan(backend.commands[-1]).any(), "a NaN command must not reach the arms"
        assert spin(executor, 3.0, lambda: any("holding the last commanded position" in s.message
                                               for s in statuses)), [s.message for s in statuses]
        driver.trigger_deactivate()
        np.testing.assert_allclose(backend.commands[-1], measured)          # deactivate holds
        count = len(backend.commands)
        command_pub.publish(joints_to_msg(command, 0))
        spin(executor, 0.5)
        assert len(backend.commands) == count, "an inactive driver must not execute commands"
    finally:
        driver.close()
        driver.destroy_node()
        probe.destroy_node()
    assert backend.closed and driver.p.torque_off_on_close is False   # torque off only on an explicit request


def test_teleop_node_maps_leader_topics_and_marks_episodes(ros):
    from cosmos_aloha.teleop_node import TeleopNode

    # Parameters as a launch file would give them: leader JointState topics, original ALOHA grippers.
    rclpy.init(args=["--ros-args", "-p", "teleop:source:=topics", "-p", "teleop:gripper:=original_aloha",
                     "-p", "teleop:task:=fold shirt"])
    teleop = TeleopNode()
    probe = rclpy.create_node("teleop_probe")
    commands, events = [], []
    probe.create_subscription(JointState, "/cosmos/joint_command", commands.append, COMMAND_QOS)
    probe.create_subscription(String, "/cosmos/episode", lambda m: events.append(json.loads(m.data)), LATCHED_QOS)
    leader_pubs = {side: probe.create_publisher(JointState, f"/leader_{side}/joint_states", SENSOR_QOS)
                   for side in ("left", "right")}
    start = probe.create_client(Trigger, "/cosmos/teleop/start_episode")
    stop = probe.create_client(SetBool, "/cosmos/teleop/stop_episode")
    executor = SingleThreadedExecutor()
    executor.add_node(teleop)
    executor.add_node(probe)
    names = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper",
             "left_finger", "right_finger"]

    def publish_leaders():
        for side, pub in leader_pubs.items():
            msg = JointState()
            msg.name = names
            msg.position = [0.2, -0.5, 0.6, 0.1, 0.3, -0.1, 0.3083 if side == "left" else -0.6842, 0.02, -0.02]
            pub.publish(msg)
        return bool(commands)

    try:
        assert spin(executor, 10.0, publish_leaders), "no command from leader states"
        cmd = np.asarray(commands[-1].position)
        np.testing.assert_allclose(cmd[:6], [0.2, -0.5, 0.6, 0.1, 0.3, -0.1])
        assert cmd[6] == pytest.approx(1.0) and cmd[13] == pytest.approx(0.0)
        assert start.wait_for_service(timeout_sec=5.0)
        future = start.call_async(Trigger.Request())
        assert spin(executor, 5.0, lambda: future.done() and bool(events))
        future = stop.call_async(SetBool.Request(data=True))
        assert spin(executor, 5.0, lambda: future.done() and len(events) >= 2)
    finally:
        teleop.close()
        teleop.destroy_node()
        probe.destroy_node()
    assert events[0] == {"event": "start", "task": "fold shirt", "success": None}
    assert events[1] == {"event": "stop", "task": "fold shirt", "success": True}

