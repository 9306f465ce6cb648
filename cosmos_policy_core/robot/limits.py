"""Arm joint limits per arm model, from the motors' own position-limit registers.

The Interbotix motor configs (aloha_vx300s.yaml / aloha_wx250s.yaml) write Min/Max_Position_Limit in
ticks; the same numbers in radians are the hard limits the servo enforces, so we use exactly those.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.robot.arm_layout import ARM_JOINTS
from cosmos_policy_core.robot.dynamixel_protocol import ticks_to_radians


@dataclass(frozen=True)
class JointLimits:
    """Lower/upper bounds (rad) of the 6 arm joints of one arm model."""

    name: str
    lower: tuple[float, ...]
    upper: tuple[float, ...]

    @classmethod
    def from_ticks(cls, name: str, ticks: tuple[tuple[int, int], ...]) -> "JointLimits":
        lo = ticks_to_radians(np.array([t[0] for t in ticks]))
        hi = ticks_to_radians(np.array([t[1] for t in ticks]))
        return cls(name, tuple(float(v) for v in lo), tuple(float(v) for v in hi))

    @classmethod
    def aloha_vx300s(cls) -> "JointLimits":
        """Follower arm (Interbotix aloha_vx300s.yaml Min/Max_Position_Limit)."""
        return cls.from_ticks("aloha_vx300s", ((0, 4095), (841, 2867), (898, 3094), (0, 4095), (830, 3504), (0, 4095)))

    @classmethod
    def aloha_wx250s(cls) -> "JointLimits":
        """Leader arm (Interbotix aloha_wx250s.yaml Min/Max_Position_Limit)."""
        return cls.from_ticks("aloha_wx250s", ((0, 4095), (819, 3345), (648, 3094), (0, 4095), (910, 3447), (0, 4095)))

    @classmethod
    def preset(cls, name: str) -> "JointLimits":
        presets = {"aloha_vx300s": cls.aloha_vx300s, "aloha_wx250s": cls.aloha_wx250s}
        if name not in presets:
            raise ConfigError(f"unknown joint-limit preset {name!r}; known: {sorted(presets)}")
        return presets[name]()

    def _check(self, arm) -> np.ndarray:
        arm = np.asarray(arm, dtype=np.float64)
        if arm.shape[-1] != len(ARM_JOINTS):
            raise ShapeError(f"expected {len(ARM_JOINTS)} arm joints, got shape {arm.shape}")
        return arm

    def clip(self, arm) -> np.ndarray:
        return np.clip(self._check(arm), self.lower, self.upper)

    def margin(self, arm) -> np.ndarray:
        """Distance (rad) to the nearer limit per joint; negative means outside the range."""
        arm = self._check(arm)
        return np.minimum(arm - np.asarray(self.lower), np.asarray(self.upper) - arm)
