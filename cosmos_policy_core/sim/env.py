"""Joint-space MuJoCo ALOHA (gym-aloha's models, driven by raw mujoco) with the three published cameras.

`AlohaSimEnv` is the sim the policy, the ROS sim node and the demo replay all run: 14-D absolute joint
actions with normalised grippers (ACT's convention), physics at 50 Hz, optionally held for 25 Hz control.
"""
from __future__ import annotations

import atexit
import copy
import logging
import os
import weakref
from dataclasses import dataclass

# The GL backend is chosen when mujoco is first imported; headless machines need EGL.
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from cosmos_policy_core.robot.aloha import CAMERAS, STATE_DIM  # noqa: E402
from cosmos_policy_core.errors import ConfigError, ShapeError  # noqa: E402
from cosmos_policy_core.robot.gripper import GripperConstants  # noqa: E402
from cosmos_policy_core.sim.tasks import MAX_REWARD, START_ARM_POSE, SimTask, assets_dir, get_task  # noqa: E402

log = logging.getLogger(__name__)

# Published camera name -> MuJoCo camera in gym-aloha's scene.
CAMERA_TO_MUJOCO = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist"}
PHYSICS_HZ = 50            # one control period of the physics (ACT's DT = 0.02 s)
CONTROL_DT = 1.0 / PHYSICS_HZ

# Renderers still open at exit are closed before the EGL display is terminated: freeing a context
# afterwards (from a finaliser) prints spurious EGLError tracebacks. The hook is registered after the
# first renderer exists, so it runs before mujoco.egl's own exit hook (atexit is last-in first-out).
_OPEN_SIMS: "weakref.WeakSet[BimanualSim]" = weakref.WeakSet()
_EXIT_HOOK = []


def _close_open_sims() -> None:
    for sim in list(_OPEN_SIMS):
        try:
            sim.close()
        except Exception:  # the GL library may already be unusable at exit; nothing left to save
            pass


def qpos_from_model(qpos_raw: np.ndarray, gripper: GripperConstants) -> np.ndarray:
    """(16,) model arm qpos -> (14,) policy qpos: arm joints + normalised finger position per arm."""
    out = np.empty(STATE_DIM)
    out[0:6] = qpos_raw[0:6]
    out[6] = gripper.follower_position_normalize(qpos_raw[6])
    out[7:13] = qpos_raw[8:14]
    out[13] = gripper.follower_position_normalize(qpos_raw[14])
    return out


def ctrl_from_action(action: np.ndarray, gripper: GripperConstants) -> np.ndarray:
    """(14,) action -> (16,) position-actuator targets: fingers un-normalised (m) and mirrored."""
    left = gripper.follower_position_unnormalize(action[6])
    right = gripper.follower_position_unnormalize(action[13])
    return np.concatenate([action[0:6], [left, -left], action[7:13], [right, -right]])


def _ensure_headless_gl() -> None:
    """Use EGL when mujoco was imported (by someone else) before MUJOCO_GL was set, on a headless box.

    mujoco binds its GL backend at import; its GLFW default cannot open a context without a display,
    which would otherwise fail deep inside mjr_makeContext with an unhelpful message.
    """
    from mujoco.rendering.classic import gl_context

    backend = getattr(gl_context, "GLContext", None)
    if backend is None or os.environ.get("DISPLAY") or "glfw" not in backend.__module__:
        return
    from mujoco.egl import GLContext as EGLContext

    log.warning("mujoco was imported with the GLFW backend and no DISPLAY; rendering with EGL instead "
                "(set MUJOCO_GL=egl before importing mujoco to silence this)")
    gl_context.GLContext = EGLContext


@dataclass(frozen=True)
class SimSnapshot:
    """The whole physics state of a sim at one control step (`BimanualSim.snapshot`)."""

    data: mujoco.MjData
    t: int
    reward: int
    max_reward: int


class BimanualSim:
    """Model loading, object reset, physics stepping, contact reward and camera rendering.

    Subclasses decide how a command becomes `data.ctrl` (joint targets or mocap poses).
    """

    def __init__(
        self,
        task: str | SimTask,
        xml: str,
        height: int = 480,
        width: int = 640,
        cameras: tuple[str, ...] = CAMERAS,
        render: bool = True,
        gripper: GripperConstants | None = None,
    ):
        self.task = get_task(task) if isinstance(task, str) else task
        unknown = [c for c in cameras if c not in CAMERA_TO_MUJOCO]
        if unknown:
            raise ConfigError(f"unknown cameras {unknown}; the sim publishes {sorted(CAMERA_TO_MUJOCO)}")
        if height <= 0 or width <= 0:
            raise ConfigError(f"render size must be positive, got {height}x{width}")
        self.cameras = tuple(cameras)
        self.height, self.width = int(height), int(width)
        self.gripper = gripper or GripperConstants.original_aloha()
        self.model = mujoco.MjModel.from_xml_path(str(assets_dir() / xml))
        self.data = mujoco.MjData(self.model)
        self.substeps = int(round(CONTROL_DT / self.model.opt.timestep))
        self._object_qpos = [int(self.model.jnt_qposadr[self.model.joint(j).id]) for j in self.task.objects]
        self._reward_geom_names = {
            int(self.model.geom(name).id): name for name in self.task.reward_geoms
        }
        self._renderer = None
        if render and self.cameras:
            self._renderer = self._make_renderer()
            _OPEN_SIMS.add(self)
            if not _EXIT_HOOK:
                _EXIT_HOOK.append(atexit.register(_close_open_sims))
        self.object_poses = np.zeros((len(self.task.objects), 7))
        self.t = 0                      # physics control steps (50 Hz) since reset
        self.reward = 0
        self.max_reward = 0

    # -- rendering -----------------------------------------------------------------------------
    def _make_renderer(self) -> mujoco.Renderer:
        vis = self.model.vis
        # The offscreen buffer must hold the frame; multisampling quadruples software-GL cost.
        vis.global_.offwidth = max(vis.global_.offwidth, self.width)
        vis.global_.offheight = max(vis.global_.offheight, self.height)
        vis.quality.offsamples = 0
        _ensure_headless_gl()
        renderer = mujoco.Renderer(self.model, self.height, self.width)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        return renderer

    def render(self) -> dict[str, np.ndarray]:
        """cam -> (H, W, 3) uint8 RGB of the current state; empty when rendering is off."""
        if self._renderer is None:
            return {}
        images = {}
        for cam in self.cameras:
            self._renderer.update_scene(self.data, camera=CAMERA_TO_MUJOCO[cam])
            images[cam] = self._renderer.render()
        return images

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------------
    def _reset_physics(self, seed: int | None, object_poses: np.ndarray | None) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:16] = START_ARM_POSE
        if object_poses is None:
            object_poses = self.task.sample_object_poses(seed)
        object_poses = np.asarray(object_poses, dtype=float).reshape(len(self._object_qpos), 7)
        for adr, pose in zip(self._object_qpos, object_poses):
            self.data.qpos[adr: adr + 7] = pose
        self.object_poses = object_poses.copy()
        self._reset_controls()
        # Positions, contacts and sensors up to date before the first command (as dm_control does).
        mujoco.mj_forward(self.model, self.data)
        self.t = 0
        self.reward = self._compute_reward()
        self.max_reward = self.reward

    def _reset_controls(self) -> None:
        raise NotImplementedError

    def object_state(self) -> np.ndarray:
        """(n_objects, 7) current xyz + wxyz of the task's free objects."""
        return np.stack([self.data.qpos[adr: adr + 7] for adr in self._object_qpos]).copy()

    def qpos(self) -> np.ndarray:
        return qpos_from_model(self.data.qpos[:16], self.gripper)

    def observation(self) -> dict:
        return {"qpos": self.qpos(), "images": self.render()}

    def snapshot(self) -> SimSnapshot:
        """A copy of the current state: `restore` returns to it, and the same commands then give the
        same episode bit for bit (to try several futures from one state)."""
        return SimSnapshot(copy.copy(self.data), self.t, self.reward, self.max_reward)

    def restore(self, snapshot: SimSnapshot) -> None:
        """Back to `snapshot`'s state (of this sim's model); the snapshot stays usable for another restore."""
        if snapshot.data.qpos.shape != self.data.qpos.shape:
            raise ConfigError("this snapshot belongs to a sim of another model")
        self.data = copy.copy(snapshot.data)
        self.t, self.reward, self.max_reward = snapshot.t, snapshot.reward, snapshot.max_reward

    @property
    def success(self) -> bool:
        """True once the task reward reached its maximum at any physics step since reset."""
        return self.max_reward >= MAX_REWARD

    # -- physics -------------------------------------------------------------------------------
    def _advance(self) -> None:
        """One control period (10 substeps), leaving positions and contacts of the new state current.

        Same split as dm_control's legacy step: finish the pending step with the new controls, run
        the remaining substeps, then `mj_step1` so kinematics, contacts and rendering match qpos.
        """
        mujoco.mj_step2(self.model, self.data)
        if self.substeps > 1:
            mujoco.mj_step(self.model, self.data, nstep=self.substeps - 1)
        mujoco.mj_step1(self.model, self.data)
        self.t += 1
        self.reward = self._compute_reward()
        self.max_reward = max(self.max_reward, self.reward)

    def _compute_reward(self) -> int:
        names = self._reward_geom_names
        contacts = set()
        for i in range(self.data.ncon):
            g1, g2 = int(self.data.contact.geom1[i]), int(self.data.contact.geom2[i])
            if g1 in names and g2 in names:
                contacts.add(frozenset((names[g1], names[g2])))
        return self.task.reward(frozenset(contacts))


class AlohaSimEnv(BimanualSim):
    """Bimanual ViperX in joint space: `reset(seed) -> obs`, `step(action_14) -> (obs, reward)`.

    obs = {"qpos": (14,) arm joints + normalised finger positions, "images": {cam: (H, W, 3) uint8}}.
    `control_hz=25` holds each action for two physics control periods (our robot and policy rate).
    """

    def __init__(
        self,
        task: str = "transfer_cube",
        height: int = 480,
        width: int = 640,
        cameras: tuple[str, ...] = CAMERAS,
        control_hz: int = PHYSICS_HZ,
        render: bool = True,
        gripper: GripperConstants | None = None,
    ):
        if control_hz <= 0 or PHYSICS_HZ % control_hz:
            raise ConfigError(f"control_hz must divide the {PHYSICS_HZ} Hz physics rate (50, 25, 10, ...), got {control_hz}")
        task_obj = get_task(task)
        super().__init__(task_obj, task_obj.xml, height, width, cameras, render, gripper)
        self.control_hz = int(control_hz)
        self.hold = PHYSICS_HZ // self.control_hz

    def _reset_controls(self) -> None:
        self.data.ctrl[:] = START_ARM_POSE

    def reset(self, seed: int | None = None, object_poses: np.ndarray | None = None) -> dict:
        """Arms to the start pose; objects sampled from `seed` (gym-aloha's draws) or given poses."""
        self._reset_physics(seed, object_poses)
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, int]:
        """Apply one action for one control period at `control_hz`; reward of the resulting state.

        `render=False` leaves the observation's images empty: rendering is most of a step's cost.
        """
        return self.step_hold(action, self.hold, render)

    def step_hold(self, action: np.ndarray, n: int, render: bool = True) -> tuple[dict, int]:
        """Hold `action` for `n` physics control periods (50 Hz), then observe once."""
        action = np.asarray(action, dtype=float)
        if action.shape != (STATE_DIM,):
            raise ShapeError(f"action has shape {action.shape}, expected ({STATE_DIM},) joints + grippers")
        if not np.isfinite(action).all():
            raise ShapeError("action contains NaN or Inf; refusing to command the sim")
        self.data.ctrl[:] = ctrl_from_action(action, self.gripper)
        for _ in range(n):
            self._advance()
        obs = self.observation() if render else {"qpos": self.qpos(), "images": {}}
        return obs, self.reward


def render_reset_scenes(task: str, scenes: int, seed: int, render_size: int = 224) -> list[dict[str, np.ndarray]]:
    """Camera images {camera: (S, S, 3) uint8} of `scenes` reset states of a sim task (seeds seed, seed + 1, ...):
    the arms at the start pose, only the objects' poses differ between them."""
    env = AlohaSimEnv(task, render_size, render_size, control_hz=25)
    try:
        return [{k: v.copy() for k, v in env.reset(seed=seed + i)["images"].items()} for i in range(scenes)]
    finally:
        env.close()
