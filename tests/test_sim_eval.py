"""`sim eval`: Wilson interval numbers, and a closed-loop run of the shipped checkpoint through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.sim.evaluate import EvalConfig, wilson_interval

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
           "--video", str(gif), "--no-progress"]
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
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames >= 10 and im.size == (3 * 112, 2 * 112)


def test_parallel_workers_give_the_same_episodes_as_one_process():
    from cosmos_policy_core.sim.evaluate import EvalConfig, evaluate_checkpoint

    cfg = EvalConfig(episodes=2, seed=7, num_steps=1, execute_steps=10, max_steps=12)
    one = evaluate_checkpoint(SHIPPED, cfg, progress=False)
    two = evaluate_checkpoint(SHIPPED, cfg, progress=False, workers=2)
    assert two.config["workers"] == 2 and [e.index for e in two.per_episode] == [0, 1]
    for a, b in zip(one.per_episode, two.per_episode):
        assert (a.seed, a.steps, a.queries, a.max_reward, a.success) == (b.seed, b.steps, b.queries, b.max_reward,
                                                                         b.success)
        assert a.reward_steps == b.reward_steps and sum(a.reward_steps) == a.steps
        assert b.values == pytest.approx(a.values, abs=1e-3)
