"""`train-vae`, the VAE fallback: it learns, saves a loadable VAE, and honours its time limit."""
from __future__ import annotations

import json

import numpy as np
import torch

from cosmos_policy_core.data.episode import Episode, write_episode_hdf5
from cosmos_policy_core.nn.wan_vae import VAEConfig
from cosmos_policy_core.train.vae import VAETrainConfig, load_vae, train_vae

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def _dataset(root, n=2, T=12, size=32):
    # Smooth images (a coloured square on grey): learnable in a few dozen steps.
    for i in range(n):
        images = {}
        for c, cam in enumerate(CAMS):
            frames = np.full((T, size, size, 3), 96, np.uint8)
            for t in range(T):
                x = (4 + 2 * t + 3 * c + i) % (size - 8)
                frames[t, 8:16, x:x + 8] = (200, 40, 40)
            images[cam] = frames
        qpos = np.zeros((T, 14), np.float32)
        write_episode_hdf5(root / f"episode_{i}.hdf5", Episode(qpos=qpos, action=qpos, images=images, task="t"))
    return root


def test_train_vae_learns_saves_and_stops_at_its_time_limit(tmp_path):
    data = _dataset(tmp_path / "data")
    cfg = VAETrainConfig(vae=VAEConfig(dim=4, num_res_blocks=1), steps=60, batch_size=2, image_size=32,
                         lr=3e-3, log_every=1)
    result = train_vae(data, tmp_path / "vae", cfg, progress=False, device="cpu")
    l1 = [row["l1"] for row in result["history"]]
    assert result["steps"] == 60 and np.mean(l1[-5:]) < 0.6 * np.mean(l1[:5]), l1
    vae = load_vae(tmp_path / "vae")
    assert json.loads((tmp_path / "vae" / "vae_config.json").read_text())["metadata"]["steps"] == 60
    clip = torch.zeros(1, 3, 5, 32, 32)
    assert vae.encode(clip).shape == (1, 16, 2, 4, 4)

    stopped = train_vae(data, tmp_path / "vae2", cfg, progress=False, device="cpu", time_limit=0.0)
    assert stopped["steps"] == 1  # the limit is checked before each step after the first


def test_vae_lr_anneals_over_whichever_budget_ends_first():
    from cosmos_policy_core.train.vae import vae_lr_factor

    assert vae_lr_factor(0, 100) == 1.0
    assert abs(vae_lr_factor(50, 100) - 0.55) < 1e-12
    assert abs(vae_lr_factor(100, 100) - 0.1) < 1e-12
    # 10 of 1000 steps but half the time limit gone: half-way down the cosine
    assert abs(vae_lr_factor(10, 1000, elapsed_s=30.0, time_limit=60.0) - 0.55) < 1e-12
    assert abs(vae_lr_factor(10, 1000, elapsed_s=90.0, time_limit=60.0) - 0.1) < 1e-12
    assert vae_lr_factor(10, 1000, elapsed_s=1.0, time_limit=None) == vae_lr_factor(10, 1000)
