"""Scripted sim teleop end to end: aloha_sim + teleop(source=scripted) as processes; the demo is played
at 25 Hz between start/stop markers on /cosmos/episode and the sim reports the task's success."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")


@pytest.mark.slow
def test_scripted_teleop_plays_a_marked_episode_in_the_sim(ros_env, monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from cosmos_aloha.qos import COMMAND_QOS, LATCHED_QOS

    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)
    env = dict(ros_env, MUJOCO_GL=ros_env.get("MUJOCO_GL", "egl"))
    sim = subprocess.Popen([sys.executable, "-m", "cosmos_aloha.aloha_sim_node", "--ros-args", "-p", "height:=48",
                            "-p", "width:=64", "-p", "seed:=5"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    teleop = subprocess.Popen([sys.executable, "-m", "cosmos_aloha.teleop_node", "--ros-args", "-p", "source:=auto",
                               "-p", "seed:=0", "-p", "episodes:=1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("teleop_probe")
    events, commands = [], []
    node.create_subscription(String, "/cosmos/episode", lambda m: events.append((time.monotonic(), json.loads(m.data))),
                             LATCHED_QOS)
    node.create_subscription(JointState, "/cosmos/joint_command", lambda m: commands.append(time.monotonic()),
                             COMMAND_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(e["event"] == "stop" for _, e in events):
            executor.spin_once(timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for proc in (teleop, sim):
            proc.terminate()
        logs = [proc.communicate(timeout=30)[0] for proc in (teleop, sim)]
    assert [e["event"] for _, e in events] == ["start", "stop"], logs
    (t_start, start), (t_stop, stop) = events
    assert start == {"event": "start", "task": "transfer_cube", "success": None, "seed": 0}
    assert stop["success"] is True, logs
    played = [t for t in commands if t_start <= t <= t_stop]
    rate = (len(played) - 1) / (played[-1] - played[0])
    assert len(played) >= 200 and 22.5 <= rate <= 27.5, (len(played), rate)
