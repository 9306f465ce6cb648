"""Action chunk <-> trajectory_msgs/JointTrajectory: header stamp = observation time, one point per step.

Shared by every chunk producer (policy, planner, replay) and the executor, so the wire format lives once.
"""
from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Duration
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from cosmos_aloha.conversions import JOINT_NAMES, ns_to_stamp, stamp_to_ns
from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.runtime.execution import TimedChunk

# Points must be evenly spaced: the executor schedules step i at stamp + i * step.
SPACING_TOLERANCE_NS = 1_000_000


def _duration(ns: int) -> Duration:
    return Duration(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def chunk_to_msg(actions_T_J: np.ndarray, stamp_ns: int, step_ns: int, names=JOINT_NAMES) -> JointTrajectory:
    """(T, 14) actions for times stamp + i * step -> JointTrajectory (time_from_start = i * step)."""
    actions_T_J = np.asarray(actions_T_J, dtype=np.float64)
    if actions_T_J.ndim != 2 or actions_T_J.shape[1] != len(names):
        raise ShapeError(f"chunk has shape {actions_T_J.shape}, expected (T, {len(names)})")
    msg = JointTrajectory()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.joint_names = list(names)
    points = []
    for i, row in enumerate(actions_T_J):
        point = JointTrajectoryPoint()
        point.positions = array.array("d", row.tobytes())
        point.time_from_start = _duration(i * step_ns)
        points.append(point)
    msg.points = points
    return msg


def msg_to_chunk(msg: JointTrajectory, source: str, names=JOINT_NAMES) -> TimedChunk:
    """JointTrajectory -> TimedChunk in the policy joint order; ShapeError when it cannot be scheduled."""
    if not msg.points:
        raise ShapeError("trajectory has no points")
    order = list(range(len(names)))
    if msg.joint_names and list(msg.joint_names) != list(names):
        index = {n: i for i, n in enumerate(msg.joint_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ShapeError(f"trajectory lacks joints {missing}")
        order = [index[n] for n in names]
    rows = [np.asarray(p.positions, dtype=np.float64) for p in msg.points]
    if any(r.shape[0] <= max(order) for r in rows):
        raise ShapeError(f"trajectory points have too few positions for {len(names)} joints")
    actions_T_J = np.stack([r[order] for r in rows])
    offsets = np.array([stamp_to_ns(p.time_from_start) for p in msg.points], dtype=np.int64)
    if len(offsets) > 1:
        steps = np.diff(offsets)
        step_ns = int(steps[0])
        if step_ns <= 0 or np.abs(steps - step_ns).max() > SPACING_TOLERANCE_NS:
            raise ShapeError("trajectory points are not evenly spaced in time_from_start")
    else:
        step_ns = 40_000_000
    return TimedChunk(actions_T_J, stamp_to_ns(msg.header.stamp) + int(offsets[0]), step_ns, source)
