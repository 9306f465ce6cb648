"""Chunk <-> JointTrajectory conversion and the value marker (message contracts of the graph)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from builtin_interfaces.msg import Duration  # noqa: E402

from cosmos_aloha.chunks import chunk_to_msg, msg_to_chunk  # noqa: E402
from cosmos_aloha.conversions import JOINT_NAMES  # noqa: E402
from cosmos_aloha.markers import value_marker  # noqa: E402
from cosmos_policy_core.errors import ShapeError  # noqa: E402

STAMP = 1_700_000_000_123_456_789


def test_chunk_roundtrip_keeps_actions_stamp_and_spacing():
    actions = np.random.default_rng(0).normal(size=(50, 14))
    msg = chunk_to_msg(actions, STAMP, 40_000_000)
    assert len(msg.points) == 50 and msg.points[1].time_from_start.nanosec == 40_000_000
    chunk = msg_to_chunk(msg, "planner")
    np.testing.assert_array_equal(chunk.actions, actions)
    assert (chunk.stamp_ns, chunk.step_ns, chunk.source) == (STAMP, 40_000_000, "planner")


def test_chunk_joint_order_follows_names():
    actions = np.tile(np.arange(14, dtype=float), (3, 1))
    order = list(reversed(JOINT_NAMES))
    msg = chunk_to_msg(actions[:, ::-1], STAMP, 40_000_000, names=order)
    np.testing.assert_array_equal(msg_to_chunk(msg, "policy").actions, actions)


def test_chunk_rejects_missing_joints_uneven_spacing_and_empty():
    msg = chunk_to_msg(np.zeros((4, 14)), STAMP, 40_000_000)
    msg.joint_names = list(JOINT_NAMES[:13]) + ["extra"]
    with pytest.raises(ShapeError, match="lacks joints"):
        msg_to_chunk(msg, "policy")
    msg = chunk_to_msg(np.zeros((4, 14)), STAMP, 40_000_000)
    msg.points[2].time_from_start = Duration(sec=0, nanosec=95_000_000)
    with pytest.raises(ShapeError, match="evenly spaced"):
        msg_to_chunk(msg, "policy")
    msg.points = []
    with pytest.raises(ShapeError, match="no points"):
        msg_to_chunk(msg, "policy")
    with pytest.raises(ShapeError):
        chunk_to_msg(np.zeros((4, 7)), STAMP, 40_000_000)


def test_value_marker_text_and_colour():
    marker = value_marker(0.75, STAMP, label="V(s')")
    assert marker.text == "V(s'): 0.750" and marker.header.frame_id == "world"
    assert marker.color.g == pytest.approx(0.75) and marker.color.r == pytest.approx(0.25)
