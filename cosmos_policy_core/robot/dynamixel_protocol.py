"""Dynamixel X-series facts the backends need: control-table addresses, operating modes, units.

Protocol 2.0 control table (XM430 / XM540, emanual.robotis.com); 4096 ticks per revolution with
tick 2048 = 0 rad, the convention the Interbotix driver uses for every joint.
"""
from __future__ import annotations

import math

import numpy as np

ADDR_OPERATING_MODE = 11
ADDR_TORQUE_ENABLE = 64
ADDR_PROFILE_ACCELERATION = 108
ADDR_PROFILE_VELOCITY = 112
ADDR_GOAL_POSITION = 116
ADDR_PRESENT_POSITION = 132
LEN_GOAL_POSITION = 4
LEN_PRESENT_POSITION = 4

OPERATING_MODES = {"current": 0, "velocity": 1, "position": 3, "extended_position": 4,
                   "current_based_position": 5, "pwm": 16}

TICKS_PER_REV = 4096
CENTER_TICK = 2048
MAX_TICK = TICKS_PER_REV - 1
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV


def ticks_to_radians(ticks):
    """Present/goal position ticks (signed, so extended-position readings work) -> rad."""
    return (np.asarray(ticks, dtype=np.float64) - CENTER_TICK) * RAD_PER_TICK


def radians_to_ticks(radians) -> np.ndarray:
    """rad -> goal ticks, rounded and clamped to the single-turn range [0, 4095]."""
    ticks = np.rint(np.asarray(radians, dtype=np.float64) / RAD_PER_TICK) + CENTER_TICK
    return np.clip(ticks, 0, MAX_TICK).astype(np.int64)


def to_signed32(value: int) -> int:
    """The SDK returns 4-byte registers unsigned; Present_Position is a signed int32."""
    value = int(value) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def le_bytes(value: int, length: int) -> list[int]:
    """Little-endian byte list of an (unsigned or two's-complement) register value."""
    value = int(value) & ((1 << (8 * length)) - 1)
    return [(value >> (8 * i)) & 0xFF for i in range(length)]
