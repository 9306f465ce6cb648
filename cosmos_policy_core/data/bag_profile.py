"""Bag profiles: which topics hold cameras, proprio and actions, and how joints and grippers map to 14-D.

Profiles are YAML files (`data/profiles/<name>.yaml`, or any path a user passes); see cosmos.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cosmos_policy_core.data.episode import CAMERAS, STATE_DIM
from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.robot.gripper import GripperConstants

PROFILE_DIR = Path(__file__).parent / "profiles"
# Profile name of a gripper map -> the GripperConstants method it applies.
NORMALIZERS = {
    "follower_position": "follower_position_normalize",
    "leader_joint": "leader_joint_normalize",
    "follower_joint": "follower_joint_normalize",
    "leader_position": "leader_position_normalize",
}


@dataclass(frozen=True)
class JointSource:
    """Part of the 14-D vector read from one JointState topic.

    `positions` picks entries of JointState.position, by joint name (str) or index (int); `normalize`
    maps an output slot of this source to a gripper normalisation (applied here, and nowhere else).
    """

    topic: str
    positions: tuple[int | str, ...]
    normalize: tuple[tuple[int, str], ...] = ()

    def extract(self, names: list[str], position, gripper: GripperConstants, source: str) -> np.ndarray:
        """One JointState (names, positions) -> this source's values (float64), grippers normalised."""
        position = np.asarray(position, dtype=np.float64)
        index = None
        out = np.empty(len(self.positions), dtype=np.float64)
        for slot, key in enumerate(self.positions):
            if isinstance(key, str):
                if index is None:
                    index = {n: i for i, n in enumerate(names)}
                if key not in index:
                    raise DataError(f"{source}: {self.topic} has no joint named {key!r} (names: {list(names)})")
                i = index[key]
            else:
                i = key
            if i >= len(position):
                raise DataError(
                    f"{source}: {self.topic} has {len(position)} positions, the profile reads index {i}; "
                    "wrong robot layout or wrong --profile"
                )
            out[slot] = position[i]
        for slot, kind in self.normalize:
            out[slot] = getattr(gripper, NORMALIZERS[kind])(out[slot])
        return out


@dataclass(frozen=True)
class BagProfile:
    """How a bag's topics become an ALOHA episode (see profiles/*.yaml)."""

    name: str
    cameras: tuple[tuple[str, str], ...]          # (camera name, image topic)
    proprio: tuple[JointSource, ...]
    action: tuple[JointSource, ...]
    episode_topic: str | None = None
    gripper_constants: str = "aloha2"
    max_skew_ms: float = 100.0
    fps: float = 25.0

    @classmethod
    def cosmos(cls) -> "BagProfile":
        return cls.load("cosmos")

    @classmethod
    def interbotix(cls) -> "BagProfile":
        return cls.load("interbotix")

    @classmethod
    def load(cls, spec: str | Path) -> "BagProfile":
        """A profile name from data/profiles/ or a path to a YAML file."""
        path = Path(spec)
        if not str(spec).endswith((".yaml", ".yml")):
            path = PROFILE_DIR / f"{spec}.yaml"
            if not path.exists():
                known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
                raise ConfigError(f"unknown bag profile {spec!r}; known: {known}, or pass a YAML path")
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read bag profile {path}: {exc}") from exc
        return cls.from_dict(data or {}, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "profile") -> "BagProfile":
        missing = [k for k in ("name", "cameras", "proprio", "action") if k not in data]
        if missing:
            raise ConfigError(f"bag profile {where} lacks {missing}")
        cameras = tuple((str(c), str(t)) for c, t in dict(data["cameras"]).items())
        unknown = sorted({c for c, _ in cameras} - set(CAMERAS))
        if unknown or len(cameras) != len(CAMERAS):
            raise ConfigError(f"bag profile {where}: cameras must be exactly {list(CAMERAS)}, got {[c for c, _ in cameras]}")
        profile = cls(
            name=str(data["name"]),
            cameras=cameras,
            proprio=tuple(_joint_source(s, where) for s in data["proprio"]),
            action=tuple(_joint_source(s, where) for s in data["action"]),
            episode_topic=data.get("episode_topic") or None,
            gripper_constants=str(data.get("gripper_constants", "aloha2")),
            max_skew_ms=float(data.get("max_skew_ms", 100.0)),
            fps=float(data.get("fps", 25.0)),
        )
        for role, sources in (("proprio", profile.proprio), ("action", profile.action)):
            dim = sum(len(s.positions) for s in sources)
            if dim != STATE_DIM:
                raise ConfigError(f"bag profile {where}: {role} sources give {dim} values, the ALOHA layout needs {STATE_DIM}")
        return profile

    def gripper(self, override: str | None = None) -> GripperConstants:
        return GripperConstants.load(override or self.gripper_constants)

    @property
    def joint_topics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.topic for s in self.proprio + self.action))

    @property
    def camera_topics(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.cameras)


def _joint_source(data: dict, where: str) -> JointSource:
    try:
        positions = tuple(p if isinstance(p, str) else int(p) for p in data["positions"])
        normalize = tuple((int(slot), str(kind)) for slot, kind in dict(data.get("normalize") or {}).items())
        topic = str(data["topic"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bag profile {where}: bad joint source {data}: {exc}") from exc
    for slot, kind in normalize:
        if kind not in NORMALIZERS:
            raise ConfigError(f"bag profile {where}: {topic} normalize {kind!r} unknown; use one of {sorted(NORMALIZERS)}")
        if not 0 <= slot < len(positions):
            raise ConfigError(f"bag profile {where}: {topic} normalize slot {slot} outside its {len(positions)} positions")
    return JointSource(topic, positions, normalize)
