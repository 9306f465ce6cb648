"""The one interface the `aloha_driver` node talks to, and the factory that picks a backend.

A backend turns the 14-D policy layout into motor commands and motor readings back into the 14-D
observation; everything hardware-specific (Interbotix toolbox or raw Dynamixel packets) sits behind it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from cosmos_policy_core.errors import ConfigError, CosmosAlohaError
from cosmos_policy_core.robot.arm_layout import ArmState
from cosmos_policy_core.robot.gripper import GripperConstants


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


def make_backend(name: str, constants: GripperConstants, **options) -> RobotBackend:
    """`interbotix` or `dynamixel`; options go to that backend's config (see each module)."""
    if name == "interbotix":
        from cosmos_policy_core.robot.interbotix_backend import InterbotixBackend, InterbotixConfig

        return InterbotixBackend(InterbotixConfig.followers(**options), constants)
    if name == "dynamixel":
        from cosmos_policy_core.robot.dynamixel_backend import DynamixelBackend, DynamixelConfig

        return DynamixelBackend(DynamixelConfig.followers(**options), constants)
    raise ConfigError(f"unknown robot backend {name!r}; use 'interbotix' or 'dynamixel'")
