"""Teleop sources and episode markers; camera grab threads stamp frames at capture and keep the newest."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.robot.arm_layout import ArmState
from cosmos_policy_core.robot.camera_capture import CameraConfig, CameraGrabber, SyntheticSource
from cosmos_policy_core.robot.gripper import GripperConstants
from cosmos_policy_core.robot.teleop import LeaderArmsSource, TrajectorySource, episode_event


def test_trajectory_source_plays_rows_then_ends_and_rejects_bad_input():
    commands = np.arange(3 * 14, dtype=float).reshape(3, 14)
    source = TrajectorySource(commands)
    source.start()
    played = [source.next_command() for _ in range(3)]
    np.testing.assert_array_equal(np.stack(played), commands)
    assert source.next_command() is None and source.remaining == 0
    with pytest.raises(ShapeError):
        TrajectorySource(np.zeros((5, 7)))
    bad = commands.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ConfigError):
        TrajectorySource(bad)


def test_leader_source_maps_gripper_joint_through_leader_constants():
    c = GripperConstants.aloha2()
    mid = (c.leader_joint_open + c.leader_joint_close) / 2
    states = {"left": ArmState((0.1,) * 6, c.leader_joint_open, 0.0), "right": ArmState((-0.1,) * 6, mid, 0.0)}
    command = LeaderArmsSource(lambda: states, c).next_command()
    assert command[6] == pytest.approx(1.0) and command[13] == pytest.approx(0.5)
    np.testing.assert_allclose(command[7:13], -0.1)


def test_episode_event_payload():
    assert json.loads(episode_event("stop", "insertion", True, seed=3)) == {
        "event": "stop", "task": "insertion", "success": True, "seed": 3}
    with pytest.raises(ConfigError):
        episode_event("pause", "insertion")


class GatedSource:
    """Delivers a frame each time the test releases the gate, so capture times are known."""

    def __init__(self):
        self.gate = threading.Semaphore(0)
        self.count = 0
        self.closed = False

    def open(self):
        pass

    def read(self):
        if not self.gate.acquire(timeout=0.2):
            return None
        self.count += 1
        return np.full((4, 5, 3), self.count, np.uint8)

    def close(self):
        self.closed = True


def test_grabber_stamps_at_capture_and_keeps_only_the_newest_frame():
    source = GatedSource()
    grabber = CameraGrabber(source, "cam_high")
    grabber.start()
    try:
        before = time.time_ns()
        source.gate.release()
        deadline = time.monotonic() + 2
        while grabber.latest() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        first = grabber.latest()
        assert first.index == 1 and before <= first.stamp_ns <= time.time_ns()
        time.sleep(0.1)  # no new frame: latest stays the same frame
        assert grabber.latest() is first
        for _ in range(3):
            source.gate.release()
        while grabber.latest().index < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert grabber.latest().index == 4 and int(grabber.latest().image[0, 0, 0]) == 4
        assert grabber.latest().stamp_ns > first.stamp_ns
    finally:
        grabber.stop()
    assert source.closed


def test_synthetic_source_paces_frames_at_the_configured_rate():
    source = SyntheticSource(CameraConfig("cam", "0", width=32, height=24, fps=50.0))
    source.open()
    start = time.monotonic()
    frames = [source.read() for _ in range(10)]
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed <= 0.5, elapsed
    assert frames[0].shape == (24, 32, 3) and [int(f[0, 0, 0]) for f in frames] == list(range(10))


def test_camera_config_rejects_bad_fourcc():
    with pytest.raises(ConfigError, match="fourcc"):
        CameraConfig("cam", "0", fourcc="MJPEG")
