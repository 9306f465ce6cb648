"""Direct Dynamixel backend (dynamixel-sdk, Protocol 2.0): one sync read + one sync write per arm.

Replaces the Interbotix xs_sdk for the arms it opens (a serial port has one owner). Shadow motors
(shoulder 3, elbow 5) carry Secondary_ID = their primary (2, 4) in the Interbotix motor configs, so
they execute every write addressed to the primary and never answer: we read and write the primaries
1, 2, 4, 6, 7, 8, 9 only. Reading a shadow would cost a status packet and tell nothing the primary's
Present_Position does not; a disagreeing shadow shows up as a motor error, not as a position.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot.arm_layout import (
    SIDES,
    VX300S_ARM_LENGTH,
    VX300S_HORN_RADIUS,
    ArmState,
    ArmTarget,
    finger_position_from_gripper_angle,
    follower_targets_from_command,
    proprio_from_follower_states,
)
from cosmos_policy_core.robot.backend import HardwareError
from cosmos_policy_core.robot.dynamixel_protocol import (
    ADDR_GOAL_POSITION,
    ADDR_OPERATING_MODE,
    ADDR_PRESENT_POSITION,
    ADDR_PROFILE_ACCELERATION,
    ADDR_PROFILE_VELOCITY,
    ADDR_TORQUE_ENABLE,
    LEN_GOAL_POSITION,
    LEN_PRESENT_POSITION,
    OPERATING_MODES,
    le_bytes,
    radians_to_ticks,
    ticks_to_radians,
    to_signed32,
)
from cosmos_policy_core.robot.gripper import GripperConstants
from cosmos_policy_core.robot.limits import JointLimits

log = logging.getLogger(__name__)

# Primaries in the order [waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate, gripper].
PRIMARY_IDS = (1, 2, 4, 6, 7, 8, 9)
SHADOW_IDS = {3: 2, 5: 4}


@dataclass(frozen=True)
class DynamixelConfig:
    """Ports and motor setup for two arms driven directly over U2D2 adapters."""

    ports: tuple[tuple[str, str], ...] = (("left", "/dev/ttyDXL_follower_left"),
                                          ("right", "/dev/ttyDXL_follower_right"))
    baudrate: int = 1_000_000
    motor_ids: tuple[int, ...] = PRIMARY_IDS
    horn_radius: float = VX300S_HORN_RADIUS
    arm_length: float = VX300S_ARM_LENGTH
    # Operating modes as ALOHA's follower setup: arm position, gripper current-based position;
    # profile velocity/acceleration 0 = no motor-side smoothing, the servo tracks each setpoint.
    set_operating_modes: bool = True
    arm_mode: str = "position"
    gripper_mode: str = "current_based_position"
    profile_velocity: int = 0
    profile_acceleration: int = 0
    torque_on_start: bool = True
    # Torque off on close lets the arms fall onto their cradles: only close with arms at rest.
    torque_off_on_close: bool = True
    limits: str | None = "aloha_vx300s"

    @classmethod
    def followers(cls, **overrides) -> "DynamixelConfig":
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def leaders(cls, **overrides) -> "DynamixelConfig":
        """Read-only leaders for teleop: torque stays off, nothing is written to the motors."""
        base = cls(
            ports=(("left", "/dev/ttyDXL_leader_left"), ("right", "/dev/ttyDXL_leader_right")),
            set_operating_modes=False, torque_on_start=False, torque_off_on_close=False,
            limits="aloha_wx250s",
        )
        return dataclasses.replace(base, **overrides)

    def __post_init__(self):
        if len(self.motor_ids) != 7:
            raise ConfigError(f"motor_ids must list 7 primaries (6 arm joints + gripper), got {self.motor_ids}")
        for mode in (self.arm_mode, self.gripper_mode):
            if mode not in OPERATING_MODES:
                raise ConfigError(f"unknown operating mode {mode!r}; known: {sorted(OPERATING_MODES)}")


def _default_sdk():
    try:
        import dynamixel_sdk
    except ImportError as exc:  # pragma: no cover - the hw extra installs it
        raise HardwareError("the dynamixel backend needs dynamixel-sdk: pip install 'cosmos-aloha[hw]'") from exc
    return dynamixel_sdk.PortHandler, lambda: dynamixel_sdk.PacketHandler(2.0)


class DynamixelArm:
    """One arm on one serial port: sync read of Present_Position, sync write of Goal_Position."""

    def __init__(self, port_name: str, config: DynamixelConfig,
                 port_factory: Callable | None = None, packet_handler_factory: Callable | None = None):
        from dynamixel_sdk import COMM_SUCCESS, GroupSyncRead, GroupSyncWrite

        if port_factory is None or packet_handler_factory is None:
            default_port, default_ph = _default_sdk()
            port_factory = port_factory or default_port
            packet_handler_factory = packet_handler_factory or default_ph
        self.port_name = port_name
        self.config = config
        self._ok = COMM_SUCCESS
        self._port = port_factory(port_name)
        self._ph = packet_handler_factory()
        self._reader = GroupSyncRead(self._port, self._ph, ADDR_PRESENT_POSITION, LEN_PRESENT_POSITION)
        for motor_id in config.motor_ids:
            self._reader.addParam(motor_id)
        self._writer = GroupSyncWrite(self._port, self._ph, ADDR_GOAL_POSITION, LEN_GOAL_POSITION)
        self._open = False

    # -- setup ------------------------------------------------------------------------------
    def open(self) -> None:
        if self._open:
            return
        if not self._port.openPort():
            raise HardwareError(f"cannot open {self.port_name}: check the udev symlink, cable and that "
                                "no other driver (xs_sdk, Dynamixel Wizard) holds the port")
        if not self._port.setBaudRate(self.config.baudrate):
            raise HardwareError(f"cannot set {self.config.baudrate} baud on {self.port_name}")
        self._open = True
        cfg = self.config
        if cfg.set_operating_modes:
            # Operating mode and profiles are only writable with torque off.
            for motor_id in cfg.motor_ids:
                self._write(motor_id, ADDR_TORQUE_ENABLE, 1, 0)
            arm_ids, gripper_id = cfg.motor_ids[:6], cfg.motor_ids[6]
            for motor_id in arm_ids:
                self._write(motor_id, ADDR_OPERATING_MODE, 1, OPERATING_MODES[cfg.arm_mode])
                self._write(motor_id, ADDR_PROFILE_VELOCITY, 4, cfg.profile_velocity)
                self._write(motor_id, ADDR_PROFILE_ACCELERATION, 4, cfg.profile_acceleration)
            self._write(gripper_id, ADDR_OPERATING_MODE, 1, OPERATING_MODES[cfg.gripper_mode])
        if cfg.torque_on_start:
            # Goal := present before torque on, so a stale goal register cannot make the arm jump.
            self._sync_write_ticks(self.read_ticks())
            for motor_id in cfg.motor_ids:
                self._write(motor_id, ADDR_TORQUE_ENABLE, 1, 1)
        log.info("dynamixel arm on %s ready (ids %s, torque %s)", self.port_name, cfg.motor_ids,
                 "on" if cfg.torque_on_start else "off")

    def close(self) -> None:
        if not self._open:
            return
        try:
            if self.config.torque_off_on_close:
                for motor_id in self.config.motor_ids:
                    self._write(motor_id, ADDR_TORQUE_ENABLE, 1, 0)
        finally:
            self._port.closePort()
            self._open = False

    def _write(self, motor_id: int, address: int, length: int, value: int) -> None:
        writer = {1: self._ph.write1ByteTxRx, 2: self._ph.write2ByteTxRx, 4: self._ph.write4ByteTxRx}[length]
        result, error = writer(self._port, motor_id, address, int(value) & ((1 << (8 * length)) - 1))
        if result != self._ok:
            raise HardwareError(f"{self.port_name} id {motor_id}: write of address {address} failed: "
                                f"{self._ph.getTxRxResult(result)}")
        if error:
            raise HardwareError(f"{self.port_name} id {motor_id}: motor error on write of address {address}: "
                                f"{self._ph.getRxPacketError(error)} (reboot the motor)")

    # -- loop -------------------------------------------------------------------------------
    def read_ticks(self) -> np.ndarray:
        """Present_Position of the 7 primaries (int64 ticks), one sync read."""
        result = self._reader.txRxPacket()
        if result != self._ok:
            raise HardwareError(f"{self.port_name}: sync read of Present_Position failed: "
                                f"{self._ph.getTxRxResult(result)}")
        ticks = np.empty(len(self.config.motor_ids), dtype=np.int64)
        for i, motor_id in enumerate(self.config.motor_ids):
            if not self._reader.isAvailable(motor_id, ADDR_PRESENT_POSITION, LEN_PRESENT_POSITION):
                raise HardwareError(f"{self.port_name}: no Present_Position from id {motor_id}")
            ticks[i] = to_signed32(self._reader.getData(motor_id, ADDR_PRESENT_POSITION, LEN_PRESENT_POSITION))
        return ticks

    def read_state(self, stamp_ns: int = 0) -> ArmState:
        radians = ticks_to_radians(self.read_ticks())
        gripper = float(radians[6])
        finger = float(finger_position_from_gripper_angle(gripper, self.config.horn_radius, self.config.arm_length))
        return ArmState(tuple(float(r) for r in radians[:6]), gripper, finger, stamp_ns)

    def _sync_write_ticks(self, ticks: np.ndarray) -> None:
        self._writer.clearParam()
        for motor_id, tick in zip(self.config.motor_ids, ticks):
            self._writer.addParam(motor_id, le_bytes(int(tick), LEN_GOAL_POSITION))
        result = self._writer.txPacket()
        if result != self._ok:
            raise HardwareError(f"{self.port_name}: sync write of Goal_Position failed: "
                                f"{self._ph.getTxRxResult(result)}")

    def write_target(self, target: ArmTarget) -> None:
        self._sync_write_ticks(radians_to_ticks(np.array([*target.arm, target.gripper_joint])))


class DynamixelBackend:
    """Both follower arms over dynamixel-sdk, behind the `RobotBackend` interface."""

    def __init__(self, config: DynamixelConfig, constants: GripperConstants,
                 port_factory: Callable | None = None, packet_handler_factory: Callable | None = None):
        sides = dict(config.ports)
        if set(sides) != set(SIDES):
            raise ConfigError(f"dynamixel ports must name both sides {SIDES}, got {sorted(sides)}")
        self.config = config
        self.constants = constants
        self.limits = JointLimits.preset(config.limits) if config.limits else None
        self.arms = {side: DynamixelArm(sides[side], config, port_factory, packet_handler_factory)
                     for side in SIDES}

    def start(self) -> None:
        try:
            for arm in self.arms.values():
                arm.open()
        except Exception:
            self.close()
            raise

    def read_arm_states(self) -> dict[str, ArmState]:
        return {side: arm.read_state() for side, arm in self.arms.items()}

    def read_positions(self) -> np.ndarray:
        states = self.read_arm_states()
        return proprio_from_follower_states(states["left"], states["right"], self.constants)

    def write_command(self, command: np.ndarray) -> None:
        for side, target in follower_targets_from_command(command, self.constants).items():
            if self.limits is not None:
                target = ArmTarget(tuple(float(v) for v in self.limits.clip(target.arm)), target.gripper_joint)
            self.arms[side].write_target(target)

    def close(self) -> None:
        for arm in self.arms.values():
            try:
                arm.close()
            except Exception as exc:  # keep closing the other arm
                log.error("closing %s failed: %s", arm.port_name, exc)
