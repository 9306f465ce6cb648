"""The ROS layer works on this machine: two rclpy processes exchange Image and JointState."""
from __future__ import annotations

import json
import subprocess
import sys
import time


def test_image_and_joint_state_cross_process(ros_env, tmp_path):
    out = tmp_path / "summary.json"
    sub = subprocess.Popen(
        [sys.executable, "-m", "cosmos_aloha.ros_check", "sub", "--seconds", "7", "--json", str(out)],
        env=ros_env,
    )
    time.sleep(1.0)
    pub = subprocess.run(
        [sys.executable, "-m", "cosmos_aloha.ros_check", "pub", "--seconds", "4"],
        env=ros_env,
        timeout=60,
    )
    assert pub.returncode == 0
    assert sub.wait(timeout=60) == 0
    summary = json.loads(out.read_text())
    # 4 s at 25 Hz = 100 messages; discovery takes part of the first second.
    assert summary["images"] >= 20, summary
    assert summary["joint_states"] >= 20, summary
    assert summary["images_ok"] and summary["joints_ok"], summary
