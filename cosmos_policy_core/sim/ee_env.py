"""End-effector (mocap) ALOHA sim: each gripper welded to a mocap body, the way scripted demos are driven.

Only the scripted-demo generator uses it: its arm joints become the joint-space sim's commands.
"""
from __future__ import annotations

import mujoco
import numpy as np

from cosmos_policy_core.data.episode import CAMERAS
from cosmos_policy_core.errors import ShapeError
from cosmos_policy_core.robot.gripper import GripperConstants
from cosmos_policy_core.sim.env import BimanualSim
from cosmos_policy_core.sim.tasks import get_task

GRIPPER_BODIES = ("vx300s_left/gripper_link", "vx300s_right/gripper_link")
EE_ACTION_DIM = 16   # per arm: xyz (3) + wxyz quaternion (4) + normalised gripper (1)
WELD_SOLIMP = (0.9, 0.95, 0.001)
WRIST_SPRING = 1.0   # N m / rad


class AlohaMocapEnv(BimanualSim):
    """`step(ee_action_16)`: mocap pose targets for both grippers plus normalised finger commands."""

    def __init__(
        self,
        task: str = "transfer_cube",
        height: int = 480,
        width: int = 640,
        cameras: tuple[str, ...] = CAMERAS,
        render: bool = False,
        gripper: GripperConstants | None = None,
    ):
        task_obj = get_task(task)
        super().__init__(task_obj, task_obj.ee_xml, height, width, cameras, render, gripper)
        # gym-aloha's welds give no relpose; MuJoCo >= 3 then derives an offset from qpos0 and the
        # gripper sits centimetres away from its target. An identity relpose makes them coincide.
        self.model.eq_data[:, 3:6] = 0.0
        self.model.eq_data[:, 6:10] = [1.0, 0.0, 0.0, 0.0]
        # gym-aloha's weld impedance (0.25) lets the gripper trail its target by up to ~3 cm and ~35
        # degrees while moving; MuJoCo's default impedance tracks to a few mm and degrees.
        self.model.eq_solimp[:, :3] = WELD_SOLIMP
        # Where wrist_angle passes zero, forearm_roll and wrist_rotate turn about one axis and the
        # weld leaves their split free; weak springs toward zero keep the IK on the natural branch
        # (a drifting roll would be replayed by the joint-space sim's soft forearm_roll servo).
        for side in ("left", "right"):
            for joint in ("forearm_roll", "wrist_rotate"):
                jid = self.model.joint(f"vx300s_{side}/{joint}").id
                self.model.jnt_stiffness[jid] = WRIST_SPRING
                self.model.qpos_spring[self.model.jnt_qposadr[jid]] = 0.0
        self._gripper_body = [int(self.model.body(b).id) for b in GRIPPER_BODIES]
        self.initial_mocap = np.zeros((2, 7))

    def _reset_controls(self) -> None:
        # Start the mocap targets exactly at the grippers' start pose, fingers closed (ACT's start).
        mujoco.mj_kinematics(self.model, self.data)
        for arm, body in enumerate(self._gripper_body):
            self.data.mocap_pos[arm] = self.data.xpos[body]
            self.data.mocap_quat[arm] = self.data.xquat[body]
        self.initial_mocap = np.concatenate([self.data.mocap_pos, self.data.mocap_quat], axis=1).copy()
        closed = self.gripper.follower_position_close
        self.data.ctrl[:] = [closed, -closed, closed, -closed]

    def reset(self, seed: int | None = None, object_poses: np.ndarray | None = None) -> dict:
        self._reset_physics(seed, object_poses)
        return self.observation()

    def step(self, ee_action: np.ndarray) -> tuple[dict, int]:
        """One 50 Hz control period toward the mocap targets in `ee_action` (left then right arm)."""
        ee_action = np.asarray(ee_action, dtype=float)
        if ee_action.shape != (EE_ACTION_DIM,):
            raise ShapeError(f"end-effector action has shape {ee_action.shape}, expected ({EE_ACTION_DIM},)")
        for arm, a in enumerate((ee_action[:8], ee_action[8:])):
            self.data.mocap_pos[arm] = a[:3]
            self.data.mocap_quat[arm] = a[3:7] / np.linalg.norm(a[3:7])
            finger = self.gripper.follower_position_unnormalize(a[7])
            self.data.ctrl[2 * arm: 2 * arm + 2] = [finger, -finger]
        self._advance()
        return self.observation(), self.reward

    def gripper_ctrl_normalized(self) -> np.ndarray:
        """(2,) the finger commands in effect, normalised (what the joint-space sim is commanded)."""
        return self.gripper.follower_position_normalize(self.data.ctrl[[0, 2]])

    def gripper_pose(self, arm: int) -> np.ndarray:
        """(7,) xyz + wxyz of one gripper link (0 = left, 1 = right)."""
        body = self._gripper_body[arm]
        return np.concatenate([self.data.xpos[body], self.data.xquat[body]])
