"""benchmarks/planning_ceiling.py: its loop is sim eval's, and its judge executes the candidate whose tried future went best."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "aloha_sim_transfer_cube_small"


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("planning_ceiling")


class LineEnv:
    """A sim whose arm goes where it is commanded; joint 0 at 0.75 rad or more is a success (reward 4), below
    that the reward is int(4 * joint 0). Snapshots copy the whole state."""

    def __init__(self):
        self.real_steps = 0

    def reset(self, seed):
        self.qpos, self.t, self.max_reward = np.zeros(14), 0, 0
        return self.observation()

    def observation(self, render=True):
        return {"qpos": self.qpos.copy(), "images": {"cam_high": np.zeros((4, 4, 3), np.uint8)} if render else {}}

    def render(self):
        return self.observation()["images"]

    def step(self, command, render=True):
        self.qpos, self.t = np.asarray(command, float).copy(), self.t + 1
        self.max_reward = max(self.max_reward, 4 if self.qpos[0] >= 0.75 else int(4 * self.qpos[0]))
        return self.observation(render), self.max_reward

    @property
    def success(self):
        return self.max_reward >= 4

    def snapshot(self):
        return copy.deepcopy((self.qpos, self.t, self.max_reward))

    def restore(self, snap):
        self.qpos, self.t, self.max_reward = copy.deepcopy(snap)


class JointZeroPolicy:
    """Candidate i of a query holds joint 0 at 0.4 * i; the policy's own chunks inside a lookahead hold still."""

    def __init__(self, bench, episode_seed):
        self.bench, self.episode_seed = bench, episode_seed

    def _actions(self, obs, seed):
        actions = np.tile(obs.proprio, (50, 1))
        if seed < self.bench.LOOKAHEAD_SEED:
            query = round(obs.timestamp * 25) // 50
            actions[:, 0] = 0.4 * (seed - self.episode_seed * 1000 - query)
        return actions

    def encode_observation(self, obs):
        return obs

    def sample_actions(self, cond, seeds, num_steps=None):
        return [(cond, s) for s in seeds]

    def actions_from_latent(self, latent):
        return np.stack([self._actions(obs, s) for obs, s in latent])

    def act(self, obs, seed, num_steps=None, return_future_images=False):
        return type("Chunk", (), {"actions": self._actions(obs, seed)})()


def _run(bench, candidates):
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.sim.tasks import get_task

    return bench.ceiling_episode(JointZeroPolicy(bench, 7), LineEnv(), ExecutorConfig.aloha(25),
                                 get_task("transfer_cube"), 7, candidates, 1, 120)


def test_the_judge_executes_the_candidate_whose_future_succeeds(bench):
    alone = _run(bench, 1)
    assert not alone.success and alone.decisions == [] and alone.queries == 3
    best = _run(bench, 3)
    assert best.success and best.max_reward == 4
    first = best.decisions[0]
    assert first.step == 0 and first.chosen == 2
    assert first.futures == [(False, 0), (False, 1), (True, 4)]
    summary = bench.disagreement([best])
    assert summary["candidate_0_fails_another_succeeds"] >= 1 and summary["chose_other_than_0"] >= 1


def test_without_a_success_the_higher_reward_wins_and_ties_keep_candidate_0(bench):
    two = _run(bench, 2)   # 0 rad or 0.4 rad: neither succeeds
    assert not two.success
    assert two.decisions[0].futures == [(False, 0), (False, 1)] and two.decisions[0].chosen == 1
    # Once joint 0 sits at 0.4 rad, holding it (candidate 0) reaches reward 1 as well: a tie keeps candidate 0.
    assert two.decisions[1].futures[0] == (False, 1) and two.decisions[1].chosen == 0


def test_one_candidate_plays_exactly_what_sim_eval_plays(bench):
    """The benchmark's loop against `run_episode` with the shipped policy, same seed: the same steps and state."""
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.runtime.policy import CosmosPolicy, policy_config_for
    from cosmos_policy_core.runtime.rollout import EvalConfig, run_episode
    from cosmos_policy_core.sim.env import AlohaSimEnv
    from cosmos_policy_core.sim.tasks import get_task

    policy = CosmosPolicy.from_checkpoint(SHIPPED, config=policy_config_for(SHIPPED, num_steps=2))
    cfg = EvalConfig(seed=40001, episodes=1, execution="whole_chunks", execute_steps=50, num_steps=2, max_steps=55)
    with AlohaSimEnv("transfer_cube", 224, 224, control_hz=25) as env:
        plain = run_episode(policy, env, ExecutorConfig.aloha(25), cfg, 0)
        plain_qpos = env.data.qpos.copy()
        ours = bench.ceiling_episode(policy, env, ExecutorConfig.aloha(25), get_task("transfer_cube"), 40001, 1, 2, 55)
        np.testing.assert_array_equal(env.data.qpos, plain_qpos)
        # Two candidates: each query tries both futures with the real policy and sim, then plays one.
        two = bench.ceiling_episode(policy, env, ExecutorConfig.aloha(25), get_task("transfer_cube"), 40001, 2, 2, 55)
    assert (ours.steps, ours.queries, ours.max_reward) == (plain.steps, plain.queries, plain.max_reward) == (55, 2, 0)
    assert two.steps == 55 and [d.step for d in two.decisions] == [0, 50]
    assert all(len(d.futures) == 2 and d.chosen in (0, 1) for d in two.decisions)


def test_the_learned_planner_values_the_same_candidates_without_changing_what_is_played(bench):
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.sim.env import AlohaSimEnv
    from cosmos_policy_core.sim.tasks import get_task

    learned = bench.LearnedPlanner(str(SHIPPED.parent / "aloha_sim_transfer_cube_small_planning"), 1, 1)
    policy, planner = learned.load(str(SHIPPED), 2, 2)
    args = (ExecutorConfig.aloha(25), get_task("transfer_cube"), 40002, 2, 2, 55)
    with AlohaSimEnv("transfer_cube", 224, 224, control_hz=25) as env:
        judged = bench.ceiling_episode(policy, env, *args)
        both = bench.ceiling_episode(policy, env, *args, planner=planner)
    assert [(d.chosen, d.futures) for d in both.decisions] == [(d.chosen, d.futures) for d in judged.decisions]
    for d in both.decisions:
        assert len(d.planner_values) == 2 and all(0.0 <= v <= 1.0 for v in d.planner_values)
        assert d.planner_choice == (1 if d.planner_values[1] > d.planner_values[0] else 0)
    assert judged.decisions[0].planner_values is None
    assert bench.learned_choices([judged]) is None
    summary = bench.learned_choices([both])
    assert summary["split_decisions"] <= 2 and summary["planner_picks_success"] <= summary["split_decisions"]


def test_the_learned_planners_choices_are_scored_against_chance_and_pairwise(bench):
    D = bench.Decision
    decisions = [D(0, 1, [(False, 2), (True, 4), (False, 1)], [0.2, 0.9, 0.5], 1),     # right: 2 of 2 pairs
                 D(50, 0, [(True, 4), (False, 2)], [0.3, 0.3], 0),                     # a tie: half
                 D(100, 0, [(True, 4), (True, 4)], [0.1, 0.8], 1)]                     # not split: left out
    episode = bench.CeilingEpisode(index=0, seed=1, success=True, max_reward=4, steps=120, queries=3, seconds=1.0,
                                   decisions=decisions)
    summary = bench.learned_choices([episode])
    assert summary["split_decisions"] == 2 and summary["planner_picks_success"] == 2
    assert summary["candidate_0_succeeds"] == 1 and summary["planner_picks_other_than_0"] == 1
    assert summary["chance"] == pytest.approx(1 / 3 + 1 / 2, abs=0.05)
    assert summary["pairs_ordered_right"] == pytest.approx(2.5 / 3, abs=1e-3)
    assert bench.disagreement([episode])["some_succeed_some_fail"] == 2


def test_recorded_queries_hold_the_observation_the_candidates_and_their_futures(bench, tmp_path):
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.sim.tasks import get_task

    episode = bench.ceiling_episode(JointZeroPolicy(bench, 7), LineEnv(), ExecutorConfig.aloha(25),
                                    get_task("transfer_cube"), 7, 3, 1, 120, record=str(tmp_path))
    files = sorted(tmp_path.glob("*.npz"))
    assert [f.name for f in files] == [f"seed7_step{d.step:04d}.npz" for d in episode.decisions]
    with np.load(files[0]) as q:
        assert (int(q["seed"]), int(q["step"]), str(q["task"])) == (7, 0, "transfer_cube")
        np.testing.assert_array_equal(q["qpos"], np.zeros(14))
        np.testing.assert_array_equal(q["actions"][:, :, 0], [[0.0] * 50, [0.4] * 50, [0.8] * 50])
        assert q["success"].tolist() == [False, False, True] and q["max_reward"].tolist() == [0, 1, 4]
        # Failing futures run to the last step; the success ends where joint 0 first reaches 0.75 rad.
        assert q["end_step"].tolist() == [119, 119, episode.decisions[0].ends[2]] and q["end_step"][2] < 50
        assert [str(c) for c in q["cameras"]] == ["cam_high"] and q["image_cam_high"].shape == (4, 4, 3)


def test_repeated_lookaheads_change_nothing_played_and_are_recorded(bench, tmp_path):
    """In the stand-in the policy's own chunks hold still whatever their seed: every repeat repeats the first."""
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.sim.tasks import get_task

    args = (JointZeroPolicy(bench, 7), LineEnv(), ExecutorConfig.aloha(25), get_task("transfer_cube"), 7, 3, 1, 120)
    once = bench.ceiling_episode(*args)
    thrice = bench.ceiling_episode(*args, record=str(tmp_path), lookaheads=3)
    assert [(d.step, d.chosen, d.futures) for d in thrice.decisions] == [(d.step, d.chosen, d.futures)
                                                                          for d in once.decisions]
    assert once.decisions[0].repeats is None
    assert thrice.decisions[0].repeats == [[False, False], [False, False], [True, True]]
    with np.load(tmp_path / "seed7_step0000.npz") as q:
        assert q["success_repeats"].tolist() == thrice.decisions[0].repeats


def test_repeatability_scores_a_judge_of_the_repeats_against_the_first_futures(bench):
    D = bench.Decision
    decisions = [D(0, 1, [(False, 2), (True, 4)], repeats=[[False, False], [True, False]]),   # repeats pick 1: right
                 D(50, 0, [(True, 4), (False, 2)], repeats=[[False, True], [True, False]]),   # a tie: half right
                 D(100, 0, [(True, 4), (True, 4)], repeats=[[True, True], [True, True]])]    # not split: left out
    episode = bench.CeilingEpisode(index=0, seed=1, success=True, max_reward=4, steps=120, queries=3, seconds=1.0,
                                   decisions=decisions)
    summary = bench.repeatability([episode])
    assert summary["split_decisions"] == 2 and summary["repeats_per_candidate"] == 2
    assert summary["repeat_succeeds_after_first_success"] == 0.5      # [True, False] + [False, True]
    assert summary["repeat_succeeds_after_first_failure"] == 0.25     # [False, False] + [True, False]
    assert summary["repeats_pick_success"] == 1.5 and summary["chance"] == 1.0
    assert summary["by_query_step"]["0"]["repeats_pick_success"] == 1.0      # the split queries one by one
    assert summary["by_query_step"]["50"]["repeat_succeeds_after_first_failure"] == 0.5
    assert "100" not in summary["by_query_step"]
    assert bench.repeatability([bench.CeilingEpisode(index=0, seed=1, success=False, max_reward=0, steps=1,
                                                     queries=1, seconds=0.0)]) is None
