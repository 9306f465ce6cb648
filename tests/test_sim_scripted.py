"""Scripted demos: waypoint maths, the mocap env's weld fix, and end-to-end demos checked in the joint sim."""
from __future__ import annotations

import numpy as np
import pytest

import cosmos_policy_core.sim  # noqa: F401  (selects MUJOCO_GL=egl before mujoco is imported)

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from cosmos_policy_core.errors import ConfigError  # noqa: E402
from cosmos_policy_core.sim.demos import DemoGenerator, scripted_rollout  # noqa: E402
from cosmos_policy_core.sim.ee_env import AlohaMocapEnv  # noqa: E402
from cosmos_policy_core.sim.env import AlohaSimEnv  # noqa: E402
from cosmos_policy_core.sim.scripted import (  # noqa: E402
    ScriptedPolicy,
    Waypoint,
    axis_angle_quat,
    gripper_quat,
    interpolate,
    link_from_tcp,
    make_scripted_policy,
    pointing_axis,
    quat_mul,
    quat_rotate,
    tcp_from_link,
)
from cosmos_policy_core.sim.tasks import get_task  # noqa: E402


def test_quaternion_helpers():
    q = axis_angle_quat([0, 0, 1], 90)
    np.testing.assert_allclose(quat_rotate(q, np.array([1.0, 0, 0])), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(quat_mul(q, axis_angle_quat([0, 0, 1], -90)), [1, 0, 0, 0], atol=1e-12)
    # Both grippers tilted 60 degrees down point toward the middle of the table and down.
    np.testing.assert_allclose(pointing_axis(gripper_quat(0, pitch_down=60)), [0.5, 0, -np.sqrt(3) / 2], atol=1e-12)
    np.testing.assert_allclose(pointing_axis(gripper_quat(1, pitch_down=60)), [-0.5, 0, -np.sqrt(3) / 2], atol=1e-12)
    quat = gripper_quat(1, pitch_down=30, roll=20)
    tcp = np.array([0.1, 0.5, 0.2])
    np.testing.assert_allclose(tcp_from_link(link_from_tcp(tcp, quat), quat), tcp, atol=1e-12)


def test_interpolation_between_waypoints():
    q = np.array([1.0, 0, 0, 0])
    wps = [Waypoint(0, np.zeros(3), q, 0.0), Waypoint(10, np.array([1.0, 0, 0]), q, 1.0)]
    mid = interpolate(wps, 5)
    np.testing.assert_allclose(tcp_from_link(mid[:3], mid[3:7]), [0.5, 0, 0], atol=1e-12)
    assert mid[7] == pytest.approx(0.5)
    after = interpolate(wps, 50)                   # held after the last waypoint
    np.testing.assert_allclose(tcp_from_link(after[:3], after[3:7]), [1, 0, 0], atol=1e-12)
    assert after[7] == 1.0


def test_replanning_policy_needs_object_poses():
    q = np.array([1.0, 0, 0, 0])
    wps = [Waypoint(0, np.zeros(3), q, 0.0)]
    policy = ScriptedPolicy(list(wps), list(wps), replan_at=(3,), replan=lambda t, o, l, r: (l, r))
    assert policy(0).shape == (16,)
    with pytest.raises(ConfigError, match="needs the object poses"):
        policy(3)
    with pytest.raises(ConfigError, match="no scripted policy"):
        make_scripted_policy("stack_blocks", np.zeros((2, 7)), np.zeros((1, 7)))


def test_mocap_env_gripper_sits_on_its_target():
    """The weld fix: with the target at the reset pose, the gripper stays there (not cm away)."""
    env = AlohaMocapEnv("transfer_cube")
    env.reset(seed=0)
    np.testing.assert_allclose(env.initial_mocap[:, :3], [[-0.317, 0.5, 0.295], [0.317, 0.5, 0.295]], atol=2e-3)
    hold = np.concatenate([env.initial_mocap[0], [0.0], env.initial_mocap[1], [0.0]])
    for _ in range(50):
        env.step(hold)
    for arm in (0, 1):
        assert np.linalg.norm(env.gripper_pose(arm)[:3] - env.initial_mocap[arm, :3]) < 5e-3
    # A target 5 cm away is reached to within a centimetre.
    moved = hold.copy()
    moved[8:11] += [-0.05, 0.0, -0.05]
    for _ in range(50):
        env.step(moved)
    assert np.linalg.norm(env.gripper_pose(1)[:3] - moved[8:11]) < 0.01


def test_scripted_transfer_cube_demo_succeeds_end_to_end():
    with DemoGenerator("transfer_cube", height=32, width=32) as generator:
        result = generator.generate(seed=0)
    assert result.success and result.max_reward == 4
    assert result.final_reward == 4                       # the left hand still holds it at the end
    ep = result.episode
    spec = get_task("transfer_cube")
    assert len(ep) == spec.episode_len_25hz == 200
    assert ep.action.shape == (200, 14) and ep.qpos.shape == (200, 14)
    assert sorted(ep.images) == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert ep.images["cam_high"].shape == (200, 32, 32, 3)
    assert ep.fps == 25 and ep.sim and ep.task == spec.description
    assert set(np.unique(ep.action[:, [6, 13]]).round(6)) >= {0.0, 1.0}   # grippers open and close
    # The recorded actions are exactly what the joint sim executed: replaying them reproduces the
    # recorded observations and the success.
    env = AlohaSimEnv("transfer_cube", control_hz=25, render=False)
    obs = env.reset(seed=0)
    for k, action in enumerate(ep.action):
        np.testing.assert_array_equal(obs["qpos"], ep.qpos[k])
        obs, _ = env.step(action)
    assert env.success


def test_scripted_insertion_rollout_succeeds():
    rollout = scripted_rollout("insertion", seed=0)
    assert rollout.commands.shape == (get_task("insertion").episode_len_25hz, 14)
    assert rollout.success and rollout.max_reward == 4
    np.testing.assert_array_equal(rollout.object_poses, get_task("insertion").sample_object_poses(0))


@pytest.mark.slow
@pytest.mark.parametrize("task,minimum", [("transfer_cube", 0.9), ("insertion", 0.8)])
def test_scripted_success_rate_over_20_seeds(task, minimum):
    with DemoGenerator(task, render=False) as generator:
        results = [generator.generate(seed) for seed in range(20)]
    rate = np.mean([r.success for r in results])
    assert rate >= minimum, [r.summary() for r in results if not r.success]


def test_scripted_plan_error_moves_only_where_the_script_aims():
    exact = scripted_rollout("transfer_cube", seed=0)
    zero = scripted_rollout("transfer_cube", seed=0, plan_error=np.zeros((1, 3)))
    np.testing.assert_array_equal(zero.commands, exact.commands)
    # Aiming 6 cm beside the cube, the right fingers close on nothing: nothing is lifted.
    missed = scripted_rollout("transfer_cube", seed=0, plan_error=[[0.0, 0.06, 0.0]])
    np.testing.assert_array_equal(missed.object_poses, exact.object_poses)   # the scene is the seed's
    assert not missed.success and missed.max_reward <= 1
    with pytest.raises(ConfigError, match=r"plan_error must be \(1, 3\)"):
        scripted_rollout("transfer_cube", seed=0, plan_error=np.zeros(3))
