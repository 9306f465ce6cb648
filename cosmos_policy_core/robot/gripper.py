"""Gripper normalisation: ALOHA's 0 (closed) .. 1 (open) convention for the two gripper signals.

Observation (qpos) grippers are the follower *finger position* (m) normalised; action grippers are
the leader *gripper joint angle* (rad) normalised, executed by un-normalising into a follower gripper
joint angle. The constants differ between hardware generations, so they are data
(`calibration/grippers/*.yaml`), with the two published tables as presets.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from cosmos_policy_core.errors import ConfigError

_FIELDS = (
    "leader_position_open", "leader_position_close",
    "follower_position_open", "follower_position_close",
    "leader_joint_open", "leader_joint_close",
    "follower_joint_open", "follower_joint_close",
)


@dataclass(frozen=True)
class GripperConstants:
    """Open/close ends of each gripper signal (positions in m, joints in rad)."""

    name: str
    leader_position_open: float
    leader_position_close: float
    follower_position_open: float
    follower_position_close: float
    leader_joint_open: float
    leader_joint_close: float
    follower_joint_open: float
    follower_joint_close: float

    @classmethod
    def original_aloha(cls) -> "GripperConstants":
        """tonyzhaozh/aloha, ACT and openpi constants (also the ACT / gym-aloha sim)."""
        return cls("original_aloha", 0.02417, 0.01244, 0.05800, 0.01844, 0.3083, -0.6842, 1.4910, -0.6213)

    @classmethod
    def aloha2(cls) -> "GripperConstants":
        """Interbotix ROS 2 ALOHA (ALOHA 2 / Trossen) constants."""
        return cls("aloha2", 0.0323, 0.0185, 0.0579, 0.0440, 0.8298, -0.0552, 1.6214, 0.6197)

    @classmethod
    def preset(cls, name: str) -> "GripperConstants":
        presets = {"original_aloha": cls.original_aloha, "aloha2": cls.aloha2}
        if name not in presets:
            raise ConfigError(f"unknown gripper preset {name!r}; known: {sorted(presets)}")
        return presets[name]()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "GripperConstants":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read gripper calibration {path}: {exc}") from exc
        missing = [f for f in _FIELDS if f not in (data or {})]
        if missing:
            raise ConfigError(f"gripper calibration {path} lacks {missing}")
        return cls(name=str(data.get("name", path.stem)), **{f: float(data[f]) for f in _FIELDS})

    @classmethod
    def load(cls, spec: str | Path) -> "GripperConstants":
        """A preset name (`aloha2`, `original_aloha`) or a YAML path."""
        if str(spec).endswith((".yaml", ".yml")):
            return cls.from_yaml(spec)
        return cls.preset(str(spec))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    # -- the four conversions ALOHA uses -------------------------------------------------------
    def follower_position_normalize(self, x):
        return (x - self.follower_position_close) / (self.follower_position_open - self.follower_position_close)

    def follower_position_unnormalize(self, y):
        return y * (self.follower_position_open - self.follower_position_close) + self.follower_position_close

    def leader_joint_normalize(self, x):
        return (x - self.leader_joint_close) / (self.leader_joint_open - self.leader_joint_close)

    def follower_joint_unnormalize(self, y):
        return y * (self.follower_joint_open - self.follower_joint_close) + self.follower_joint_close

    def follower_joint_normalize(self, x):
        return (x - self.follower_joint_close) / (self.follower_joint_open - self.follower_joint_close)

    def leader_position_normalize(self, x):
        return (x - self.leader_position_close) / (self.leader_position_open - self.leader_position_close)
