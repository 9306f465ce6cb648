"""`sim eval`: Wilson interval numbers, and a closed-loop run of the shipped checkpoint through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cosmos_policy_core.cli import main
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.rollout import EvalConfig, GifRecorder, wilson_interval

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "aloha_sim_transfer_cube_small"


def test_wilson_interval_hand_computed():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(45, 50)
    assert (lo, hi) == (pytest.approx(0.7864, abs=1e-4), pytest.approx(0.9565, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ConfigError):
        wilson_interval(3, 2)
    with pytest.raises(ConfigError):
        EvalConfig(execute_steps=60)


@pytest.mark.slow  # two closed-loop episodes (MuJoCo + VAE encode/decode): ~10 s idle, minutes on busy cores
def test_sim_eval_two_episodes_with_the_shipped_checkpoint(tmp_path):
    assert (SHIPPED / "config.json").is_file(), "the shipped checkpoint is missing"
    out, gif = tmp_path / "eval.json", tmp_path / "rollout.gif"
    cmd = [str(Path(sys.executable).parent / "cosmos-aloha"), "sim", "eval", "--checkpoint", str(SHIPPED),
           "--episodes", "2", "--seed", "100", "--steps", "2", "--max-steps", "60", "--json", str(out),
           "--video", str(gif), "--hold-steps", "2", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["episodes"] == 2 and 0 <= report["successes"] <= 2
    assert report["success_rate"] == report["successes"] / 2
    lo, hi = report["ci95"]
    assert 0 <= lo <= report["success_rate"] <= hi <= 1
    assert len(report["max_rewards"]) == 2 and all(0 <= r <= 4 for r in report["max_rewards"])
    assert [e["seed"] for e in report["per_episode"]] == [100, 101]
    assert all(e["queries"] >= 1 for e in report["per_episode"])
    for e in report["per_episode"]:
        assert len(e["reward_steps"]) == 5 and sum(e["reward_steps"]) == e["steps"]
        assert max(level for level, n in enumerate(e["reward_steps"]) if n) <= e["max_reward"]
    assert "control steps at reward 0..4" in proc.stdout
    assert report["successes"] == 2 or "by the furthest stage held 5+ control steps:" in proc.stdout
    assert report["held_successes"] == sum(e["longest_hold"] >= 2 for e in report["per_episode"]) <= report["successes"]
    assert "held 2+ control steps" in proc.stdout
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames >= 10 and im.size == (3 * 112, 2 * 112 + GifRecorder.STRIP_HEIGHT)  # + the value strip


def test_parallel_workers_give_the_same_episodes_as_one_process():
    from cosmos_policy_core.runtime.rollout import EvalConfig, evaluate_checkpoint

    cfg = EvalConfig(episodes=2, seed=7, num_steps=1, execute_steps=10, max_steps=12)
    one = evaluate_checkpoint(SHIPPED, cfg, progress=False)
    two = evaluate_checkpoint(SHIPPED, cfg, progress=False, workers=2)
    assert two.config["workers"] == 2 and [e.index for e in two.per_episode] == [0, 1]
    for a, b in zip(one.per_episode, two.per_episode):
        assert (a.seed, a.steps, a.queries, a.max_reward, a.success) == (b.seed, b.steps, b.queries, b.max_reward,
                                                                         b.success)
        assert a.reward_steps == b.reward_steps and sum(a.reward_steps) == a.steps
        assert b.values == pytest.approx(a.values, abs=1e-3)


class _ScriptedRewardEnv:
    """A stand-in sim whose reward after control step i is rewards[i] (then 0); success as gym-aloha's."""

    def __init__(self, rewards):
        self.rewards, self.qpos = list(rewards), np.zeros(14)

    def _obs(self):
        return {"qpos": self.qpos.copy(), "images": {}}

    def reset(self, seed):
        self.i, self.max_reward = 0, 0
        return self._obs()

    def step(self, command):
        reward = self.rewards[self.i] if self.i < len(self.rewards) else 0
        self.i += 1
        self.max_reward = max(self.max_reward, reward)
        return self._obs(), reward

    @property
    def success(self):
        return self.max_reward >= 4


class _StillPolicy:
    def act(self, observation, seed, num_steps=None, return_future_images=False):
        from types import SimpleNamespace

        return SimpleNamespace(actions=np.tile(observation.proprio, (50, 1)), value=0.0, future_images=None)


def test_held_success_counts_consecutive_control_steps_at_the_maximum_reward():
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.runtime.rollout import run_episode

    # Reward 4 for one step at step 3, then for 2 steps at 6-7, then for 5 steps at 10-14.
    rewards = [0, 2, 2, 4, 2, 2, 4, 4, 2, 2, 4, 4, 4, 4, 4, 2]
    env, policy, executor = _ScriptedRewardEnv(rewards), _StillPolicy(), ExecutorConfig.aloha(25)

    def run(**cfg):
        return run_episode(policy, env, executor, EvalConfig(episodes=1, max_steps=40, **cfg), 0)

    first = run()  # gym-aloha's metric: stop at the first reward 4
    assert (first.success, first.steps, first.longest_hold) == (True, 4, 1)
    held = run(hold_steps=3)  # runs past the first success and stops when 3 steps at reward 4 are reached
    assert (held.success, held.steps, held.longest_hold) == (True, 13, 3)
    assert held.reward_steps == [1, 0, 6, 0, 6]
    short = run(hold_steps=6)  # the longest hold is 5: a success by gym-aloha's count, not a held one
    assert (short.success, short.steps, short.longest_hold) == (True, 40, 5)
    assert run(stop_on_success=False).steps == 40
    with pytest.raises(ConfigError):
        EvalConfig(hold_steps=-1)


class _CountingPolicy:
    """Chunk k (the k-th query) holds 0.001 * (100 k + i) at step i on every joint."""

    def __init__(self):
        self.query_steps = []

    def act(self, observation, seed, num_steps=None, return_future_images=False):
        from types import SimpleNamespace

        k = len(self.query_steps)
        self.query_steps.append(round(observation.timestamp * 25))
        actions = 0.001 * (100 * k + np.arange(50, dtype=float))[:, None] * np.ones((1, 14))
        return SimpleNamespace(actions=actions, value=0.0, future_images=None)


class _RecordingEnv(_ScriptedRewardEnv):
    def step(self, command):
        self.commands.append(np.asarray(command, float).copy())
        return super().step(command)

    def reset(self, seed):
        self.commands = []
        return super().reset(seed)


def test_latency_steps_deliver_each_chunk_late_and_play_it_from_its_observation_time():
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.runtime.rollout import run_episode

    env, policy = _RecordingEnv([0] * 25), _CountingPolicy()
    executor = ExecutorConfig.aloha(25, blend_steps=0)  # no blending: each command is one chunk's action
    result = run_episode(policy, env, executor, EvalConfig(episodes=1, max_steps=25, execute_steps=10,
                                                           latency_steps=3), 0)
    assert policy.query_steps == [0, 10, 20] and result.queries == 3
    played = [c[0] for c in env.commands]
    # Steps 0-2 hold (no chunk yet); chunk k, observed at 10 k, arrives at 10 k + 3 and plays index t - 10 k.
    newest = [(t - 3) // 10 for t in range(3, 25)]          # the last chunk to have arrived by step t
    expected = [0.0] * 3 + [0.001 * (100 * k + t - 10 * k) for t, k in zip(range(3, 25), newest)]
    assert played == pytest.approx(expected, abs=1e-12)
    assert played[12] == pytest.approx(0.012) and played[13] == pytest.approx(0.103)  # the switch at 13
    with pytest.raises(ConfigError):
        EvalConfig(execute_steps=10, latency_steps=11)   # the next query would start before this chunk arrived
    EvalConfig(execute_steps=10, latency_steps=10)       # back to back
    with pytest.raises(ConfigError):
        EvalConfig(execute_steps=48, latency_steps=3)    # the chunk would run out before the next arrives


def test_ensemble_decay_reaches_the_executor_and_averages_the_chunks():
    from cosmos_policy_core.runtime.rollout import _executor_config, run_episode

    assert _executor_config(EvalConfig()).ensemble_decay is None
    cfg = EvalConfig(episodes=1, max_steps=25, execute_steps=10, ensemble_decay=0.0)   # k = 0: a plain mean
    executor = _executor_config(cfg)
    assert executor.ensemble_decay == 0.0
    env, policy = _RecordingEnv([0] * 25), _CountingPolicy()
    run_episode(policy, env, executor, cfg, 0)
    played = [c[0] for c in env.commands]
    # Steps 10-19: chunks 0 and 1 live, mean of 0.001 t and 0.001 (100 + t - 10), reached after the
    # 8-step blend out of the initial hold (offset 0: the first chunk starts at the measured pose).
    assert played[5] == pytest.approx(0.005)
    assert played[15] == pytest.approx(0.001 * (15 + 105) / 2)
    assert played[24] == pytest.approx(0.001 * (24 + 114 + 204) / 3)


def test_sim_eval_takes_the_task_from_the_checkpoints_task_string(tmp_path, capsys):
    from cosmos_policy_core.sim.tasks import TASKS, checkpoint_task
    from cosmos_policy_core.testing import build_random_checkpoint

    assert checkpoint_task(SHIPPED) == "transfer_cube"
    insertion = build_random_checkpoint(tmp_path / "insertion", image_size=64, tasks=(TASKS["insertion"].description,))
    assert checkpoint_task(insertion) == "insertion"
    both = build_random_checkpoint(tmp_path / "both", image_size=64,
                                   tasks=tuple(t.description for t in TASKS.values()))
    assert checkpoint_task(both) is None and checkpoint_task(tmp_path / "missing") is None
    assert main(["sim", "eval", "--checkpoint", str(both), "--episodes", "1", "--no-progress"]) == 2
    assert "pass --task transfer_cube or --task insertion" in capsys.readouterr().err


def test_an_interrupted_eval_reports_its_finished_episodes_and_the_seeds_left(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the fourth episode of six: the report keeps the three finished ones and names the other three,
    `sim eval` exits 130 and says how to run the rest; merged with a run of those, nothing is left unfinished."""
    from cosmos_policy_core.runtime import rollout
    from cosmos_policy_core.runtime.comparison import merge_reports

    def episode(policy, env, executor_config, cfg, index, *args):
        if index == 3:
            raise KeyboardInterrupt
        return rollout.EpisodeResult(index=index, seed=cfg.seed + index, success=index % 2 == 0,
                                     max_reward=4 if index % 2 == 0 else 1, steps=5, queries=1, seconds=0.0,
                                     reward_steps=[5, 0, 0, 0, 0])

    monkeypatch.setattr(rollout, "run_episode", episode)
    out = tmp_path / "eval.json"
    args = ["sim", "eval", "--checkpoint", str(SHIPPED), "--episodes", "6", "--seed", "40", "--no-progress"]
    assert main([*args, "--json", str(out)]) == 130
    printed = capsys.readouterr().out
    assert "transfer_cube: 2/3 successes" in printed
    assert ('1 failure by the furthest stage held 5+ control steps:\n'
            '     1  not even "the right finger touches the cube" (seeds 41)\n') in printed
    assert (f"interrupted after 3 of 6 episodes (the report {out} holds them); 3 seeds not run: run them with "
            "--seed 43 --episodes 3, then join the reports with `cosmos-aloha sim merge`") in printed
    report = json.loads(out.read_text())
    assert [e["seed"] for e in report["per_episode"]] == [40, 41, 42] and report["unfinished_seeds"] == [43, 44, 45]
    assert (report["episodes"], report["successes"], report["config"]["episodes"]) == (3, 2, 6)

    rest = {**report, "per_episode": [{**e, "seed": e["seed"] + 3} for e in report["per_episode"]],
            "unfinished_seeds": [], "config": {**report["config"], "seed": 43, "episodes": 3}}
    merged = merge_reports([report, rest], ["first", "rest"])
    assert merged["episodes"] == 6 and merged["unfinished_seeds"] == []
    assert merge_reports([report, {**rest, "per_episode": rest["per_episode"][:2]}],
                         ["first", "rest"])["unfinished_seeds"] == [45]

    monkeypatch.setattr(rollout, "run_episode", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main([*args, "--json", str(tmp_path / "none.json")]) == 130    # nothing finished: no report
    assert not (tmp_path / "none.json").exists()
