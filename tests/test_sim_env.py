"""Joint-space MuJoCo ALOHA env: observation layout, cameras, rewards, determinism, gripper mapping, 25 Hz."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from cosmos_policy_core.errors import ConfigError, ShapeError  # noqa: E402
from cosmos_policy_core.robot.gripper import GripperConstants  # noqa: E402
from cosmos_policy_core.sim.env import AlohaSimEnv, ctrl_from_action, qpos_from_model  # noqa: E402
from cosmos_policy_core.sim.tasks import (  # noqa: E402
    LEFT_FINGER,
    RIGHT_FINGER,
    START_ARM_POSE,
    get_task,
    insertion_reward,
    transfer_cube_reward,
)

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def _c(*pairs):
    return frozenset(frozenset(p) for p in pairs)


def test_reset_and_step_shapes_and_only_the_three_cameras():
    with AlohaSimEnv("transfer_cube", height=48, width=64) as env:
        obs = env.reset(seed=0)
        assert obs["qpos"].shape == (14,)
        assert tuple(sorted(obs["images"])) == CAMS
        for img in obs["images"].values():
            assert img.shape == (48, 64, 3) and img.dtype == np.uint8
            assert img.std() > 5          # a real scene, not a blank buffer
        # The three views differ (they are different MuJoCo cameras).
        assert not np.array_equal(obs["images"]["cam_high"], obs["images"]["cam_left_wrist"])
        obs2, reward = env.step(obs["qpos"])
        assert obs2["qpos"].shape == (14,) and reward == 0 and env.t == 1


def test_camera_subset_and_bad_config():
    with AlohaSimEnv("insertion", height=32, width=32, cameras=("cam_high",)) as env:
        assert list(env.reset(seed=1)["images"]) == ["cam_high"]
    with pytest.raises(ConfigError, match="unknown cameras"):
        AlohaSimEnv(cameras=("top",), render=False)
    with pytest.raises(ConfigError, match="unknown sim task"):
        AlohaSimEnv("stack_blocks", render=False)
    with pytest.raises(ConfigError, match="control_hz"):
        AlohaSimEnv(control_hz=30, render=False)


def test_bad_action_is_rejected():
    env = AlohaSimEnv(render=False)
    env.reset(seed=0)
    with pytest.raises(ShapeError, match="expected \\(14,\\)"):
        env.step(np.zeros(16))
    bad = np.zeros(14)
    bad[3] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        env.step(bad)


def test_object_poses_follow_the_gym_aloha_draws():
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    env = AlohaSimEnv("transfer_cube", render=False)
    env.reset(seed=7)
    np.testing.assert_array_equal(env.object_poses[0], sample_box_pose(7))
    np.testing.assert_array_equal(env.data.qpos[16:23], sample_box_pose(7))
    ins = AlohaSimEnv("insertion", render=False)
    ins.reset(seed=7)
    peg, socket = sample_insertion_pose(7)
    np.testing.assert_array_equal(ins.object_poses, np.stack([peg, socket]))
    # Ranges over many seeds: cube x in [0, 0.2], y in [0.4, 0.6].
    poses = np.stack([get_task("transfer_cube").sample_object_poses(s)[0] for s in range(200)])
    assert poses[:, 0].min() >= 0.0 and poses[:, 0].max() <= 0.2
    assert poses[:, 1].min() >= 0.4 and poses[:, 1].max() <= 0.6 and (poses[:, 2] == 0.05).all()


def test_given_object_pose_overrides_the_seed():
    env = AlohaSimEnv("transfer_cube", render=False)
    env.reset(object_poses=np.array([[0.05, 0.45, 0.05, 1, 0, 0, 0]]))
    np.testing.assert_allclose(env.data.qpos[16:19], [0.05, 0.45, 0.05])


def test_same_seed_and_actions_give_identical_episodes():
    def run(seed):
        with AlohaSimEnv("transfer_cube", height=32, width=32, control_hz=25) as env:
            obs = env.reset(seed=seed)
            a = obs["qpos"].copy()
            for t in range(10):
                a[0] += 0.02
                a[6] = 1.0 - t / 10
                obs, _ = env.step(a)
            return obs, env.data.qpos.copy()

    (o1, q1), (o2, q2), (_, q3) = run(3), run(3), run(4)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(o1["images"]["cam_high"], o2["images"]["cam_high"])
    assert not np.array_equal(q1[16:], q3[16:])   # another seed puts the cube elsewhere


def test_matches_gym_aloha_step_for_step():
    """Same model, same controls, same substeps: our qpos equals gym-aloha's dm_control env exactly."""
    from gym_aloha.env import AlohaEnv

    ref = AlohaEnv("transfer_cube", obs_type="pixels_agent_pos")
    ref_obs, _ = ref.reset(seed=5)
    env = AlohaSimEnv("transfer_cube", render=False)
    obs = env.reset(seed=5)
    np.testing.assert_array_equal(obs["qpos"], ref_obs["agent_pos"])
    a = obs["qpos"].copy()
    for t in range(4):      # gym-aloha renders three 480x640 views per step: keep it short
        a[1] += 0.04
        a[13] = t / 3
        obs, _ = env.step(a)
        ref_obs, *_ = ref.step(a)
        np.testing.assert_allclose(obs["qpos"], ref_obs["agent_pos"], atol=1e-12)


def test_gripper_normalisation_mapping():
    g = GripperConstants.original_aloha()
    action = np.zeros(14)
    action[6], action[13] = 1.0, 0.0
    ctrl = ctrl_from_action(action, g)
    np.testing.assert_allclose(ctrl[6:8], [0.058, -0.058])          # open = POSITION_OPEN, mirrored
    np.testing.assert_allclose(ctrl[14:16], [0.01844, -0.01844])    # closed = POSITION_CLOSE
    raw = START_ARM_POSE.copy()
    q = qpos_from_model(raw, g)
    assert q.shape == (14,)
    np.testing.assert_allclose(q[[6, 13]], (0.02239 - 0.01844) / (0.058 - 0.01844))
    np.testing.assert_array_equal(q[0:6], raw[0:6])
    np.testing.assert_array_equal(q[7:13], raw[8:14])


def test_gripper_commands_move_the_fingers():
    env = AlohaSimEnv(render=False)
    obs = env.reset(seed=0)
    a = obs["qpos"].copy()
    a[6], a[13] = 1.0, 0.0
    for _ in range(25):
        obs, _ = env.step(a)
    # The finger actuators clip to 0.021..0.057 m, i.e. normalised ~0.06..0.97.
    assert obs["qpos"][6] > 0.9
    assert obs["qpos"][13] < 0.15
    assert env.data.qpos[7] == pytest.approx(-env.data.qpos[6], abs=1e-3)   # mirrored finger


def test_25hz_mode_holds_each_command_for_two_physics_steps():
    fast = AlohaSimEnv(render=False, control_hz=50)
    slow = AlohaSimEnv(render=False, control_hz=25)
    a = fast.reset(seed=2)["qpos"].copy()
    slow.reset(seed=2)
    a[0] = 0.3
    for _ in range(2):
        fast.step(a)
    slow.step(a)
    assert slow.t == fast.t == 2
    np.testing.assert_array_equal(slow.data.qpos, fast.data.qpos)
    fast.step_hold(a, 4)
    slow.step(a)
    slow.step(a)
    np.testing.assert_array_equal(slow.data.qpos, fast.data.qpos)


def test_do_nothing_episode_stays_at_zero_reward():
    env = AlohaSimEnv("transfer_cube", render=False, control_hz=25)
    obs = env.reset(seed=0)
    assert obs["images"] == {}                  # render=False: physics only
    a = obs["qpos"]
    for _ in range(100):
        _, r = env.step(a)
        assert r == 0
    assert env.max_reward == 0 and not env.success


def test_reward_rules_from_contacts():
    box = "red_box"
    assert transfer_cube_reward(_c((box, "table"))) == 0
    assert transfer_cube_reward(_c((box, RIGHT_FINGER), (box, "table"))) == 1
    assert transfer_cube_reward(_c((box, RIGHT_FINGER))) == 2
    assert transfer_cube_reward(_c((box, LEFT_FINGER), (box, "table"))) == 3
    assert transfer_cube_reward(_c((box, LEFT_FINGER), (box, RIGHT_FINGER))) == 4
    assert insertion_reward(_c(("red_peg", RIGHT_FINGER), ("socket-2", LEFT_FINGER), ("red_peg", "table"))) == 1
    assert insertion_reward(_c(("red_peg", RIGHT_FINGER), ("socket-2", LEFT_FINGER))) == 2
    assert insertion_reward(_c(("red_peg", "socket-3"))) == 3
    assert insertion_reward(_c(("red_peg", "socket-3"), ("socket-1", "table"))) == 0
    assert insertion_reward(_c(("red_peg", "pin"), ("red_peg", "table"))) == 4


def test_restoring_a_snapshot_replays_the_same_future_bit_for_bit():
    with AlohaSimEnv("transfer_cube", height=32, width=32, control_hz=25) as env:
        obs = env.reset(seed=5)
        a = obs["qpos"].copy()
        for _ in range(5):
            a[1] -= 0.03
            env.step(a)
        snap = env.snapshot()

        def future():
            b = a.copy()
            out = []
            for t in range(15):
                b[1] -= 0.03
                b[6] = 1.0 - t / 15
                obs, reward = env.step(b, render=t == 14)
                out.append((obs["qpos"], reward, env.t))
            return out, obs["images"], env.data.qpos.copy()

        first, images, qpos = future()
        assert first[0][0].shape == (14,)
        assert env.t == 40             # physics steps: two per 25 Hz command
        env.restore(snap)
        assert env.t == 10
        second, images2, qpos2 = future()
        np.testing.assert_array_equal(qpos, qpos2)
        for (q1, r1, t1), (q2, r2, t2) in zip(first, second):
            np.testing.assert_array_equal(q1, q2)
            assert (r1, t1) == (r2, t2)
        np.testing.assert_array_equal(images["cam_high"], images2["cam_high"])
        # The snapshot is not consumed, and steps after a restore do not change it.
        env.restore(snap)
        third, _, qpos3 = future()
        np.testing.assert_array_equal(qpos, qpos3)
        assert snap.t == 10


def test_a_step_without_render_leaves_the_images_empty_and_the_physics_unchanged():
    with AlohaSimEnv("transfer_cube", height=32, width=32, control_hz=25) as env:
        obs = env.reset(seed=2)
        a = obs["qpos"].copy()
        a[0] += 0.05
        rendered, _ = env.step(a)
        env.reset(seed=2)
        blind, _ = env.step(a, render=False)
        assert blind["images"] == {} and tuple(sorted(rendered["images"])) == CAMS
        np.testing.assert_array_equal(blind["qpos"], rendered["qpos"])
