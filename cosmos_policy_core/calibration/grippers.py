"""Gripper calibration: open/close ends of the finger position and gripper joint of every gripper.

The user holds each gripper fully open, then fully closed; the median of each held phase is one end.
Both sides of a role share one set of constants (ALOHA's tables are per hardware generation), so the
two sides are averaged and their disagreement reported.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from cosmos_policy_core.errors import CosmosAlohaError
from cosmos_policy_core.robot.arm_layout import SIDES, ArmState
from cosmos_policy_core.robot.gripper import GripperConstants

log = logging.getLogger(__name__)

ROLES = ("leader", "follower")
PHASES = ("open", "close")
# Smallest open-close travel that counts as "the gripper moved" (below this the user probably
# operated another gripper or the wrong topic is being read).
MIN_JOINT_SPAN_RAD = 0.2
MIN_POSITION_SPAN_M = 0.004
# Two sides of one role further apart than this get a warning in the report.
SIDE_JOINT_TOLERANCE_RAD = 0.1
SIDE_POSITION_TOLERANCE_M = 0.003


class CalibrationError(CosmosAlohaError):
    """Recorded calibration data do not make sense (the message says what to redo)."""


class ArmStateSource(Protocol):
    def read(self, role: str, side: str) -> ArmState:
        """The newest state of one arm (`role` leader|follower, `side` left|right)."""


Key = tuple[str, str, str]  # (role, side, phase)


@dataclass(frozen=True)
class GripperCalibration:
    constants: GripperConstants
    # (role, side) -> {"joint_open", "joint_close", "position_open", "position_close"}
    per_side: dict[tuple[str, str], dict[str, float]]
    warnings: tuple[str, ...] = field(default=())

    def report(self) -> str:
        lines = [f"{'arm':<16}{'joint open':>12}{'joint close':>12}{'pos open':>11}{'pos close':>11}"]
        for (role, side), v in sorted(self.per_side.items()):
            lines.append(f"{role + '_' + side:<16}{v['joint_open']:>12.4f}{v['joint_close']:>12.4f}"
                         f"{v['position_open']:>11.5f}{v['position_close']:>11.5f}")
        c = self.constants
        lines.append("constants: " + ", ".join(
            f"{name}={getattr(c, name):.5g}" for name in (
                "leader_joint_open", "leader_joint_close", "follower_joint_open", "follower_joint_close",
                "leader_position_open", "leader_position_close", "follower_position_open",
                "follower_position_close")))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _held_value(samples: Sequence[float]) -> float:
    return float(np.median(np.asarray(samples, dtype=np.float64)))


def gripper_constants_from_recordings(recordings: Mapping[Key, Sequence[ArmState]],
                                      name: str = "calibrated") -> GripperCalibration:
    """Constants from held open/close phases of every (role, side); pure, no I/O."""
    missing = [k for k in ((r, s, p) for r in ROLES for s in SIDES for p in PHASES) if not recordings.get(k)]
    if missing:
        raise CalibrationError(f"no samples recorded for {missing}; record every gripper open and closed")
    per_side: dict[tuple[str, str], dict[str, float]] = {}
    for role in ROLES:
        for side in SIDES:
            v = {}
            for phase in PHASES:
                states = recordings[(role, side, phase)]
                v[f"joint_{phase}"] = _held_value([s.gripper_joint for s in states])
                v[f"position_{phase}"] = _held_value([s.finger_position for s in states])
            arm = f"{role}_{side}"
            joint_span = v["joint_open"] - v["joint_close"]
            position_span = v["position_open"] - v["position_close"]
            if abs(joint_span) < MIN_JOINT_SPAN_RAD:
                raise CalibrationError(
                    f"{arm}: gripper joint moved only {joint_span:+.3f} rad between open and close "
                    f"(need > {MIN_JOINT_SPAN_RAD}); open and close the {arm} gripper fully when prompted")
            if joint_span < 0 or position_span < 0:
                raise CalibrationError(
                    f"{arm}: the 'open' reading is smaller than the 'close' reading (joint {joint_span:+.3f} rad, "
                    f"finger {position_span:+.4f} m); the phases were swapped, redo the calibration")
            if role == "follower" and position_span < MIN_POSITION_SPAN_M:
                raise CalibrationError(f"{arm}: finger position moved only {position_span * 1e3:.1f} mm; "
                                       "check the gripper geometry (horn radius / arm length) of the driver")
            per_side[(role, side)] = v
    warnings = []
    fields = {}
    for role in ROLES:
        left, right = per_side[(role, "left")], per_side[(role, "right")]
        for key, tolerance in (("joint_open", SIDE_JOINT_TOLERANCE_RAD), ("joint_close", SIDE_JOINT_TOLERANCE_RAD),
                               ("position_open", SIDE_POSITION_TOLERANCE_M),
                               ("position_close", SIDE_POSITION_TOLERANCE_M)):
            if abs(left[key] - right[key]) > tolerance:
                warnings.append(f"{role} {key.replace('_', ' ')} differs between sides: left {left[key]:.4f}, "
                                f"right {right[key]:.4f} (one set of constants serves both; check the motors)")
            fields[f"{role}_{key}"] = 0.5 * (left[key] + right[key])
    constants = GripperConstants(name=name, **fields)
    for w in warnings:
        log.warning(w)
    return GripperCalibration(constants, per_side, tuple(warnings))


def record_gripper_phases(source: ArmStateSource, prompt: Callable[[str], object], samples: int = 25,
                          period_s: float = 0.02, roles: Sequence[str] = ROLES,
                          sides: Sequence[str] = SIDES) -> dict[Key, list[ArmState]]:
    """Interactive part: for each gripper ask for open then close, then sample it while held."""
    recordings: dict[Key, list[ArmState]] = {}
    steps = [(r, s, p) for r in roles for s in sides for p in PHASES]
    for role, side, phase in tqdm(steps, desc="grippers", unit="phase", leave=False):
        verb = "OPEN fully" if phase == "open" else "CLOSE fully"
        hint = " (move the leader's handle)" if role == "leader" else " (torque off or move it by hand)"
        prompt(f"{verb} the {role}_{side} gripper{hint} and hold it there; press Enter to record")
        states = []
        for _ in range(samples):
            states.append(source.read(role, side))
            time.sleep(period_s)
        recordings[(role, side, phase)] = states
    return recordings
