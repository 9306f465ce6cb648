"""Raw and JPEG camera topics (cosmos_aloha.image_transport): messages, lazy publishing, subscriptions' frames."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("cv2")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from cosmos_aloha import image_transport as it  # noqa: E402
from cosmos_policy_core.errors import ConfigError  # noqa: E402
from cosmos_policy_core.runtime.jpeg import jpeg_round_trip  # noqa: E402


def frame(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 3, y * 4, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    image[10:20, 10:20] = (230, 10, 10)
    return image


def test_compressed_message_round_trip_and_format():
    image = frame()
    msg = it.image_to_compressed_msg(image, 1_500_000_123, "cam_high_optical_frame", 90)
    assert msg.format == it.JPEG_FORMAT and msg.header.frame_id == "cam_high_optical_frame"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_123)
    received = it.compressed_msg_to_frame(msg)
    assert isinstance(received, it.EncodedFrame) and received.data is msg.data   # kept as received, no copy
    assert np.array_equal(it.pixels(received), jpeg_round_trip(image, 90))
    raw = np.zeros((2, 2, 3), np.uint8)
    assert it.pixels(raw) is raw


def test_foreign_compressed_messages_are_refused_with_the_reason():
    png = CompressedImage(format="png", data=b"\x89PNG....")
    with pytest.raises(ValueError, match="unsupported compressed format 'png'"):
        it.compressed_msg_to_frame(png)
    with pytest.raises(ValueError, match="does not start like a JPEG"):
        it.compressed_msg_to_frame(CompressedImage(format="jpeg", data=b"not a jpeg"))


def test_transport_names_follow_image_transport():
    assert it.transport_topic("cam_high/image_raw", "raw") == "cam_high/image_raw"
    assert it.transport_topic("cam_high/image_raw", "compressed") == "cam_high/image_raw/compressed"
    with pytest.raises(ConfigError, match="image_transport.*'theora'.*raw.*compressed"):
        it.check_transport("theora")


class _Publisher:
    def __init__(self, msg_type, topic):
        self.msg_type, self.topic, self.subscribers, self.sent = msg_type, topic, 0, []

    def get_subscription_count(self):
        return self.subscribers

    def publish(self, msg):
        self.sent.append(msg)


def test_publisher_makes_a_message_only_for_a_transport_with_subscribers():
    made = {}

    def create(msg_type, topic, qos):
        made[topic] = _Publisher(msg_type, topic)
        return made[topic]

    pub = it.ImagePublisher(create, "cam_high/image_raw", qos=None, jpeg_quality=80)
    raw, compressed = made["cam_high/image_raw"], made["cam_high/image_raw/compressed"]
    assert raw.msg_type is Image and compressed.msg_type is CompressedImage
    assert pub.publishers == (raw, compressed)
    pub.publish(frame(), 7, "f")
    assert raw.sent == [] and compressed.sent == []          # nobody listens: nothing encoded or serialized
    compressed.subscribers = 1                               # a policy on another host
    pub.publish(frame(), 8, "f")
    assert raw.sent == [] and len(compressed.sent) == 1
    assert compressed.sent[0].format == it.JPEG_FORMAT
    raw.subscribers = 2                                      # the local recorder, rviz
    pub.publish(frame(), 9, "f")
    assert len(raw.sent) == 1 and raw.sent[0].encoding == "rgb8" and len(compressed.sent) == 2
    only_raw = it.ImagePublisher(create, "cam_low/image_raw", qos=None, jpeg_quality=80, compressed=False)
    assert "cam_low/image_raw/compressed" not in made and len(only_raw.publishers) == 1
    with pytest.raises(ConfigError, match="1..100"):
        it.ImagePublisher(create, "x/image_raw", qos=None, jpeg_quality=0)


class _Node:
    def __init__(self):
        self.subscribed = []

    def create_subscription(self, msg_type, topic, callback, qos):
        self.subscribed.append((msg_type, topic, callback))
        return len(self.subscribed)


def test_subscription_hands_over_frames_of_either_transport_and_reports_bad_ones():
    from cosmos_aloha.conversions import image_to_msg

    node, got, errors = _Node(), [], []
    it.subscribe_image(node, "cam_high/image_raw", "raw", lambda f, s: got.append((f, s)), None, errors.append)
    it.subscribe_image(node, "cam_high/image_raw", "compressed", lambda f, s: got.append((f, s)), None,
                       errors.append)
    (raw_type, raw_topic, raw_cb), (c_type, c_topic, c_cb) = node.subscribed
    assert (raw_type, raw_topic) == (Image, "cam_high/image_raw")
    assert (c_type, c_topic) == (CompressedImage, "cam_high/image_raw/compressed")
    image = frame()
    raw_cb(image_to_msg(image, 11, "f"))
    c_cb(it.image_to_compressed_msg(image, 12, "f", 90))
    c_cb(CompressedImage(format="jpeg", data=b"xx"))
    assert np.array_equal(got[0][0], image) and got[0][1] == 11
    assert isinstance(got[1][0], it.EncodedFrame) and got[1][1] == 12
    assert len(got) == 2 and len(errors) == 1 and "JPEG" in errors[0]


def test_cameras_node_publishes_jpeg_on_the_compressed_topic(ros_env, monkeypatch):
    """The cameras node (synthetic source, own process): a subscriber of <cam>/image_raw/compressed alone gets
    JPEG frames of the camera's picture, stamped like the raw ones would be."""
    import subprocess
    import sys
    import time

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from cosmos_aloha.qos import SENSOR_QOS

    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)
    rclpy.init()
    node = rclpy.create_node("compressed_listener")
    got = []
    node.create_subscription(CompressedImage, "/cam_high/image_raw/compressed", got.append, SENSOR_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosmos_aloha.cameras_node", "--ros-args", "-p", "cameras:=[cam_high]",
         "-p", "devices:=['0']", "-p", "source:=synthetic", "-p", "width:=64", "-p", "height:=48",
         "-p", "publish_hz:=20.0", "-p", "jpeg_quality:=95"],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(got) < 5:
            executor.spin_once(timeout_sec=0.05)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
        node.destroy_node()
        rclpy.try_shutdown()
    assert len(got) >= 5, out[-2000:]
    msg = got[-1]
    assert msg.format == it.JPEG_FORMAT and msg.header.frame_id == "cam_high_optical_frame"
    image = it.pixels(it.compressed_msg_to_frame(msg))
    assert image.shape == (48, 64, 3)
    # The synthetic pattern's green channel is the column index; JPEG at 95 keeps it within a few levels.
    assert np.abs(image[..., 1].astype(int) - np.arange(64)[None, :]).mean() < 3.0
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
