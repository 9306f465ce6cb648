"""Interbotix backend: the ROS 2 `interbotix_xs_modules` toolbox in front of the xs_sdk driver.

Commands go out on the toolbox's own publishers (`core.pub_group` for the 6 arm joints,
`gripper.core.pub_single` for the gripper motor angle) with preallocated messages; moving_time is
never touched after setup because every change is a blocking service call that rewrites the
Profile_Velocity registers. The toolbox brings its own rclpy node and thread: it is imported only when
this backend is used without an injected factory, so the library itself stays ROS-free.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot.arm_layout import (
    FOLLOWER_NAMES,
    LEADER_NAMES,
    SIDES,
    ArmState,
    action_from_leader_states,
    arm_state_from_joint_state,
    follower_targets_from_command,
    proprio_from_follower_states,
)
from cosmos_policy_core.robot.backend import HardwareError
from cosmos_policy_core.robot.gripper import GripperConstants

log = logging.getLogger(__name__)

BotFactory = Callable[[str, str], Any]  # (robot_name, robot_model) -> InterbotixManipulatorXS-like


@dataclass(frozen=True)
class InterbotixConfig:
    """Which xs_sdk namespaces to attach to and how to set the motors up."""

    robot_names: tuple[tuple[str, str], ...] = tuple(FOLLOWER_NAMES.items())
    robot_model: str = "vx300s"
    role: str = "follower"  # follower: position mode + torque on; leader: pwm arm, torque off
    setup: bool = True
    reboot_gripper: bool = True

    @classmethod
    def followers(cls, **overrides) -> "InterbotixConfig":
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def leaders(cls, **overrides) -> "InterbotixConfig":
        base = cls(robot_names=tuple(LEADER_NAMES.items()), robot_model="wx250s", role="leader",
                   reboot_gripper=False)
        return dataclasses.replace(base, **overrides)

    def __post_init__(self):
        if self.role not in ("follower", "leader"):
            raise ConfigError(f"role must be 'follower' or 'leader', got {self.role!r}")
        if {side for side, _ in self.robot_names} != set(SIDES):
            raise ConfigError(f"robot_names must map both sides {SIDES}, got {self.robot_names}")


class _ToolboxRuntime:
    """The real toolbox: one global Interbotix node, spun by the toolbox's own thread."""

    def __init__(self):
        try:
            from interbotix_common_modules.common_robot import robot as common_robot
            from interbotix_xs_modules.xs_robot.arm import InterbotixManipulatorXS
            from interbotix_xs_msgs import msg as xs_msgs
        except ImportError as exc:
            raise HardwareError(
                "the interbotix backend needs the Interbotix ROS 2 toolbox (interbotix_xs_modules, "
                "interbotix_xs_msgs); source its workspace or use backend:=dynamixel") from exc
        self._common = common_robot
        self._arm_cls = InterbotixManipulatorXS
        self.msgs = xs_msgs
        self._node = common_robot.create_interbotix_global_node("cosmos_aloha")
        self._started = False

    def make_bot(self, robot_name: str, robot_model: str):
        # iterative_update_fk=False: no forward kinematics per command (ALOHA's ROS 2 setting).
        return self._arm_cls(robot_model=robot_model, group_name="arm", gripper_name="gripper",
                             robot_name=robot_name, node=self._node, iterative_update_fk=False)

    def start(self) -> None:
        if not self._started:
            self._common.robot_startup(self._node)
            self._started = True

    def shutdown(self) -> None:
        if self._started:
            self._common.robot_shutdown(self._node)
            self._started = False


class InterbotixArms:
    """Two arms (followers or leaders) through InterbotixManipulatorXS objects."""

    def __init__(self, config: InterbotixConfig, bot_factory: BotFactory | None = None, msgs: Any = None):
        self.config = config
        self._runtime = None
        if bot_factory is None:
            self._runtime = _ToolboxRuntime()
            bot_factory, msgs = self._runtime.make_bot, self._runtime.msgs
        self._factory = bot_factory
        self._msgs = msgs
        self.bots: dict[str, Any] = {}
        self._group_msgs: dict[str, Any] = {}
        self._single_msgs: dict[str, Any] = {}

    def start(self) -> None:
        if self.bots:
            return
        names = dict(self.config.robot_names)
        for side in SIDES:
            self.bots[side] = self._factory(names[side], self.config.robot_model)
        if self._runtime is not None:
            self._runtime.start()
        if self.config.setup:
            for bot in self.bots.values():
                self._setup(bot)

    def _setup(self, bot) -> None:
        core = bot.core
        if self.config.role == "follower":
            if self.config.reboot_gripper:
                core.robot_reboot_motors("single", "gripper", True)
            core.robot_set_operating_modes("group", "arm", "position")
            core.robot_set_operating_modes("single", "gripper", "current_based_position")
            core.robot_torque_enable("group", "arm", True)
            core.robot_torque_enable("single", "gripper", True)
        else:
            # Leaders are moved by hand: arm in PWM with torque off, gripper current-based position.
            core.robot_set_operating_modes("group", "arm", "pwm")
            core.robot_set_operating_modes("single", "gripper", "current_based_position")
            core.robot_torque_enable("group", "arm", False)
            core.robot_torque_enable("single", "gripper", False)

    def read_arm_states(self) -> dict[str, ArmState]:
        states = {}
        for side, bot in self.bots.items():
            msg = bot.core.robot_get_joint_states()
            if msg is None:
                raise HardwareError(f"no joint states from {dict(self.config.robot_names)[side]} yet")
            stamp = msg.header.stamp
            stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
            states[side] = arm_state_from_joint_state(list(msg.name), list(msg.position), stamp_ns)
        return states

    def publish(self, side: str, arm: tuple[float, ...], gripper_joint: float) -> None:
        if side not in self._group_msgs:
            if self._msgs is None:
                raise ConfigError("commanding arms needs `msgs` providing JointGroupCommand/JointSingleCommand")
            # One message object per side, reused every tick.
            self._group_msgs[side] = self._msgs.JointGroupCommand(name="arm", cmd=[0.0] * 6)
            self._single_msgs[side] = self._msgs.JointSingleCommand(name="gripper", cmd=0.0)
        group = self._group_msgs[side]
        group.cmd = [float(v) for v in arm]
        self.bots[side].core.pub_group.publish(group)
        single = self._single_msgs[side]
        single.cmd = float(gripper_joint)
        self.bots[side].gripper.core.pub_single.publish(single)

    def close(self) -> None:
        # Torque stays as it is: followers keep holding (ALOHA leaves them on); the toolbox thread stops.
        if self._runtime is not None:
            self._runtime.shutdown()
        self.bots.clear()


class InterbotixBackend:
    """Both follower arms through the toolbox, behind the `RobotBackend` interface."""

    def __init__(self, config: InterbotixConfig, constants: GripperConstants,
                 bot_factory: BotFactory | None = None, msgs: Any = None):
        if config.role != "follower":
            raise ConfigError("InterbotixBackend drives followers; use InterbotixLeaders for leader arms")
        self.constants = constants
        self.arms = InterbotixArms(config, bot_factory, msgs)

    def start(self) -> None:
        self.arms.start()

    def read_arm_states(self) -> dict[str, ArmState]:
        return self.arms.read_arm_states()

    def read_positions(self) -> np.ndarray:
        states = self.read_arm_states()
        return proprio_from_follower_states(states["left"], states["right"], self.constants)

    def write_command(self, command: np.ndarray) -> None:
        for side, target in follower_targets_from_command(command, self.constants).items():
            self.arms.publish(side, target.arm, target.gripper_joint)

    def close(self) -> None:
        self.arms.close()


class InterbotixLeaders:
    """Leader arms for teleop: read-only, turned into the 14-D action with ALOHA's gripper mapping."""

    def __init__(self, constants: GripperConstants, config: InterbotixConfig | None = None,
                 bot_factory: BotFactory | None = None, msgs: Any = None):
        self.constants = constants
        self.arms = InterbotixArms(config or InterbotixConfig.leaders(), bot_factory, msgs)

    def start(self) -> None:
        self.arms.start()

    def read_action(self) -> np.ndarray:
        states = self.arms.read_arm_states()
        return action_from_leader_states(states["left"], states["right"], self.constants)

    def close(self) -> None:
        self.arms.close()
