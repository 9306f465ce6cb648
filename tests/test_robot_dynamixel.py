"""Dynamixel backend against a fake serial bus that decodes every Protocol 2.0 packet on the wire.

The real dynamixel-sdk PacketHandler builds the packets; the fake port checks framing and CRC with an
independent CRC-16 implementation, records the decoded instructions, and answers like motors would.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cosmos_policy_core.robot.arm_layout import finger_position_from_gripper_angle
from cosmos_policy_core.robot.backend import HardwareError
from cosmos_policy_core.robot.dynamixel_backend import DynamixelBackend, DynamixelConfig
from cosmos_policy_core.robot.gripper import GripperConstants

INST_READ, INST_WRITE, INST_SYNC_READ, INST_SYNC_WRITE = 0x02, 0x03, 0x82, 0x83


def crc16(data: bytes) -> int:
    """CRC-16 (polynomial 0x8005, init 0, MSB first) as in the Protocol 2.0 spec."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def test_crc_matches_the_spec_example():
    # e-Manual Protocol 2.0 ping example: FF FF FD 00 01 03 00 01 | CRC 19 4E.
    assert crc16(bytes([0xFF, 0xFF, 0xFD, 0x00, 0x01, 0x03, 0x00, 0x01])) == 0x4E19


class FakeBus:
    """Motors with a 256-byte control table each; records (port, id, instruction, params, raw)."""

    def __init__(self, present_ticks: dict[int, int]):
        self.present_ticks = present_ticks
        self.tables: dict[str, dict[int, bytearray]] = {}  # per port: one arm's motors
        self.packets: list[tuple[str, int, int, bytes, bytes]] = []

    def port(self, name: str) -> "FakePort":
        self.tables[name] = {i: bytearray(256) for i in self.present_ticks}
        for motor_id, ticks in self.present_ticks.items():
            self.tables[name][motor_id][132:136] = (ticks & 0xFFFFFFFF).to_bytes(4, "little")
        return FakePort(self, name)


class FakePort:
    def __init__(self, bus: FakeBus, name: str):
        self.bus, self.port_name = bus, name
        self.is_using = False
        self.rx = bytearray()
        self.baudrate = None
        self.opened = False

    def openPort(self):
        self.opened = True
        return True

    def closePort(self):
        self.opened = False

    def setBaudRate(self, baudrate):
        self.baudrate = baudrate
        return True

    def getBaudRate(self):
        return self.baudrate

    def clearPort(self):
        self.rx.clear()

    def setPacketTimeout(self, _length):
        pass

    def setPacketTimeoutMillis(self, _ms):
        pass

    def isPacketTimeout(self):
        return True  # everything a motor would send is already queued

    def readPort(self, length):
        out = bytes(self.rx[:length])
        del self.rx[:length]
        return list(out)

    def writePort(self, packet):
        raw = bytes(packet)
        assert raw[:4] == b"\xff\xff\xfd\x00", raw.hex()
        length = raw[5] | raw[6] << 8
        assert len(raw) == length + 7, "length field disagrees with the packet size"
        assert crc16(raw[:-2]) == (raw[-2] | raw[-1] << 8), "bad CRC"
        motor_id, inst, params = raw[4], raw[7], raw[8:-2]
        self.bus.packets.append((self.port_name, motor_id, inst, params, raw))
        self._execute(motor_id, inst, params)
        return len(raw)

    def _status(self, motor_id: int, params: bytes = b"") -> None:
        body = bytes([0xFF, 0xFF, 0xFD, 0x00, motor_id]) + (len(params) + 4).to_bytes(2, "little")
        body += bytes([0x55, 0x00]) + params
        self.rx += body + crc16(body).to_bytes(2, "little")

    def _execute(self, motor_id: int, inst: int, params: bytes) -> None:
        tables = self.bus.tables[self.port_name]
        if inst == INST_WRITE:
            address = params[0] | params[1] << 8
            if motor_id in tables:
                tables[motor_id][address : address + len(params) - 2] = params[2:]
                self._status(motor_id)
        elif inst == INST_SYNC_READ:
            address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
            for i in params[4:]:
                if i in tables:
                    self._status(i, bytes(tables[i][address : address + length]))
        elif inst == INST_SYNC_WRITE:
            address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
            for k in range(4, len(params), length + 1):
                i = params[k]
                if i in tables:
                    tables[i][address : address + length] = params[k + 1 : k + 1 + length]
        else:
            raise AssertionError(f"unexpected instruction 0x{inst:02x}")


ALL_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
PRIMARIES = [1, 2, 4, 6, 7, 8, 9]


def make_backend(bus: FakeBus, **overrides) -> DynamixelBackend:
    from dynamixel_sdk import PacketHandler

    config = DynamixelConfig.followers(ports=(("left", "L"), ("right", "R")), **overrides)
    return DynamixelBackend(config, GripperConstants.original_aloha(), port_factory=bus.port,
                            packet_handler_factory=lambda: PacketHandler(2.0))


def present(ticks_by_id: dict[int, int]) -> dict[int, int]:
    return {i: ticks_by_id.get(i, 2048) for i in ALL_IDS}


def test_start_sets_modes_goal_from_present_then_torque_on_primaries_only():
    bus = FakeBus(present({2: 1500, 4: 2600, 9: 2300}))
    backend = make_backend(bus)
    backend.start()
    left = [(i, inst, p) for port, i, inst, p, _ in bus.packets if port == "L"]
    assert all(i not in (3, 5) for i, _, _ in left), "shadow motors must never be addressed"
    writes = [(i, p[0] | p[1] << 8, int.from_bytes(p[2:], "little")) for i, inst, p in left if inst == INST_WRITE]
    # torque off (64=0) on the 7 primaries before any mode change.
    assert writes[:7] == [(i, 64, 0) for i in PRIMARIES]
    modes = {i: v for i, a, v in writes if a == 11}
    assert modes == {1: 3, 2: 3, 4: 3, 6: 3, 7: 3, 8: 3, 9: 5}
    assert {(i, a, v) for i, a, v in writes if a in (108, 112)} == {(i, a, 0) for i in PRIMARIES[:6] for a in (108, 112)}
    # then one sync read of Present_Position, a sync write of goal = present, and torque on.
    sync = [(inst, p) for _, inst, p in left if inst in (INST_SYNC_READ, INST_SYNC_WRITE)]
    assert sync[0] == (INST_SYNC_READ, bytes([132, 0, 4, 0, *PRIMARIES]))
    assert sync[1][0] == INST_SYNC_WRITE
    assert bus.tables["L"][2][116:120] == (1500).to_bytes(4, "little")
    assert writes[-7:] == [(i, 64, 1) for i in PRIMARIES]
    backend.close()
    torque_off = [(i, p) for port, i, inst, p, _ in bus.packets[-14:] if inst == INST_WRITE]
    assert sorted(i for i, _ in torque_off) == sorted(PRIMARIES * 2)
    assert all(p[:3] == bytes([64, 0, 0]) for _, p in torque_off)


def test_read_positions_converts_ticks_and_normalises_the_finger_position():
    ticks = {1: 2048 + 512, 2: 2048 - 1024, 4: 3000, 6: 0, 7: 1024, 8: 4095, 9: 2048 + 600}
    bus = FakeBus(present(ticks))
    backend = make_backend(bus, set_operating_modes=False, torque_on_start=False)
    backend.start()
    qpos = backend.read_positions()
    assert qpos.shape == (14,)
    expected_arm = [(ticks[i] - 2048) * 2 * math.pi / 4096 for i in PRIMARIES[:6]]
    np.testing.assert_allclose(qpos[:6], expected_arm, atol=1e-12)
    np.testing.assert_allclose(qpos[7:13], expected_arm, atol=1e-12)  # same canned ticks on both ports
    angle = 600 * 2 * math.pi / 4096
    finger = finger_position_from_gripper_angle(angle)
    c = GripperConstants.original_aloha()
    assert qpos[6] == pytest.approx((finger - c.follower_position_close) / (c.follower_position_open - c.follower_position_close))


def test_negative_extended_ticks_read_as_signed():
    bus = FakeBus(present({6: -100}))
    backend = make_backend(bus, set_operating_modes=False, torque_on_start=False)
    backend.start()
    assert backend.read_positions()[3] == pytest.approx((-100 - 2048) * 2 * math.pi / 4096)


def test_write_command_sends_one_exact_sync_write_per_arm():
    bus = FakeBus(present({}))
    backend = make_backend(bus, set_operating_modes=False, torque_on_start=False)
    backend.start()
    bus.packets.clear()
    c = GripperConstants.original_aloha()
    command = np.array([0.1, -0.5, 0.8, 0.0, -0.3, 0.2, 0.5,
                        -0.1, -0.96, 1.16, 0.05, 0.4, -0.2, 1.0])
    backend.write_command(command)
    assert [(port, inst) for port, _, inst, _, _ in bus.packets] == [("L", INST_SYNC_WRITE), ("R", INST_SYNC_WRITE)]
    for (port, motor_id, _, _, raw), base in zip(bus.packets, (0, 7)):
        assert motor_id == 0xFE  # broadcast
        gripper_rad = c.follower_joint_unnormalize(command[base + 6])
        radians = [*command[base : base + 6], gripper_rad]
        ticks = [round(r * 4096 / (2 * math.pi)) + 2048 for r in radians]
        body = bytes([0xFF, 0xFF, 0xFD, 0x00, 0xFE, 7 * 5 + 7, 0x00, 0x83, 116, 0, 4, 0])
        for i, t in zip(PRIMARIES, ticks):
            body += bytes([i]) + t.to_bytes(4, "little")
        assert raw == body + crc16(body).to_bytes(2, "little"), port


def test_write_command_clips_to_joint_limits_and_rejects_nan():
    bus = FakeBus(present({}))
    backend = make_backend(bus, set_operating_modes=False, torque_on_start=False)
    backend.start()
    command = np.zeros(14)
    command[1] = -3.0  # shoulder far below its -1.85 rad limit (tick 841)
    backend.write_command(command)
    assert int.from_bytes(bus.tables["L"][2][116:120], "little") == 841
    command[4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        backend.write_command(command)


def test_missing_motor_is_reported_with_port_and_failure():
    ticks = present({})
    del ticks[7]
    bus = FakeBus(ticks)
    backend = make_backend(bus, set_operating_modes=False, torque_on_start=False)
    backend.start()
    with pytest.raises(HardwareError, match="L: sync read of Present_Position failed"):
        backend.read_positions()


def test_motor_that_does_not_ack_a_torque_write_fails_start():
    ticks = present({})
    del ticks[8]
    bus = FakeBus(ticks)
    backend = make_backend(bus)
    with pytest.raises(HardwareError, match="id 8"):
        backend.start()
