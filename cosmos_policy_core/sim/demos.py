"""Scripted demonstrations: mocap waypoints -> joint commands -> executed at 25 Hz in the joint-space sim.

Every recorded action is exactly the joint command the joint-space sim executed, with the observations
it produced; callers keep only the episodes whose joint-space run succeeded (reward 4).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cosmos_policy_core.data.episode import CAMERAS, Episode
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.robot.teleop import TrajectorySource
from cosmos_policy_core.sim.ee_env import AlohaMocapEnv
from cosmos_policy_core.sim.env import PHYSICS_HZ, AlohaSimEnv
from cosmos_policy_core.sim.scripted import make_scripted_policy
from cosmos_policy_core.sim.tasks import get_task

log = logging.getLogger(__name__)

DEMO_HZ = int(aloha.CONTROL_HZ)
HOLD = PHYSICS_HZ // DEMO_HZ     # physics control steps per recorded step


@dataclass
class DemoResult:
    seed: int
    success: bool                     # the joint-space sim reached reward 4 at some step
    max_reward: int                   # of the joint-space sim
    final_reward: int                 # at the last step (4 = still holding / still inserted)
    ee_max_reward: int                # of the mocap rollout that produced the commands
    episode: Episode | None = None    # the recorded (obs, action) pairs
    rewards: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {"seed": self.seed, "success": self.success, "max_reward": self.max_reward,
                "final_reward": self.final_reward, "ee_max_reward": self.ee_max_reward}


def run_scripted_demo(task: str, seed: int, ee_env: AlohaMocapEnv, env: AlohaSimEnv,
                      plan_error: np.ndarray | None = None) -> DemoResult:
    """One scripted demo: the mocap sim turns waypoints into joints, the joint-space sim executes them.

    Both sims start from the same object poses. Every 2 physics steps (25 Hz) the mocap arm's joints
    become command k, held by the joint-space sim for the same 2 steps; the arm joints are where the
    mocap arm arrived (a position servo is commanded where the arm should be), the grippers the
    normalised finger command in effect (ACT records the gripper *command*, not its state). The
    policy's replanning looks at the objects in the joint-space sim, so its corrections compensate
    for how the joint servos (which sag under load, unlike the weld) actually carry them. The
    recorded actions, replayed from `reset(object_poses=...)`, reproduce the episode exactly.

    `plan_error` (n_objects, 3) moves where the script believes the objects start, in metres (its first
    plan; its replans see them where they are): how far off a policy may aim before the task fails.
    """
    spec = get_task(task)
    ee_env.reset(seed=seed)
    obs = env.reset(object_poses=ee_env.object_poses)
    believed = ee_env.object_poses.copy()
    if plan_error is not None:
        plan_error = np.asarray(plan_error, dtype=float)
        if plan_error.shape != (len(believed), 3):
            raise ConfigError(f"plan_error must be ({len(believed)}, 3) for {task}, got {plan_error.shape}")
        believed[:, :3] += plan_error
    policy = make_scripted_policy(task, ee_env.initial_mocap, believed)
    n_steps = spec.episode_len_50hz // HOLD
    qpos, actions, rewards = [], [], []
    images = {cam: [] for cam in env.cameras}
    for k in range(n_steps):
        for t in range(k * HOLD, (k + 1) * HOLD):
            ee_env.step(policy(t, env.object_state()))
        command = ee_env.qpos()
        command[[6, 13]] = ee_env.gripper_ctrl_normalized()
        qpos.append(obs["qpos"])
        for cam, frame in obs["images"].items():
            images[cam].append(frame)
        actions.append(command)
        obs, reward = env.step(command)
        rewards.append(reward)
    episode = Episode(
        qpos=np.stack(qpos),
        action=np.stack(actions),
        images={cam: np.stack(frames) for cam, frames in images.items() if frames},
        fps=float(DEMO_HZ),
        task=spec.description,
        success=env.success,
        sim=True,
        attrs={"sim_task": spec.name, "seed": int(seed), "scripted": True,
               "object_poses": ee_env.object_poses.ravel()},
    )
    return DemoResult(seed, env.success, env.max_reward, env.reward, ee_env.max_reward, episode, rewards)


@dataclass
class ScriptedRollout:
    """The joint commands of one scripted demo, for playing it back elsewhere (e.g. the sim teleop)."""

    seed: int
    object_poses: np.ndarray          # (n_objects, 7) initial object poses (= the seed's draw)
    commands: np.ndarray              # (T, 14) 25 Hz joint commands, normalised grippers
    success: bool                     # whether these commands succeed in the joint-space sim
    max_reward: int


def scripted_rollout(task: str, seed: int, plan_error: np.ndarray | None = None) -> ScriptedRollout:
    """The scripted demo of `task` for scene `seed`, physics only (no images); `plan_error` as in
    `run_scripted_demo`."""
    ee_env = AlohaMocapEnv(task, render=False)
    env = AlohaSimEnv(task, control_hz=DEMO_HZ, render=False)
    result = run_scripted_demo(task, seed, ee_env, env, plan_error)
    return ScriptedRollout(seed, ee_env.object_poses.copy(), result.episode.action, result.success,
                           result.max_reward)


class DemoGenerator:
    """Reusable mocap + joint-space sims for one task; `generate(seed)` makes one checked demo."""

    def __init__(self, task: str, height: int = 480, width: int = 640, cameras: tuple[str, ...] = CAMERAS,
                 render: bool = True):
        self.task = get_task(task).name
        self.ee_env = AlohaMocapEnv(self.task, render=False)
        self.env = AlohaSimEnv(self.task, height, width, cameras, control_hz=DEMO_HZ, render=render)

    def generate(self, seed: int, plan_error: np.ndarray | None = None) -> DemoResult:
        """The demo of scene `seed`; `plan_error` as in `run_scripted_demo`."""
        result = run_scripted_demo(self.task, seed, self.ee_env, self.env, plan_error)
        log.debug("seed %d: %s", seed, result.summary())
        return result

    def close(self) -> None:
        self.env.close()
        self.ee_env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scripted_sim_source(task: str, seed: int) -> tuple[TrajectorySource, np.ndarray]:
    """The scripted demonstration of `task` for scene `seed` as a teleop source (25 Hz joint commands),
    and its object poses. The sim must be reset with the same seed so the objects are where the script
    expects them."""
    rollout = scripted_rollout(task, seed)
    return TrajectorySource(rollout.commands), rollout.object_poses
