"""Recording round trip: a publisher process -> `cosmos-aloha record` -> bag (rosbags + mcap) -> 25 Hz episode.

Episode markers go through the recorder's Trigger services in one test and the /cosmos/episode topic in the other.

Run as a script, this file is the test publisher: a synthetic episode with known content at 25 Hz.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
H, W = 48, 64
PERIOD_NS = 40_000_000


def expected_image(cam_index: int, tick: int) -> np.ndarray:
    return np.random.default_rng(1000 * cam_index + tick).integers(0, 256, (H, W, 3), dtype=np.uint8)


def expected_joints(tick: int) -> np.ndarray:
    return 0.05 * np.arange(14) + 0.01 * tick      # inside the robot's joint ranges: conversion keeps it


def expected_command(tick: int) -> np.ndarray:
    return expected_joints(tick) + 0.1


# -- the publisher process -------------------------------------------------------------------------
def publish(ticks: int, task: str, markers: str) -> int:
    """Publish `ticks` steps; episode markers through the recorder's services or on the topic."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from cosmos_aloha.conversions import image_to_msg, joints_to_msg
    from cosmos_aloha.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS

    rclpy.init()
    node = Node("record_test_publisher")
    cams = [node.create_publisher(Image, f"/{c}/image_raw", SENSOR_QOS) for c in CAMS]
    joints = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
    command = node.create_publisher(JointState, "/cosmos/joint_command", COMMAND_QOS)
    publishers = cams + [joints, command]
    if markers == "topic":
        episode = node.create_publisher(String, "/cosmos/episode", LATCHED_QOS)
        publishers.append(episode)

    def call(service: str) -> None:
        client = node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=10), service
        future = client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=10)
        assert future.result() is not None and future.result().success, (service, future.result())
    deadline = time.monotonic() + 30
    while any(p.get_subscription_count() == 0 for p in publishers):   # the recorder subscribed to all
        if time.monotonic() > deadline:
            print("recorder never subscribed", flush=True)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)
    if markers == "services":
        call("/cosmos/recorder/start")
    t0 = time.time_ns()
    if markers == "topic":
        episode.publish(String(data=json.dumps({"event": "start", "task": task, "stamp_ns": t0 - 1_000_000})))
    print("publishing", flush=True)
    start = time.monotonic()
    for k in range(ticks):
        stamp = t0 + k * PERIOD_NS
        for c, pub in enumerate(cams):
            pub.publish(image_to_msg(expected_image(c, k), stamp))
        joints.publish(joints_to_msg(expected_joints(k), stamp))
        command.publish(joints_to_msg(expected_command(k), stamp))
        time.sleep(max(0.0, start + (k + 1) * PERIOD_NS / 1e9 - time.monotonic()))
    if markers == "services":
        call("/cosmos/recorder/stop")
    else:
        stop_ns = t0 + (ticks - 1) * PERIOD_NS + 1_000_000
        episode.publish(String(data=json.dumps({"event": "stop", "success": True, "stamp_ns": stop_ns})))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:   # let reliable / latched traffic drain
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# -- tests -----------------------------------------------------------------------------------------
def _record(bag: Path, env: dict, *extra: str) -> subprocess.Popen:
    cli = Path(sys.executable).parent / "cosmos-aloha"
    return subprocess.Popen([str(cli), "record", "--out", str(bag), "--task", "stack cups", *extra], env=env)


def _publisher(env: dict, ticks: int, markers: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--ticks", str(ticks), "--task", "stack cups",
                             "--markers", markers], env=env, stdout=subprocess.PIPE, text=True)


def test_record_then_convert_round_trip(ros_env, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.rosbag2 import Reader

    from cosmos_aloha.qos import SENSOR_QOS
    from cosmos_policy_core.data.convert import convert_bags
    from cosmos_policy_core.data.episode import read_episode_hdf5

    ticks = 25
    bag = tmp_path / "bag"
    recorder = _record(bag, ros_env, "--split-seconds", "0.5")
    try:
        pub = _publisher(ros_env, ticks, markers="services")
        out, _ = pub.communicate(timeout=90)
        assert pub.returncode == 0, out
    finally:
        recorder.send_signal(signal.SIGTERM)   # SIGTERM (like SIGINT) closes the bag cleanly
        assert recorder.wait(timeout=30) == 0

    # rosbags: the directory opens, every message is there, the offered QoS are recorded.
    with Reader(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
    for cam in CAMS:
        assert counts[f"/{cam}/image_raw"] == ticks, counts
        assert qos[f"/{cam}/image_raw"][0].reliability.name == SENSOR_QOS.reliability.name   # as offered
    assert counts["/joint_states"] == ticks and counts["/cosmos/joint_command"] == ticks
    assert counts["/cosmos/episode"] == 2
    assert qos["/cosmos/episode"][0].durability.name == "TRANSIENT_LOCAL"
    files = __import__("yaml").safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert len(files["relative_file_paths"]) >= 2   # split every 0.5 s

    # mcap + mcap_ros2, independently of rosbags: same messages, same content.
    seen = {}
    for name in files["relative_file_paths"]:
        with open(bag / name, "rb") as f:
            for _, channel, _, ros_msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
                seen.setdefault(channel.topic, []).append(ros_msg)
    assert {t: len(v) for t, v in seen.items()} == counts
    first = np.frombuffer(bytes(seen["/cam_left_wrist/image_raw"][0].data), np.uint8).reshape(H, W, 3)
    np.testing.assert_array_equal(first, expected_image(1, 0))
    np.testing.assert_allclose(seen["/cosmos/joint_command"][-1].position, expected_command(ticks - 1))

    # Conversion: one 25 Hz episode equal to what was published.
    report = convert_bags([bag], tmp_path / "dataset", profile="cosmos")
    assert report.to_dict()["episode_count"] == 1, report.summary()
    ep = read_episode_hdf5(tmp_path / "dataset" / "episode_0.hdf5")
    assert len(ep) == ticks and ep.task == "stack cups" and ep.success
    for c, cam in enumerate(CAMS):
        np.testing.assert_array_equal(ep.images[cam], np.stack([expected_image(c, k) for k in range(ticks)]))
    np.testing.assert_allclose(ep.qpos, np.stack([expected_joints(k) for k in range(ticks)]), atol=1e-6)
    np.testing.assert_allclose(ep.action, np.stack([expected_command(k) for k in range(ticks)]), atol=1e-6)
    assert report.episodes[0].duplicated_frames == 0 and report.episodes[0].max_skew_ms == 0.0


def test_killed_recorder_leaves_an_openable_bag(ros_env, tmp_path):
    from rosbags.rosbag2 import Reader

    from cosmos_policy_core.data.convert import convert_bags

    split_s = 0.5
    bag = tmp_path / "bag"
    recorder = _record(bag, ros_env, "--split-seconds", str(split_s))
    pub = _publisher(ros_env, ticks=100, markers="topic")
    try:
        assert pub.stdout.readline().strip() == "publishing"
        time.sleep(2.0)
        killed_at = time.time_ns()
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=10)
    finally:
        pub.kill()
        pub.wait(timeout=10)
        if recorder.poll() is None:
            recorder.kill()
    with Reader(bag) as reader:
        last = max(t for _, t, _ in reader.messages())
        images = sum(c.msgcount for c in reader.connections if c.topic == "/cam_high/image_raw")
    # Everything up to the last closed file survives: at most split_s (+ slack for a loaded machine) is lost.
    assert images > 0
    assert killed_at - last < (split_s + 1.0) * 1e9, (killed_at - last) / 1e9
    report = convert_bags([bag], tmp_path / "dataset", profile="cosmos")
    d = report.to_dict()
    assert d["episode_count"] == 1, report.summary()
    assert not report.episodes[0].success and any("no stop marker" in w for w in report.episodes[0].warnings)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=25)
    parser.add_argument("--task", default="")
    parser.add_argument("--markers", choices=["services", "topic"], default="topic")
    args = parser.parse_args()
    sys.exit(publish(args.ticks, args.task, args.markers))
