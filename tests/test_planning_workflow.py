"""Planning on rollouts, end to end at toy scale: recording rollouts, the planning fine-tune, the planning checkpoint in
`sim eval`, the quality measures (AUROC, PSNR), the paired comparison (Wilson, McNemar) and the value strip of the GIF.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_policy_core.checkpoint import load_checkpoint_dir, save_checkpoint_dir
from cosmos_policy_core.cli import main
from cosmos_policy_core.data.episode import Episode, EpisodeFile, load_episode_dir, write_episode_hdf5
from cosmos_policy_core.errors import CheckpointError, ConfigError, DataError
from cosmos_policy_core.layout import LatentLayout
from cosmos_policy_core.runtime.comparison import compare_reports, mcnemar_exact, merge_reports
from cosmos_policy_core.runtime.rollout import EvalConfig, GifRecorder, RolloutRecorder, _RolloutSink, run_episode
from cosmos_policy_core.testing import aloha_like_stats, build_random_checkpoint
from cosmos_policy_core.train.planning_quality import (
    ScoredStep, auroc, psnr, psnr_from_mse, scored_steps, summarize,
)
from cosmos_policy_core.train.samples import SampleBuilder, SampleConfig, SampleSpec

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "aloha_sim_transfer_cube_small"
CUBE = "pick up the red cube with the right arm and hand it over to the left arm"


# --- the measures, by hand -----------------------------------------------------------------------------
def test_auroc_of_perfect_random_and_inverted_scorers():
    labels = [False, False, True, True]
    assert auroc([0.1, 0.2, 0.8, 0.9], labels) == 1.0          # every success above every failure
    assert auroc([0.9, 0.8, 0.2, 0.1], labels) == 0.0          # inverted
    assert auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5          # a constant scorer: all ties
    # positives {0.35, 0.8} against negatives {0.1, 0.4}: 0.35 beats 0.1 only, 0.8 beats both -> 3 of 4 pairs
    assert auroc([0.1, 0.4, 0.35, 0.8], labels) == 0.75
    # a tie between a positive and a negative counts one half: (1 + 0.5) / 2
    assert auroc([0.3, 0.5, 0.5], [False, False, True]) == 0.75
    assert auroc([0.2, 0.3], [True, True]) is None              # one class only: undefined
    with pytest.raises(ConfigError):
        auroc([0.1, 0.2], [True])


def test_psnr_hand_values():
    a = np.full((4, 4, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-9)     # MSE 1: 48.13 dB
    assert psnr(np.zeros_like(a), np.full_like(a, 255)) == pytest.approx(0.0)  # MSE 255²
    assert psnr_from_mse(255.0**2 / 100) == pytest.approx(20.0)
    with pytest.raises(ConfigError):
        psnr(a, np.zeros((2, 2, 3), np.uint8))


def test_summary_pools_the_squared_errors_and_pairs_the_baseline():
    steps = [ScoredStep("e0", 0, True, 0.9, 0.8, 1.0, 4.0), ScoredStep("e0", 25, True, 0.7, 0.6, 3.0, 2.0),
             ScoredStep("e1", 0, False, 0.2, 0.7, 2.0, 6.0)]
    s = summarize(steps)
    assert (s.episodes, s.successes, s.samples) == (2, 1, 3)
    assert s.value_auroc == 1.0 and s.value_auroc_predicted == 0.5   # 0.8 > 0.7, 0.6 < 0.7
    assert s.world_model_psnr_db == pytest.approx(10 * math.log10(255**2 / 2.0))   # mean MSE (1 + 3 + 2) / 3
    assert s.copy_psnr_db == pytest.approx(10 * math.log10(255**2 / 4.0))
    assert s.world_model_better == pytest.approx(2 / 3)
    assert json.dumps(s.to_json_dict())
    assert scored_steps(130, 50, 25) == [0, 25, 50, 75] and scored_steps(50, 50, 25) == []


def test_mcnemar_exact_hand_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(8, 8) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)                   # 2 · 0.5^5
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)            # 2 · (1 + 10) / 2^10
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    with pytest.raises(ConfigError):
        mcnemar_exact(-1, 2)


def _report(successes: list[bool], seed: int = 100, task: str = "transfer_cube") -> dict:
    return {"task": task, "per_episode": [{"seed": seed + i, "success": s} for i, s in enumerate(successes)]}


def test_paired_comparison_of_two_reports(tmp_path, capsys):
    # Seeds 100-109: A solves 0-4, B solves 3-9 -> both 2 (3, 4), only A 3 (0-2), only B 5 (5-9), neither 0.
    a = _report([True] * 5 + [False] * 5)
    b = _report([False] * 3 + [True] * 7)
    c = compare_reports(a, b, "plain", "planned")
    assert (c.seeds, c.both, c.only_a, c.only_b, c.neither) == (10, 2, 3, 5, 0)
    assert c.difference == pytest.approx(0.2)
    assert c.mcnemar_p == pytest.approx(2 * (1 + 8 + 28 + 56) / 256)   # n = 8, P(X <= 3) doubled: 0.7266
    assert c.a.ci95 == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))   # 5 / 10
    assert (c.b.successes, c.b.rate) == (7, 0.7)
    with pytest.raises(ConfigError, match="different seeds"):
        compare_reports(a, _report([True] * 10, seed=200))
    with pytest.raises(ConfigError, match="one task"):
        compare_reports(a, _report([True] * 10, task="insertion"))

    (tmp_path / "plain.json").write_text(json.dumps(a))
    (tmp_path / "planned.json").write_text(json.dumps(b))
    out = tmp_path / "cmp.json"
    assert main(["sim", "compare", str(tmp_path / "plain.json"), str(tmp_path / "planned.json"),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plain: 5/10 successes, rate 50.0% (95% Wilson CI 23.7%-76.3%)" in printed
    assert "only by plain 3, only by planned 5" in printed and "+20.0%" in printed and "p = 0.727" in printed
    assert json.loads(out.read_text())["only_b"] == 5
    assert main(["sim", "compare", str(tmp_path / "plain.json"), str(tmp_path / "missing.json")]) == 2


def test_an_evaluation_run_in_pieces_merges_into_one_report(tmp_path, capsys):
    config = {"task": "transfer_cube", "seed": 100, "episodes": 5, "workers": 2, "hold_steps": 10,
              "planner_candidates": 4}

    def piece(successes, seed, holds, **changes):
        r = _report(successes, seed=seed)
        for e, h in zip(r["per_episode"], holds):
            e.update(index=e["seed"] - seed, max_reward=4 if e["success"] else 2, longest_hold=h)
        held = sum(h >= 10 for h in holds)
        return {**r, "checkpoint": "models/cube", "seconds": 60.0, "held_successes": held,
                "config": {**config, "seed": seed, "episodes": len(successes), **changes}}

    # The later seeds first: the merge orders episodes by seed.
    late = piece([True, True, False, False, True], 105, [12, 3, 0, 0, 10], workers=1)
    early = piece([True, False, False, True, True], 100, [10, 0, 0, 30, 9])
    merged = merge_reports([late, early], ["late.json", "early.json"])
    assert [e["seed"] for e in merged["per_episode"]] == list(range(100, 110))
    assert [e["index"] for e in merged["per_episode"]] == list(range(10))
    assert (merged["episodes"], merged["successes"], merged["success_rate"]) == (10, 6, 0.6)
    assert merged["ci95"] == [pytest.approx(0.3127, abs=1e-4), pytest.approx(0.8318, abs=1e-4)]
    assert merged["held_successes"] == 4 and merged["held_success_rate"] == 0.4     # holds >= 10: 10, 30, 12, 10
    assert merged["max_rewards"] == [4, 2, 2, 4, 4, 4, 4, 2, 2, 4]
    assert (merged["config"]["seed"], merged["config"]["episodes"], merged["seconds"]) == (100, 10, 120.0)
    assert merged["merged_from"] == ["late.json", "early.json"]
    # Paired like a single run.
    assert compare_reports(_report([True] * 10), merged).only_a == 4

    with pytest.raises(ConfigError, match="seed 104 is in both"):
        merge_reports([early, piece([True], 104, [0])], ["a", "b"])
    with pytest.raises(ConfigError, match="other settings \\(planner_candidates\\)"):
        merge_reports([early, piece([True], 110, [0], planner_candidates=0)], ["a", "b"])
    # A report written before a setting existed ran with its default, and merges with one that records it ...
    recorded = piece([True], 110, [0], clip_actions=True)
    assert merge_reports([early, recorded], ["a", "b"])["episodes"] == 6
    # ... but not with one that ran another value.
    with pytest.raises(ConfigError, match="other settings \\(clip_actions\\)"):
        merge_reports([early, piece([True], 110, [0], clip_actions=False)], ["a", "b"])
    with pytest.raises(ConfigError, match="checkpoint"):
        merge_reports([early, {**late, "checkpoint": "models/other"}], ["a", "b"])
    with pytest.raises(ConfigError, match="no per_episode"):
        merge_reports([early, {"task": "transfer_cube"}], ["a", "b"])

    for name, report in (("late.json", late), ("early.json", early)):
        (tmp_path / name).write_text(json.dumps(report))
    out = tmp_path / "all" / "merged.json"
    assert main(["sim", "merge", str(tmp_path / "late.json"), str(tmp_path / "early.json"), "--out", str(out)]) == 0
    assert "6/10 successes, rate 60.0%" in capsys.readouterr().out
    assert json.loads(out.read_text())["successes"] == 6
    assert main(["sim", "merge", str(tmp_path / "late.json"), "--out", str(out)]) == 2   # one report: nothing to merge


# --- the GIF's value strip -------------------------------------------------------------------------------
def test_scene_map_places_each_episode_where_its_seed_put_the_objects(tmp_path, capsys):
    from cosmos_policy_core.runtime.comparison import REWARD_COLOURS, scene_map
    from cosmos_policy_core.sim.tasks import MAX_REWARD, get_task

    assert len(REWARD_COLOURS) == MAX_REWARD + 1           # one colour per reward level of the sim's tasks

    successes = [i % 3 != 0 for i in range(12)]
    report = _report(successes, seed=500)
    for e in report["per_episode"]:
        e["max_reward"] = 4 if e["success"] else 2
    scenes = scene_map(report, "eval.json", bins=2)
    draws = [get_task("transfer_cube").sample_object_poses(500 + i)[0] for i in range(12)]
    np.testing.assert_allclose([p[0] for p in scenes.poses], [d[:3] for d in draws], atol=1e-4)
    assert scenes.x_edges == pytest.approx([0.0, 0.1, 0.2]) and scenes.y_edges == pytest.approx([0.4, 0.5, 0.6])
    cells, wins = np.zeros((2, 2), int), np.zeros((2, 2), int)
    for d, won in zip(draws, successes):
        j, i = int(d[1] >= 0.5), int(d[0] >= 0.1)
        cells[j, i] += 1
        wins[j, i] += won
    assert scenes.cell_episodes == cells.tolist() and scenes.cell_successes == wins.tolist()
    assert scenes.max_rewards == [4 if s else 2 for s in successes] and sum(scenes.successes) == 8
    lines = scenes.lines()
    assert lines[0].startswith("transfer_cube: 8/12 successes by where red_box lay") and len(lines) == 4
    assert lines[2].startswith("y 0.50-0.60") and lines[2].split()[-1] == f"{wins[1, 1]}/{cells[1, 1]}"
    report["per_episode"].reverse()                                  # the table is by seed, whatever the order
    assert scene_map(report, "eval.json", bins=2).poses == scenes.poses

    insertion = scene_map(_report([True, False], task="insertion"), "ins.json")
    assert insertion.objects == ("red_peg", "blue_socket")
    assert all(0.1 <= p[0][0] <= 0.2 and -0.2 <= p[1][0] <= -0.1 for p in insertion.poses)
    with pytest.raises(ConfigError, match="bins must be an integer >= 1"):
        scene_map(report, "eval.json", bins=0)
    with pytest.raises(ConfigError, match="no per_episode"):
        scene_map({"task": "transfer_cube"}, "empty.json")
    with pytest.raises(ConfigError, match="unknown sim task"):
        scene_map(_report([True], task="stacking"), "other.json")

    path, plot, out = tmp_path / "eval.json", tmp_path / "scenes.png", tmp_path / "scenes.json"
    path.write_text(json.dumps(report))
    assert main(["sim", "scenes", str(path), "--plot", str(plot), "--json", str(out)]) == 0
    assert "8/12 successes" in capsys.readouterr().out
    from PIL import Image

    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert sum(map(sum, json.loads(out.read_text())["cell_episodes"])) == 12


def test_failure_stages_count_a_stage_only_when_it_was_held(tmp_path, capsys):
    from cosmos_policy_core.runtime.comparison import failure_stages

    # Steps at reward 0..4 of each episode (seeds 300-305); a stage counts from 5 steps at its reward or above.
    steps = [[200, 0, 0, 0, 0],      # never touched the cube
             [190, 4, 6, 0, 0],      # touched 4 steps and lifted 6: held "lifts it" (10 steps at >= 1, 6 at >= 2)
             [193, 3, 4, 0, 0],      # 7 steps touched or lifted, 4 lifted: held "touches" only
             [150, 1, 49, 0, 0],     # lifted for 49 steps, the left finger never came
             [120, 0, 20, 4, 0],     # the left finger touched for 4 steps: not held
             [140, 0, 5, 0, 10]]     # a success: not a failure
    report = _report([False] * 5 + [True], seed=300)
    for e, n in zip(report["per_episode"], steps):
        e["reward_steps"] = n
    stages = failure_stages(report, "eval.json")
    assert stages.seeds == [[300], [302], [301, 303, 304], []]
    lines = stages.lines(show_seeds=2)
    assert lines[0] == "5 failures by the furthest stage held 5+ control steps:"
    assert lines[1] == '     1  not even "the right finger touches the cube" (seeds 300)'
    assert lines[3] == ('     3  "the right gripper lifts it", not "the left finger touches it" '
                        "(seeds 301, 303, ...)")
    assert failure_stages(report, "eval.json", min_steps=20).seeds == [[300, 301, 302], [], [303, 304], []]
    insertion = _report([False], task="insertion")
    insertion["per_episode"][0]["reward_steps"] = [100, 50, 100, 0, 0]
    assert failure_stages(insertion, "ins.json").lines()[3].endswith(
        '"both lift them", not "the peg touches the socket in the air" (seeds 100)')
    report["per_episode"][0].pop("reward_steps")
    with pytest.raises(ConfigError, match="seed 300 has no reward_steps"):
        failure_stages(report, "eval.json")
    with pytest.raises(ConfigError, match="min_steps must be an integer >= 1"):
        failure_stages(report, "eval.json", min_steps=0)

    # `sim scenes` prints them where the report has the steps, and the scenes alone where it does not.
    report["per_episode"][0]["reward_steps"] = steps[0]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(report))
    assert main(["sim", "scenes", str(path)]) == 0
    assert "5 failures by the furthest stage held" in capsys.readouterr().out
    report["per_episode"][0].pop("reward_steps")
    path.write_text(json.dumps(report))
    assert main(["sim", "scenes", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1/6 successes" in out and "furthest stage" not in out


def test_gif_value_strip_plots_each_chunks_value_over_time():
    gif = GifRecorder(tile=16, every=1, horizon=10)
    frame = {c: np.zeros((8, 8, 3), np.uint8) for c in CAMS}
    for step in range(10):
        value = {0: 1.0, 5: 0.0}.get(step)    # a chunk of value 1 at step 0, then one of value 0 at step 5
        gif.add(step, frame, None, value)
    assert gif.values == [(0, 1.0), (5, 0.0)]
    last = gif.frames[-1]
    assert last.shape == (2 * 16 + GifRecorder.STRIP_HEIGHT, 3 * 16, 3)
    strip = last[2 * 16:].astype(int)
    green = (strip[..., 1] > 150) & (strip[..., 0] < 120)
    rows = np.flatnonzero(green.any(axis=1))
    # value 1 is drawn at the strip's top row (1), value 0 at its bottom ((h - 3) + 1), each over its chunk's span
    assert rows.min() <= 2 and rows.max() >= GifRecorder.STRIP_HEIGHT - 3
    width = strip.shape[1]
    top_cols = np.flatnonzero(green[:3].any(axis=0))
    assert top_cols.min() <= 1 and top_cols.max() <= (width - 1) * 5 / 10 + 2   # value 1 only until step 5
    assert not green[:, : int((width - 1) * 5 / 10) - 2][-4:].any()               # value 0 only after step 5


# --- recording rollouts ------------------------------------------------------------------------------------
class _CameraEnv:
    """A stand-in sim: joints drift with the command, frames show the step number, reward 4 at step `win`."""

    def __init__(self, win: int | None):
        self.win = win

    def _obs(self):
        frames = {c: np.full((8, 8, 3), (self.i * 10 + k) % 256, np.uint8) for k, c in enumerate(CAMS)}
        return {"qpos": self.qpos.copy(), "images": frames}

    def reset(self, seed):
        self.i, self.max_reward, self.qpos = 0, 0, np.zeros(14)
        return self._obs()

    def step(self, command):
        self.qpos = 0.5 * self.qpos + 0.5 * np.asarray(command, float)
        self.i += 1
        reward = 4 if self.i == self.win else 0
        self.max_reward = max(self.max_reward, reward)
        return self._obs(), reward

    @property
    def success(self):
        return self.max_reward >= 4


class _RampPolicy:
    def act(self, observation, seed, num_steps=None, return_future_images=False):
        from types import SimpleNamespace

        return SimpleNamespace(actions=0.01 * np.arange(50)[:, None] * np.ones((1, 14)), value=0.25,
                               future_images=None)


def test_run_episode_records_observations_and_the_executed_commands():
    from cosmos_policy_core.runtime.execution import ExecutorConfig

    env, recorder = _CameraEnv(win=None), RolloutRecorder()
    cfg = EvalConfig(episodes=1, max_steps=12, execute_steps=5)
    result = run_episode(_RampPolicy(), env, ExecutorConfig.aloha(25, blend_steps=0), cfg, 0, recorder=recorder)
    ep = recorder.episode(CUBE, result.success, {"seed": result.seed})
    assert len(ep) == result.steps == 12 and not ep.success and ep.task == CUBE and ep.fps == 25.0
    # frames and joints are those observed before each step's command; the command moved the joints next
    assert [int(ep.images["cam_high"][t, 0, 0, 0]) for t in range(12)] == [10 * t for t in range(12)]
    np.testing.assert_allclose(ep.qpos[1:], 0.5 * ep.qpos[:-1] + 0.5 * ep.action[:-1], atol=1e-6)
    assert np.ptp(ep.action[:, 0]) > 0          # the ramp was executed, not the hold pose


def _recorded_episode(i: int, success: bool, T: int = 6) -> Episode:
    rng = np.random.default_rng(i)
    return Episode(qpos=rng.uniform(-0.1, 0.1, (T, 14)).astype(np.float32),
                   action=rng.uniform(-0.1, 0.1, (T, 14)).astype(np.float32),
                   images={c: rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8) for c in CAMS},
                   task=CUBE, success=success, sim=True, attrs={"seed": 100 + i})


def test_rollout_sink_writes_episodes_in_order_and_nothing_when_interrupted(tmp_path):
    from cosmos_policy_core.runtime.rollout import EpisodeResult

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "rollouts"
    sink = _RolloutSink(out, ckpt, None)
    for i in (2, 0, 1):    # workers finish out of order
        sink.put(EpisodeResult(i, 100 + i, i == 1, 4 if i == 1 else 0, 6, 1, 0.0), _recorded_episode(i, i == 1))
    assert not out.exists()                  # nothing appears before the commit
    summary = sink.commit()
    assert summary == {"dir": str(out), "written": 3, "skipped": 0, "successes": 1}
    files = load_episode_dir(out)
    assert [f.name for f in files] == ["episode_0", "episode_1", "episode_2"]
    assert [f.attrs["seed"] for f in files] == [100, 101, 102] and [f.success for f in files] == [False, True, False]
    assert files[0].task == CUBE and files[0].frame("cam_high", 0).shape == (16, 16, 3)   # JPEG, decoded
    assert json.loads((out / "tasks.json").read_text())["tasks"] == [CUBE]

    with pytest.raises(ConfigError, match="already holds episodes"):
        _RolloutSink(out, ckpt, None)
    interrupted = _RolloutSink(tmp_path / "cut", ckpt, None)
    interrupted.put(EpisodeResult(0, 100, False, 0, 6, 1, 0.0), _recorded_episode(0, False))
    interrupted.writer.abort()               # what evaluate_checkpoint does on an error or Ctrl-C
    assert not (tmp_path / "cut").exists() and not any(p.name.startswith(".cut") for p in tmp_path.iterdir())
    with pytest.raises(ConfigError):
        _RolloutSink(ckpt / "inside", ckpt, None)   # never into the checkpoint


# --- planning checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("policy") / "tiny", image_size=64, text_len=16,
                                   tasks=(CUBE,))


def _planning_copy(policy_dir: Path, out: Path, value_role: str = "value_v_s") -> Path:
    """The policy with other DiT weights and a planning run's recorded samples: a stand-in planning fine-tune."""
    ckpt = load_checkpoint_dir(policy_dir)
    g = torch.Generator().manual_seed(5)
    ckpt.model_state = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                        for k, v in ckpt.model_state.items()}
    ckpt.metadata = {"train_config": {"samples": {"value_role": value_role}},
                     "data": {"role_shares": {"policy": 0.1, "world_model": 0.45, value_role: 0.45}}}
    return save_checkpoint_dir(out, ckpt)


def test_planning_value_mode_follows_the_trained_role(policy_dir, tmp_path, caplog):
    from cosmos_policy_core.runtime.planner import planning_value_mode

    assert planning_value_mode(_planning_copy(policy_dir, tmp_path / "plan")) == "V(s')"
    assert planning_value_mode(_planning_copy(policy_dir, tmp_path / "base", "value_v_sas")) == "V(s,a,s')"
    assert planning_value_mode(policy_dir) == "V(s')"           # no training recorded: the reference's model
    with caplog.at_level("WARNING"):
        assert planning_value_mode(SHIPPED) == "V(s,a,s')"      # trained on policy samples only: warned
    assert "never trained its value role" in caplog.text
    with pytest.raises(CheckpointError):
        planning_value_mode(tmp_path)


def test_the_shipped_planning_checkpoint_fits_the_shipped_policy_and_values_the_future_state():
    from cosmos_policy_core.runtime.planner import planning_value_mode
    from cosmos_policy_core.runtime.rollout import _load

    planning = SHIPPED.parent / f"{SHIPPED.name}_planning"
    assert planning_value_mode(planning) == "V(s')"
    shares = json.loads((planning / "config.json").read_text())["metadata"]["data"]["role_shares"]
    assert shares == {"policy": 0.1, "world_model": 0.45, "value_v_s": 0.45}
    policy, planner = _load(SHIPPED, EvalConfig(planner_candidates=4, planning_checkpoint=str(planning),
                                                execution="whole_chunks"), False)
    assert policy.planning_denoiser is not None and planner.config.value_mode == "V(s')"


def test_a_planning_checkpoint_must_share_the_policys_vae_statistics_and_layout(policy_dir, tmp_path):
    from cosmos_policy_core.runtime.policy import CosmosPolicy

    good = _planning_copy(policy_dir, tmp_path / "plan")
    policy = CosmosPolicy.from_checkpoint(policy_dir, planning_checkpoint=good)
    assert policy.planning_denoiser is not None
    other = build_random_checkpoint(tmp_path / "other", image_size=64, text_len=16, tasks=(CUBE,), seed=3)
    with pytest.raises(CheckpointError, match="another VAE"):
        CosmosPolicy.from_checkpoint(policy_dir, planning_checkpoint=other)
    ckpt = load_checkpoint_dir(good)
    ckpt.stats = load_checkpoint_dir(other).stats
    save_checkpoint_dir(tmp_path / "stats", ckpt)
    with pytest.raises(CheckpointError, match="other statistics.*--config planning --init"):
        CosmosPolicy.from_checkpoint(policy_dir, planning_checkpoint=tmp_path / "stats")


def test_sim_eval_records_every_episode_as_a_dataset(policy_dir, tmp_path, capsys):
    out, rollouts = tmp_path / "eval.json", tmp_path / "rollouts"
    code = main(["sim", "eval", "--checkpoint", str(policy_dir), "--episodes", "2", "--seed", "7", "--steps", "1",
                 "--max-steps", "3", "--execute-steps", "3", "--json", str(out), "--record-rollouts", str(rollouts),
                 "--no-clip", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["config"]["clip_actions"] is False and ", actions not clipped" in printed
    assert report["rollouts"] == {"dir": str(rollouts), "written": 2, "skipped": 0, "successes": 0}
    assert "rollouts: 2 episodes (0 successes) written to" in printed
    files = load_episode_dir(rollouts)
    assert [len(f) for f in files] == [e["steps"] for e in report["per_episode"]] == [3, 3]
    assert [f.attrs["seed"] for f in files] == [7, 8] and [f.success for f in files] == [False, False]
    assert files[0].frame("cam_high", 0).shape == (224, 224, 3) and files[0].task == CUBE
    assert files[0].attrs["checkpoint"] == str(policy_dir)
    # An existing rollout directory is refused before anything runs.
    assert main(["sim", "eval", "--checkpoint", str(policy_dir), "--episodes", "1", "--record-rollouts",
                 str(rollouts), "--no-progress"]) == 2


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_rollout_that_cannot_be_written_stops_the_eval_and_leaves_no_directory(policy_dir, tmp_path, monkeypatch,
                                                                                 workers):
    from cosmos_policy_core.runtime.rollout import evaluate_checkpoint

    def full_disk(self, result, episode):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_RolloutSink, "put", full_disk)
    cfg = EvalConfig(episodes=2, num_steps=1, max_steps=2, execute_steps=2)
    with pytest.raises(OSError, match="No space left"):   # with workers, raised here instead of hanging the pool
        evaluate_checkpoint(policy_dir, cfg, progress=False, workers=workers, record_dir=tmp_path / "rollouts")
    assert not (tmp_path / "rollouts").exists() and [p.name for p in tmp_path.iterdir()] == []


def test_recording_with_workers_keeps_no_written_episode_in_memory(policy_dir, tmp_path, monkeypatch):
    """Each recorded episode holds its frames; hundreds kept until the eval ends would exhaust the memory."""
    import weakref

    from cosmos_policy_core.runtime.rollout import evaluate_checkpoint

    put, written, alive_at_put = _RolloutSink.put, [], []

    def watched(self, result, episode):
        put(self, result, episode)
        alive_at_put.append(sum(ref() is not None for ref in written))
        written.append(weakref.ref(episode))

    monkeypatch.setattr(_RolloutSink, "put", watched)
    cfg = EvalConfig(episodes=8, num_steps=1, max_steps=2, execute_steps=2)
    report = evaluate_checkpoint(policy_dir, cfg, progress=False, workers=2, record_dir=tmp_path / "rollouts")
    assert report.rollouts["written"] == 8 and len(alive_at_put) == 8
    assert max(alive_at_put) <= 2, alive_at_put   # at most the episodes of jobs finishing together


def test_sim_eval_loads_the_planning_checkpoint_with_its_value_role(policy_dir, tmp_path):
    from cosmos_policy_core.runtime.rollout import _load

    plan = _planning_copy(policy_dir, tmp_path / "plan", "value_v_sas")
    policy, planner = _load(policy_dir, EvalConfig(planner_candidates=3, planning_checkpoint=str(plan)), False)
    assert policy.planning_denoiser is not None and planner.config.value_mode == "V(s,a,s')"
    assert planner.config.num_candidates == 3
    _, planner = _load(policy_dir, EvalConfig(planner_candidates=2, planning_checkpoint=str(plan),
                                              value_mode="V(s')"), False)
    assert planner.config.value_mode == "V(s')"
    with pytest.raises(ConfigError, match="planner_candidates"):
        EvalConfig(planning_checkpoint=str(plan))
    # Explicit ensembles reach the planner; the others keep the reference's.
    _, planner = _load(policy_dir, EvalConfig(planner_candidates=2, world_model_samples=1, value_samples=2), False)
    assert (planner.config.world_model_samples, planner.config.value_samples) == (1, 2)
    _, planner = _load(policy_dir, EvalConfig(planner_candidates=2, value_samples=1), False)
    assert (planner.config.world_model_samples, planner.config.value_samples) == (3, 1)
    # Action clipping is on unless asked off (sim eval --no-clip).
    assert _load(policy_dir, EvalConfig(), False)[0].config.clip_actions is True
    assert _load(policy_dir, EvalConfig(clip_actions=False, num_steps=2), False)[0].config.num_steps == 2
    assert _load(policy_dir, EvalConfig(clip_actions=False), False)[0].config.clip_actions is False
    with pytest.raises(ConfigError, match="world_model_samples sets the planner's ensemble"):
        EvalConfig(world_model_samples=1)
    with pytest.raises(ConfigError, match="value_samples .* got 0"):
        EvalConfig(planner_candidates=2, value_samples=0)


@pytest.mark.slow  # best of 2 with the reference's ensembles at every query: minutes on a loaded 2-core machine
def test_sim_eval_plans_with_the_planning_checkpoint_and_records_rollouts(policy_dir, tmp_path, capsys):
    """Two short closed-loop episodes in MuJoCo (temporal ensembling, best of 2 at every query): the report names
    the planning checkpoint and its value role, the GIF carries the value strip, the rollouts are a dataset."""
    plan = _planning_copy(policy_dir, tmp_path / "plan")
    out, gif, rollouts = tmp_path / "eval.json", tmp_path / "r.gif", tmp_path / "rollouts"
    code = main(["sim", "eval", "--checkpoint", str(policy_dir), "--episodes", "2", "--seed", "7", "--steps", "1",
                 "--max-steps", "6", "--execution", "temporal_ensemble", "--execute-steps", "3",
                 "--planner-candidates", "2", "--planning-checkpoint", str(plan), "--json", str(out),
                 "--video", str(gif), "--record-rollouts", str(rollouts), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"planning: best of 2 at every query by V(s') of {plan}, 3 world-model x 5 value samples" in printed
    report = json.loads(out.read_text())
    assert report["config"]["planning_checkpoint"] == str(plan) and report["config"]["value_mode"] == "V(s')"
    assert [e["seed"] for e in report["per_episode"]] == [7, 8]
    assert all(len(e["values"]) == e["queries"] == 2 for e in report["per_episode"])
    assert report["rollouts"]["written"] == 2
    files = load_episode_dir(rollouts)
    assert [len(f) for f in files] == [e["steps"] for e in report["per_episode"]] == [6, 6]
    assert [f.attrs["seed"] for f in files] == [7, 8] and files[0].frame("cam_high", 0).shape == (224, 224, 3)
    assert [f.success for f in files] == [e["success"] for e in report["per_episode"]]
    from PIL import Image

    with Image.open(gif) as im:
        assert im.size == (3 * 112, 2 * 112 + GifRecorder.STRIP_HEIGHT)
    # An existing rollout directory is refused before anything runs.
    assert main(["sim", "eval", "--checkpoint", str(policy_dir), "--episodes", "1", "--record-rollouts",
                 str(rollouts), "--no-progress"]) == 2


# --- training the planning checkpoint, and scoring it -------------------------------------------------------
def _episode(seed: int, T: int, success: bool, stats) -> Episode:
    rng = np.random.default_rng(seed)
    lo, hi = stats.proprio_min, stats.proprio_max
    qpos = (lo + (hi - lo) * np.clip(0.3 + 0.4 * np.linspace(0, 1, T)[:, None] * rng.uniform(size=14), 0, 1))
    images = {c: np.repeat(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), T, axis=0) for c in CAMS}
    return Episode(qpos=qpos.astype(np.float32), action=qpos.astype(np.float32), images=images, task=CUBE,
                   success=success, sim=True)


@pytest.mark.slow  # two tiny training runs and a scoring pass: about a minute on a loaded 2-core machine
def test_planning_fine_tune_from_a_trained_policy_then_score(policy_dir, tmp_path, capsys):
    stats = load_checkpoint_dir(policy_dir).stats
    demos, rollouts = tmp_path / "demos", tmp_path / "rollouts"
    for i in range(2):
        write_episode_hdf5(demos / f"episode_{i}.hdf5", _episode(i, 20, True, stats))
    for i, success in enumerate((True, False)):
        write_episode_hdf5(rollouts / f"episode_{i}.hdf5", _episode(10 + i, 60, success, stats), compress=True)

    # A policy run of the tiny preset records its config; the planning fine-tune copies its network from it.
    assert main(["train", "--data", str(demos), "--config", "tiny", "--steps", "1", "--out", str(tmp_path / "p"),
                 "--vae", str(policy_dir), "--no-progress"]) == 0
    policy = tmp_path / "p" / "model"
    assert main(["train", "--data", str(demos), "--config", "planning", "--init", str(policy), "--out",
                 str(tmp_path / "plan"), "--no-progress"]) == 2        # no --rollouts: refused
    # Demos beyond the policy's statistics: the planning model still normalizes as the policy does.
    wider = tmp_path / "wider"
    for i in range(2):
        ep = _episode(i, 20, True, stats)
        ep.qpos[-1, 0] = ep.action[-1, 0] = stats.proprio_max[0] + 0.5 * (stats.proprio_max[0] - stats.proprio_min[0])
        write_episode_hdf5(wider / f"episode_{i}.hdf5", ep)
    assert main(["train", "--data", str(wider), "--rollouts", str(rollouts), "--config", "planning", "--init",
                 str(policy), "--steps", "2", "--out", str(tmp_path / "plan"), "--no-progress"]) == 0
    capsys.readouterr()
    plan = load_checkpoint_dir(tmp_path / "plan" / "model")
    samples = plan.metadata["train_config"]["samples"]
    assert samples["value_role"] == "value_v_s" and samples["demo_prob"] == 0.1
    assert not samples["treat_demos_as_success_rollouts"]
    assert plan.metadata["data"]["rollout_episodes"] == 2 and plan.metadata["step"] == 2
    assert plan.metadata["data"]["role_shares"]["value_v_s"] > 0.3
    assert plan.stats.to_json_dict() == load_checkpoint_dir(policy).stats.to_json_dict()

    out = tmp_path / "scores.json"
    assert main(["sim", "score-planning", "--checkpoint", str(policy), "--planning-checkpoint",
                 str(tmp_path / "plan" / "model"), "--rollouts", str(rollouts), "--world-model-steps", "1",
                 "--value-steps", "1", "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "scored by V(s')" in printed and "value AUROC" in printed
    scores = json.loads(out.read_text())
    assert scores["samples"] == 2 and scores["episodes"] == 2 and scores["successes"] == 1
    assert scores["value_auroc"] in (0.0, 0.5, 1.0)          # one success against one failure
    # The rollouts' frames never change: copying the current frame is exact.
    assert scores["copy_psnr_db"] == "inf" and all(s["mse_copy"] == 0 for s in scores["per_step"])
    assert all(0 <= s["value_predicted"] <= 1 for s in scores["per_step"])


def test_planning_config_is_the_reference_planning_recipe_on_the_policys_network(policy_dir):
    from cosmos_policy_core.train.config import TrainConfig

    cfg = TrainConfig.for_planning(SHIPPED, steps=1000)
    assert cfg.model == load_checkpoint_dir(SHIPPED).model_config
    assert (cfg.image_size, cfg.text_length, cfg.samples.step_stride) == (64, 8, 5)
    s = cfg.samples
    assert (s.demo_prob, s.success_prob, s.world_model_prob, s.value_role) == (0.1, 0.5, 0.5, "value_v_s")
    assert not s.treat_demos_as_success_rollouts and s.first_steps_prob == 0
    assert cfg.max_steps == 1000 and cfg.schedule.warmup_steps[0] == 100 and cfg.schedule.cycle_lengths[0] == 1000
    assert cfg.latent_cache == "memory" and cfg.action_loss_weight == 1.0 and cfg.keep_init_stats
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="records no training config"):
        TrainConfig.for_planning(policy_dir)


def test_keep_init_stats_normalizes_as_the_init_checkpoint_whatever_the_demos(policy_dir, tmp_path, caplog):
    from cosmos_policy_core.train.data import resolve_stats

    layout = replace(LatentLayout.aloha(), image_size=64)
    kept = load_checkpoint_dir(policy_dir).stats
    ep = _episode(0, 20, True, kept)
    ep.action[:] = np.clip(ep.action, kept.actions_min, kept.actions_max)
    ep.qpos[:, 1] = kept.proprio_max[1] + 1.0                     # far outside: the plain rule recomputes
    demo = [EpisodeFile(write_episode_hdf5(tmp_path / "episode_0.hdf5", ep))]
    recomputed, source = resolve_stats(None, demo, layout, policy_dir)
    assert source.startswith("computed") and recomputed.to_json_dict() != kept.to_json_dict()
    with caplog.at_level("WARNING", logger="cosmos_policy_core.train.data"):
        same, source = resolve_stats(None, demo, layout, policy_dir, keep_init=True)
    assert same.to_json_dict() == kept.to_json_dict() and source == str(policy_dir / "stats.json")
    assert "proprio dims" in caplog.text and "clamped" not in caplog.text   # proprio is never clamped

    ep.action[:, 0] = kept.actions_max[0] + 1.0                   # targets the deployed policy's clamp would cut
    caplog.clear()
    demo = [EpisodeFile(write_episode_hdf5(tmp_path / "episode_1.hdf5", ep))]
    with caplog.at_level("WARNING", logger="cosmos_policy_core.train.data"):
        resolve_stats(None, demo, layout, policy_dir, keep_init=True)
    assert "actions dims ['0 (left_waist)']" in caplog.text and "clamped" in caplog.text and "--no-clip" in caplog.text
    with pytest.raises(ConfigError, match="--init"):
        resolve_stats(None, demo, layout, None, keep_init=True)


def test_rollout_latents_are_cached_apart_from_demos_of_the_same_name(tmp_path):
    stats = aloha_like_stats()
    for d in ("demos", "a", "b"):
        write_episode_hdf5(tmp_path / d / "episode_0.hdf5", _episode(0, 20, d != "b", stats))
    demos = load_episode_dir(tmp_path / "demos")
    rollouts = [EpisodeFile(tmp_path / "a" / "episode_0.hdf5"), EpisodeFile(tmp_path / "b" / "episode_0.hdf5")]
    builder = SampleBuilder(replace(LatentLayout.aloha(), image_size=64), stats, demos, rollouts,
                            SampleConfig(treat_demos_as_success_rollouts=False))
    keys = {builder.key(SampleSpec(src, "world_model", 0, 5)) for src in ("demo", "success_rollout", "failure_rollout")}
    assert len(keys) == 3 and ("episode_0", 5) in keys


def test_the_documented_planning_commands_parse():
    import shlex

    from cosmos_policy_core.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = text[text.index("## 8. Planning"):]
    block = section[section.index("```bash"):section.index("```", section.index("```bash") + 7)]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("cosmos-aloha ")]
    assert len(commands) == 7
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert callable(args.func), command


def test_a_gripper_squeezed_past_closed_in_the_sim_is_recorded_and_other_units_are_not():
    """The sim's gripper reads about -0.54 while it squeezes the cube; such rollouts (often the failures) must
    be kept, while values in other units are still refused."""
    from cosmos_policy_core.data.episode import check_joint_ranges
    from cosmos_policy_core.robot.aloha import START_ARM_POSE

    qpos = np.tile(np.array([*START_ARM_POSE, 0.5] * 2, dtype=np.float32), (5, 1))
    qpos[2, 6] = -0.54
    check_joint_ranges(qpos, qpos, "rollout")
    qpos[3, 13] = 850.0                                    # a raw gripper reading in motor ticks
    with pytest.raises(DataError, match="right_gripper is 850 at step 3"):
        check_joint_ranges(qpos, qpos, "rollout")
