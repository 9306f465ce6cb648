"""rviz markers for values the policy and planner predict (the rviz config shows cosmos/predicted/value_marker).

The value itself travels as a number on cosmos/predicted/value; the marker is only its picture.
"""
from __future__ import annotations

from visualization_msgs.msg import Marker

from cosmos_aloha.conversions import ns_to_stamp

FIXED_FRAME = "world"  # the rviz config's fixed frame: needs no TF


def value_marker(value: float, stamp_ns: int, label: str = "value", marker_id: int = 0) -> Marker:
    """A text marker "label: 0.73" above the workspace, green for high and red for low values (0..1)."""
    marker = Marker()
    marker.header.stamp = ns_to_stamp(stamp_ns)
    marker.header.frame_id = FIXED_FRAME
    marker.ns, marker.id = "cosmos_value", int(marker_id)
    marker.type, marker.action = Marker.TEXT_VIEW_FACING, Marker.ADD
    marker.pose.position.z = 0.6 + 0.12 * marker_id
    marker.pose.orientation.w = 1.0
    marker.scale.z = 0.08
    level = min(1.0, max(0.0, float(value)))
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 1.0 - level, level, 0.2, 1.0
    marker.text = f"{label}: {float(value):.3f}"
    return marker
