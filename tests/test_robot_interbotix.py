"""Interbotix backend against a fake InterbotixManipulatorXS that records every call and publish."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from cosmos_policy_core.robot.arm_layout import finger_position_from_gripper_angle
from cosmos_policy_core.robot.gripper import GripperConstants
from cosmos_policy_core.robot.interbotix_backend import (
    InterbotixBackend,
    InterbotixConfig,
    InterbotixLeaders,
)


@dataclass
class JointGroupCommand:
    name: str
    cmd: list


@dataclass
class JointSingleCommand:
    name: str
    cmd: float


MSGS = SimpleNamespace(JointGroupCommand=JointGroupCommand, JointSingleCommand=JointSingleCommand)
NAMES = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper",
         "left_finger", "right_finger"]


class FakePublisher:
    def __init__(self, log, topic):
        self.log, self.topic = log, topic

    def publish(self, msg):
        # Copy: the backend reuses its message objects, the log must keep what went out.
        self.log.append((self.topic, msg.name, list(msg.cmd) if isinstance(msg.cmd, list) else msg.cmd))


@dataclass
class FakeCore:
    robot_name: str
    log: list
    positions: list = field(default_factory=lambda: [0.0] * 9)

    def __post_init__(self):
        self.pub_group = FakePublisher(self.log, f"/{self.robot_name}/commands/joint_group")
        self.pub_single = FakePublisher(self.log, f"/{self.robot_name}/commands/joint_single")

    def __getattr__(self, name):
        if name.startswith("robot_") and name != "robot_get_joint_states":
            return lambda *args, **kw: self.log.append((self.robot_name, name, args, kw))
        raise AttributeError(name)

    def robot_get_joint_states(self):
        stamp = SimpleNamespace(sec=12, nanosec=345)
        return SimpleNamespace(header=SimpleNamespace(stamp=stamp), name=list(NAMES), position=list(self.positions))


class FakeBot:
    """Only what ALOHA touches; any moving_time / set_joint_positions use would raise."""

    def __init__(self, robot_name, robot_model, log):
        self.robot_name, self.robot_model = robot_name, robot_model
        self.core = FakeCore(robot_name, log)
        self.gripper = SimpleNamespace(core=self.core)
        self.arm = SimpleNamespace()  # no set_joint_positions / set_trajectory_time here


def make(role="follower"):
    log, bots = [], {}

    def factory(robot_name, robot_model):
        bots[robot_name] = FakeBot(robot_name, robot_model, log)
        return bots[robot_name]

    return log, bots, factory


def test_follower_setup_sequence_matches_aloha():
    log, bots, factory = make()
    backend = InterbotixBackend(InterbotixConfig.followers(), GripperConstants.aloha2(), bot_factory=factory, msgs=MSGS)
    backend.start()
    assert sorted(bots) == ["follower_left", "follower_right"]
    assert {b.robot_model for b in bots.values()} == {"vx300s"}
    calls = [(name, args) for robot, name, args, _ in log if robot == "follower_left"]
    assert calls == [
        ("robot_reboot_motors", ("single", "gripper", True)),
        ("robot_set_operating_modes", ("group", "arm", "position")),
        ("robot_set_operating_modes", ("single", "gripper", "current_based_position")),
        ("robot_torque_enable", ("group", "arm", True)),
        ("robot_torque_enable", ("single", "gripper", True)),
    ]


def test_write_command_publishes_group_and_single_only():
    log, bots, factory = make()
    constants = GripperConstants.aloha2()
    backend = InterbotixBackend(InterbotixConfig.followers(), constants, bot_factory=factory, msgs=MSGS)
    backend.start()
    log.clear()
    command = np.array([0.1, -0.9, 1.1, 0.0, -0.3, 0.05, 0.25, -0.1, -0.8, 1.0, 0.1, -0.2, 0.0, 0.75])
    for _ in range(3):
        backend.write_command(command)
    assert len(log) == 12
    assert all(entry[0].endswith(("/commands/joint_group", "/commands/joint_single")) for entry in log)
    topic, name, cmd = log[0]
    assert (topic, name) == ("/follower_left/commands/joint_group", "arm")
    np.testing.assert_allclose(cmd, command[:6])
    topic, name, cmd = log[1]
    assert (topic, name) == ("/follower_left/commands/joint_single", "gripper")
    assert cmd == pytest.approx(constants.follower_joint_unnormalize(0.25))
    topic, name, cmd = log[3]
    assert topic == "/follower_right/commands/joint_single"
    assert cmd == pytest.approx(0.75 * (1.6214 - 0.6197) + 0.6197)
    # No service calls (operating modes, registers = moving_time) inside the loop.
    assert not any(entry[1].startswith("robot_") for entry in log if len(entry) == 4)


def test_read_positions_uses_the_finger_position_of_the_nine_entry_state():
    log, bots, factory = make()
    constants = GripperConstants.original_aloha()
    backend = InterbotixBackend(InterbotixConfig.followers(setup=False), constants, bot_factory=factory, msgs=MSGS)
    backend.start()
    assert log == []  # setup=False: attach only
    bots["follower_left"].core.positions = [0.1, -0.9, 1.1, 0.0, -0.3, 0.05, 1.2, 0.05, -0.05]
    bots["follower_right"].core.positions = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0, -0.6, 0.01844, -0.01844]
    qpos = backend.read_positions()
    np.testing.assert_allclose(qpos[:6], [0.1, -0.9, 1.1, 0.0, -0.3, 0.05])
    assert qpos[6] == pytest.approx((0.05 - 0.01844) / (0.058 - 0.01844))
    assert qpos[13] == pytest.approx(0.0)
    assert backend.read_arm_states()["left"].stamp_ns == 12_000_000_345


def test_leaders_setup_and_action_mapping():
    log, bots, factory = make()
    constants = GripperConstants.original_aloha()
    leaders = InterbotixLeaders(constants, bot_factory=factory)
    leaders.start()
    assert sorted(bots) == ["leader_left", "leader_right"]
    assert {b.robot_model for b in bots.values()} == {"wx250s"}
    calls = [(name, args) for robot, name, args, _ in log if robot == "leader_right"]
    assert ("robot_set_operating_modes", ("group", "arm", "pwm")) in calls
    assert ("robot_torque_enable", ("group", "arm", False)) in calls
    bots["leader_left"].core.positions = [0.2, -0.5, 0.6, 0.1, 0.3, -0.1, 0.3083, 0.02, -0.02]
    bots["leader_right"].core.positions = [0.0] * 6 + [-0.6842, 0.012, -0.012]
    action = leaders.read_action()
    np.testing.assert_allclose(action[:6], [0.2, -0.5, 0.6, 0.1, 0.3, -0.1])
    assert action[6] == pytest.approx(1.0) and action[13] == pytest.approx(0.0)


def test_finger_geometry_reproduces_the_original_aloha_table():
    # The two original-ALOHA follower columns are the same gripper seen as angle and as position.
    c = GripperConstants.original_aloha()
    assert finger_position_from_gripper_angle(c.follower_joint_open) == pytest.approx(c.follower_position_open, abs=2e-4)
    assert finger_position_from_gripper_angle(c.follower_joint_close) == pytest.approx(c.follower_position_close, abs=2e-4)
