"""Teleoperation sources: where the 14-D joint command of a demonstration comes from.

Leader arms on the real robot (via a leader-arm reader), a scripted sim demonstration played back at
the control rate, or any recorded (T, 14) trajectory; plus the JSON episode markers a recorder uses.
"""
from __future__ import annotations

import json
from typing import Callable, Protocol

import numpy as np

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.robot.arm_layout import STATE_DIM, ArmState, action_from_leader_states
from cosmos_policy_core.robot.gripper import GripperConstants

EPISODE_EVENTS = ("start", "stop")


class TeleopSource(Protocol):
    def start(self) -> None: ...

    def next_command(self) -> np.ndarray | None:
        """The command for this tick (14,), or None once the demonstration is over."""

    def close(self) -> None: ...


class LeaderArmsSource:
    """Leader arms -> follower command: arm joints 1:1, leader gripper joint normalised.

    `read_states` returns {'left': ArmState, 'right': ArmState} of the leaders (Interbotix toolbox,
    Dynamixel leaders, or leader JointState topics); it never ends on its own.
    """

    def __init__(self, read_states: Callable[[], dict[str, ArmState]], constants: GripperConstants,
                 start: Callable[[], None] | None = None, close: Callable[[], None] | None = None):
        self._read = read_states
        self._start = start
        self._close = close
        self.constants = constants

    def start(self) -> None:
        if self._start is not None:
            self._start()

    def next_command(self) -> np.ndarray:
        states = self._read()
        return action_from_leader_states(states["left"], states["right"], self.constants)

    def close(self) -> None:
        if self._close is not None:
            self._close()


class TrajectorySource:
    """Plays a (T, 14) joint-command trajectory one row per tick."""

    def __init__(self, commands: np.ndarray):
        commands = np.asarray(commands, dtype=np.float64)
        if commands.ndim != 2 or commands.shape[1] != STATE_DIM:
            raise ShapeError(f"trajectory has shape {commands.shape}, expected (T, {STATE_DIM})")
        if not np.isfinite(commands).all():
            raise ConfigError("trajectory contains NaN/Inf")
        self.commands = commands
        self._t = 0

    def start(self) -> None:
        self._t = 0

    def next_command(self) -> np.ndarray | None:
        if self._t >= len(self.commands):
            return None
        command = self.commands[self._t]
        self._t += 1
        return command

    @property
    def remaining(self) -> int:
        return len(self.commands) - self._t

    def close(self) -> None:
        pass


def episode_event(event: str, task: str, success: bool | None = None, **extra) -> str:
    """`/cosmos/episode` payload: {"event": "start"|"stop", "task": ..., "success": ...}."""
    if event not in EPISODE_EVENTS:
        raise ConfigError(f"episode event must be one of {EPISODE_EVENTS}, got {event!r}")
    return json.dumps({"event": event, "task": task, "success": success, **extra}, sort_keys=True)
