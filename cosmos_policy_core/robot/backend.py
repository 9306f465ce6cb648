"""The one interface the `aloha_driver` node talks to, and the error type of hardware failures.

A backend turns the 14-D policy layout into motor commands and motor readings back into the 14-D
observation; everything hardware-specific (Interbotix toolbox or raw Dynamixel packets) sits behind it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from cosmos_policy_core.errors import CosmosAlohaError
from cosmos_policy_core.robot.arm_layout import ArmState


class HardwareError(CosmosAlohaError):
    """A motor, serial port or driver did not answer as expected (the message names which)."""


@runtime_checkable
class RobotBackend(Protocol):
    def start(self) -> None:
        """Open the hardware and run the setup sequence (modes, torque); idempotent."""

    def read_arm_states(self) -> dict[str, ArmState]:
        """Raw per-side follower states ('left', 'right'): motor angles and finger positions."""

    def read_positions(self) -> np.ndarray:
        """Observation qpos (14,), policy layout, grippers normalised from the finger position."""

    def write_command(self, command: np.ndarray) -> None:
        """Command (14,), policy layout, grippers normalised (0 closed .. 1 open)."""

    def close(self) -> None:
        """Release the hardware (torque policy documented per backend)."""

