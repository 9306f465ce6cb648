"""The 14-D bimanual layout, per-arm states, reference poses and the pure maps between them.

Backends, teleop, calibration and data conversion all go through these functions, so the gripper
conventions (observation = follower finger position, action = leader gripper joint) live in one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.robot.gripper import GripperConstants

from cosmos_policy_core.robot.aloha import (  # noqa: F401 (re-exported: the names backends use)
    ARM_JOINTS, GRIPPER_INDICES, JOINT_NAMES, SIDES, SLEEP_ARM_POSE, START_ARM_POSE, STATE_DIM,
)

FOLLOWER_NAMES = {"left": "follower_left", "right": "follower_right"}
LEADER_NAMES = {"left": "leader_left", "right": "leader_right"}

# Interbotix gripper geometry (m): the xs_sdk turns the gripper horn angle into a finger position.
VX300S_HORN_RADIUS, VX300S_ARM_LENGTH = 0.022, 0.036


@dataclass(frozen=True)
class ArmState:
    """One arm as the motors see it: 6 arm joints (rad), gripper motor angle (rad), finger position (m)."""

    arm: tuple[float, ...]
    gripper_joint: float
    finger_position: float
    stamp_ns: int = 0

    def __post_init__(self):
        if len(self.arm) != len(ARM_JOINTS):
            raise ShapeError(f"ArmState needs {len(ARM_JOINTS)} arm joints, got {len(self.arm)}")


def finger_position_from_gripper_angle(angle, horn_radius=VX300S_HORN_RADIUS, arm_length=VX300S_ARM_LENGTH):
    """Finger linear position (m) of the horn-and-link gripper, as the Interbotix xs_sdk computes it.

    With the vx300s geometry this maps ALOHA's follower joint open/close (1.4910 / -0.6213 rad) onto
    its finger open/close (0.0580 / 0.0184 m) within 0.1 mm, which is why the two tables agree.
    """
    angle = np.asarray(angle, dtype=np.float64)
    a1 = horn_radius * np.sin(angle)
    c_sq = horn_radius**2 - a1**2
    return a1 + np.sqrt(arm_length**2 - c_sq)


def arm_state_from_joint_state(names: Sequence[str], positions: Sequence[float], stamp_ns: int = 0) -> ArmState:
    """An Interbotix per-arm JointState (7 motors + left/right finger) -> ArmState, by joint name."""
    if names:
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in (*ARM_JOINTS, "gripper", "left_finger") if n not in index]
        if missing:
            raise ShapeError(f"arm JointState lacks joints {missing} (names: {list(names)})")
        arm = tuple(float(positions[index[j]]) for j in ARM_JOINTS)
        return ArmState(arm, float(positions[index["gripper"]]), float(positions[index["left_finger"]]), stamp_ns)
    if len(positions) < 8:
        raise ShapeError(f"arm JointState has {len(positions)} positions, the Interbotix layout has 9")
    return ArmState(tuple(float(p) for p in positions[:6]), float(positions[6]), float(positions[7]), stamp_ns)


def proprio_from_follower_states(left: ArmState, right: ArmState, constants: GripperConstants) -> np.ndarray:
    """Observation qpos (14,): arm joints + follower finger position normalised (ALOHA's qpos)."""
    out = np.empty(STATE_DIM, dtype=np.float64)
    for base, state in ((0, left), (7, right)):
        out[base : base + 6] = state.arm
        out[base + 6] = constants.follower_position_normalize(state.finger_position)
    return out


def action_from_leader_states(left: ArmState, right: ArmState, constants: GripperConstants) -> np.ndarray:
    """Teleop action (14,): leader arm joints 1:1 + leader gripper joint normalised (ALOHA's action)."""
    out = np.empty(STATE_DIM, dtype=np.float64)
    for base, state in ((0, left), (7, right)):
        out[base : base + 6] = state.arm
        out[base + 6] = constants.leader_joint_normalize(state.gripper_joint)
    return out


@dataclass(frozen=True)
class ArmTarget:
    """What one follower arm is told: 6 joint angles and the gripper motor angle (rad)."""

    arm: tuple[float, ...]
    gripper_joint: float


def follower_targets_from_command(command: np.ndarray, constants: GripperConstants) -> dict[str, ArmTarget]:
    """A 14-D command (normalised grippers) -> per-side follower targets (gripper as motor angle)."""
    command = np.asarray(command, dtype=np.float64)
    if command.shape != (STATE_DIM,):
        raise ShapeError(f"joint command has shape {command.shape}, expected ({STATE_DIM},)")
    if not np.all(np.isfinite(command)):
        raise ValueError(f"joint command contains NaN/Inf: {command.tolist()}")
    targets = {}
    for side, base in (("left", 0), ("right", 7)):
        gripper = float(constants.follower_joint_unnormalize(command[base + 6]))
        targets[side] = ArmTarget(tuple(float(v) for v in command[base : base + 6]), gripper)
    return targets


def wrap_to_pi(angle):
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi
