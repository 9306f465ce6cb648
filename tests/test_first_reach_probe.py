"""benchmarks/first_reach_probe.py on tiny synthetic demos: runs end to end, R² as defined, bad input refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cosmos_policy_core.data.episode import Episode, write_episode_hdf5
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.nn.wan_vae import WanVAE
from cosmos_policy_core.train.vae import save_vae_dir


@pytest.fixture
def probe(load_benchmark):
    return load_benchmark("first_reach_probe")


@pytest.fixture
def demos(tmp_path):
    """5 episodes of 3 steps: a red square in the top view at a per-episode place, the first action follows it."""
    rng = np.random.default_rng(0)
    for i in range(5):
        T = 3
        cams = ("cam_high", "cam_left_wrist", "cam_right_wrist")
        images = {cam: np.full((T, 64, 64, 3), 60, np.uint8) for cam in cams}
        images["cam_high"][:, 8 + 10 * i:18 + 10 * i, 20:30] = (255, 0, 0)
        qpos = np.zeros((T, 14), np.float32)
        action = np.tile(rng.normal(size=14).astype(np.float32), (T, 1))
        action[:, 7] = 0.1 * i
        write_episode_hdf5(tmp_path / "demos" / f"episode_{i}.hdf5", Episode(qpos=qpos, action=action, images=images))
    torch.manual_seed(0)
    save_vae_dir(tmp_path / "vae", WanVAE.tiny())
    return tmp_path


def test_r2_is_one_minus_sse_over_the_spread_around_the_mean(probe):
    target = torch.tensor([[[0.0]], [[1.0]], [[2.0]]])
    assert probe.r2_across_scenes(target, target) == pytest.approx(1.0)
    assert probe.r2_across_scenes(torch.full_like(target, 1.0), target) == pytest.approx(0.0)
    # errors 0.5, 0, 0.5 -> SSE 0.5 over SS 2
    assert probe.r2_across_scenes(target + torch.tensor([[[0.5]], [[0.0]], [[-0.5]]]), target) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="undefined"):
        probe.r2_across_scenes(target, torch.ones_like(target))


def test_probe_runs_and_reports_every_evaluation(probe, demos):
    out = demos / "probe.json"
    report = probe.main(["--data", str(demos / "demos"), "--vae", str(demos / "vae"), "--image-size", "64",
                         "--held-out", "episode_3", "episode_4", "--iters", "4", "--eval-every", "2", "--batch", "4",
                         "--width", "32", "--blocks", "1", "--heads", "1", "--threads", "1",
                         "--r2-actions", "5", "--contrast-gain", "3", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["held_out"] == ["episode_3", "episode_4"] and saved["train_episodes"] == 3
    assert [row["iter"] for row in saved["history"]] == [0, 2, 4]
    for row in report["history"]:
        assert np.isfinite([row["r2_train"], row["r2_held_out"], row["l1_train"], row["l1_held_out"]]).all()
    # the loss goes down on the training samples within a few steps
    assert saved["history"][-1]["l1_train"] < saved["history"][0]["l1_train"]


def test_bad_requests_are_refused(probe, demos):
    base = ["--data", str(demos / "demos"), "--vae", str(demos / "vae"), "--iters", "0", "--threads", "1",
            "--image-size", "64"]
    with pytest.raises(SystemExit):
        probe.main([*base, "--held-out", "episode_99"])
    with pytest.raises(SystemExit):
        probe.main([*base, "--held-out", "episode_4"])      # one held-out scene: no R² across scenes
    with pytest.raises(ConfigError, match="step 7"):
        probe.main([*base, "--steps", "7"])
    with pytest.raises(ConfigError, match="smaller than the image size 128"):   # the demos are 64²
        probe.main([*base, "--image-size", "128"])
