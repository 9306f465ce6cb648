"""`cosmos-aloha calibrate` end to end: cameras from image files, check against a live /joint_states."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cosmos_policy_core.calibration.cameras import BoardSpec, CameraIntrinsics
from cosmos_policy_core.cli import main
from cosmos_policy_core.robot.arm_layout import SLEEP_ARM_POSE

sys.path.insert(0, str(Path(__file__).parent))  # the synthetic board renderer lives in test_calibration
from test_calibration import render_views  # noqa: E402


CLI = "import sys; from cosmos_policy_core.cli import main; sys.exit(main(sys.argv[1:]))"


def test_calibrate_cameras_writes_camera_info_yaml_and_report(tmp_path, capsys):
    import cv2

    K = np.array([[590.0, 0, 320.0], [0, 592.0, 241.0], [0, 0, 1]])
    for name, image in render_views(K, BoardSpec(cols=9, rows=6), n_views=9):
        cv2.imwrite(str(tmp_path / name), image)
    out = tmp_path / "cam_high.yaml"
    assert main(["calibrate", "cameras", str(tmp_path), "--camera", "cam_high", "--out", str(out)]) == 0
    intrinsics = CameraIntrinsics.from_yaml(out)
    assert intrinsics.fx == pytest.approx(590.0, rel=0.01) and intrinsics.width == 640
    assert (tmp_path / "cam_high.report.json").exists()
    assert "reprojection RMS" in capsys.readouterr().out


def test_calibrate_check_flags_an_offset_joint_on_a_live_topic(ros_env, monkeypatch):
    import rclpy
    from sensor_msgs.msg import JointState

    from cosmos_aloha.conversions import joints_to_msg
    from cosmos_aloha.qos import SENSOR_QOS

    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)
    qpos = np.array([*SLEEP_ARM_POSE, 0.0, *SLEEP_ARM_POSE, 0.0])
    qpos[8] -= math.pi / 2  # right shoulder a quarter turn off
    proc = subprocess.Popen([sys.executable, "-c", CLI, "calibrate", "check", "--timeout", "20",
                             "--samples", "3"], env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("fake_driver")
    pub = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
    try:
        deadline = time.monotonic() + 40
        while proc.poll() is None and time.monotonic() < deadline:
            pub.publish(joints_to_msg(qpos, node.get_clock().now().nanoseconds))
            time.sleep(0.04)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if proc.poll() is None:
            proc.kill()
    out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 1, out
    assert "FLAG: follower_right shoulder" in out and "-90°" in out, out
    assert "follower_left" in out and "FLAG: follower_left" not in out, out
