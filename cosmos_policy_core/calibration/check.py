"""Pose and zero check: how far each joint is from the sleep and start poses and from its limits.

Moves nothing. An arm resting in its cradle should match the sleep pose on every joint; one joint
far off while its neighbours match is the signature of a mis-zeroed motor (horn on the wrong spline,
wrong Homing_Offset, a swapped motor), which would make the policy command a wild pose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.robot.arm_layout import ARM_JOINTS, SLEEP_ARM_POSE, START_ARM_POSE, STATE_DIM
from cosmos_policy_core.robot.limits import JointLimits

POSES = {"sleep": np.asarray(SLEEP_ARM_POSE), "start": np.asarray(START_ARM_POSE)}


@dataclass(frozen=True)
class JointReport:
    arm: str
    joint: str
    value: float
    from_sleep: float
    from_start: float
    limit_margin: float  # rad to the nearer limit, negative = beyond it
    flag: str = ""


@dataclass(frozen=True)
class ArmReport:
    arm: str
    nearest_pose: str
    median_distance: float
    joints: tuple[JointReport, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class CheckReport:
    arms: tuple[ArmReport, ...]
    flags: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.flags

    def text(self) -> str:
        lines = []
        for arm in self.arms:
            lines.append(f"{arm.arm}: nearest pose '{arm.nearest_pose}' (median joint distance "
                         f"{arm.median_distance:.3f} rad)")
            lines.append(f"  {'joint':<14}{'value':>9}{'Δsleep':>9}{'Δstart':>9}{'limit':>9}")
            for j in arm.joints:
                lines.append(f"  {j.joint:<14}{j.value:>9.3f}{j.from_sleep:>+9.3f}{j.from_start:>+9.3f}"
                             f"{j.limit_margin:>9.3f}  {j.flag}")
        lines += [f"FLAG: {f}" for f in self.flags] or ["OK: no joint looks mis-zeroed"]
        return "\n".join(lines)


def _quarter_turn_hint(offset: float) -> str:
    quarters = round(offset / (math.pi / 2))
    if quarters and abs(offset - quarters * math.pi / 2) < 0.15:
        return f" ≈ {quarters * 90:+d}°: a whole-spline/zero offset, re-home or remount this motor"
    return ""


def check_arm(arm: str, positions, limits: JointLimits, tolerance: float = 0.3,
              limit_slack: float = 0.3) -> ArmReport:
    """One arm (6 joints, rad). Joints further than `tolerance` from the pose the rest of the arm is
    in are flagged; `limit_slack` tolerates a cradle that rests slightly past the servo's limits."""
    q = np.asarray(positions, dtype=np.float64)
    if q.shape != (len(ARM_JOINTS),):
        raise ShapeError(f"{arm}: expected {len(ARM_JOINTS)} arm joints, got shape {q.shape}")
    deltas = {name: q - pose for name, pose in POSES.items()}
    medians = {name: float(np.median(np.abs(d))) for name, d in deltas.items()}
    nearest = min(medians, key=medians.get)
    margin = limits.margin(q)
    flags, joints = [], []
    at_pose = medians[nearest] <= tolerance
    for i, joint in enumerate(ARM_JOINTS):
        flag = ""
        offset = float(deltas[nearest][i])
        if not np.isfinite(q[i]):
            flag = "no reading (NaN)"
        elif at_pose and abs(offset) > tolerance:
            flag = f"{offset:+.3f} rad from the {nearest} pose while the rest of the arm matches it" + \
                _quarter_turn_hint(offset)
        elif margin[i] < -limit_slack:
            flag = f"{-margin[i]:.3f} rad beyond its limit [{limits.lower[i]:.3f}, {limits.upper[i]:.3f}]"
        if flag:
            flags.append(f"{arm} {joint}: {flag}")
        joints.append(JointReport(arm, joint, float(q[i]), float(deltas["sleep"][i]), float(deltas["start"][i]),
                                  float(margin[i]), flag))
    if not at_pose:
        flags.append(f"{arm}: not near the sleep or start pose (median {medians[nearest]:.2f} rad); rest the arm in "
                     "its cradle and run the check again")
    return ArmReport(arm, nearest, medians[nearest], tuple(joints), tuple(flags))


def check_arms(arms: Mapping[str, np.ndarray], limits: Mapping[str, JointLimits] | JointLimits,
               tolerance: float = 0.3, grippers: Mapping[str, float] | None = None) -> CheckReport:
    """Several named arms; optional normalised gripper readings are checked for a sane 0..1 range."""
    reports = []
    for name, q in arms.items():
        arm_limits = limits[name] if isinstance(limits, Mapping) else limits
        reports.append(check_arm(name, q, arm_limits, tolerance))
    flags = [f for r in reports for f in r.flags]
    for name, value in (grippers or {}).items():
        if not -0.15 <= value <= 1.15:
            flags.append(f"{name} gripper reads {value:.2f} normalised (expected 0..1): the gripper constants do "
                         "not fit this robot; run `cosmos-aloha calibrate grippers` or pick the right preset")
    return CheckReport(tuple(reports), tuple(flags))


def check_follower_qpos(qpos, limits: JointLimits | None = None, tolerance: float = 0.3) -> CheckReport:
    """The driver's 14-D `/joint_states` (policy layout) -> report for both follower arms."""
    qpos = np.asarray(qpos, dtype=np.float64)
    if qpos.shape != (STATE_DIM,):
        raise ShapeError(f"expected a {STATE_DIM}-D joint state, got shape {qpos.shape}")
    limits = limits or JointLimits.aloha_vx300s()
    return check_arms({"follower_left": qpos[:6], "follower_right": qpos[7:13]}, limits, tolerance,
                      grippers={"follower_left": float(qpos[6]), "follower_right": float(qpos[13])})
