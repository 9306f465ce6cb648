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


def test_layout_clips_switch_camera_between_groups_of_four_identical_frames(tmp_path):
    from cosmos_policy_core.data.episode import load_episode_dir
    from cosmos_policy_core.train.vae import BLACK, _clip_batch

    episodes = load_episode_dir(_dataset(tmp_path / "data"))
    cfg = VAETrainConfig(batch_size=64, image_size=32, clip_frames=13, clip_mode="layout", blank_prob=0.25)
    clips, record = _clip_batch(episodes, CAMS, cfg, np.random.default_rng(0))
    assert clips.shape == (64, 3, 13, 32, 32) and record.shape == (64, 13, 2)
    assert (clips[:, :, 0] == -1).all() and (record[:, 0, 0] == BLACK).all()   # the black first frame
    groups = clips[:, :, 1:].reshape(64, 3, 3, 4, 32, 32)              # B, C, group, copy, H, W
    assert (groups == groups[:, :, :, :1]).all()                       # each group is 4 copies
    black = (groups[:, :, :, 0] == -1).flatten(3).all(3).all(1)        # B, group
    assert 0.1 < float(black.float().mean()) < 0.4                     # blank_prob of the groups
    cams = record[:, 1:, 0].reshape(64, 3, 4)
    assert ((cams == BLACK) == black.numpy()[:, :, None]).all() and (cams == cams[:, :, :1]).all()
    assert (record[:, :, 1] == record[:, :1, 1]).all()                 # one step per clip
    # the record is what the clip shows: each non-black group is that camera's frame at that step
    for b in range(8):
        for g in range(3):
            if cams[b, g, 0] != BLACK:
                expected = [torch.from_numpy(ep.frame(CAMS[cams[b, g, 0]], record[b, 0, 1])).permute(2, 0, 1)
                            .float() / 127.5 - 1 for ep in episodes]
                assert any(torch.equal(groups[b, :, g, 0], e) for e in expected)
    assert any(len(set(cams[b, :, 0])) > 1 for b in range(64) if not black[b].any())   # camera switches


def test_camera_clips_record_their_camera_and_steps(tmp_path):
    from cosmos_policy_core.data.episode import load_episode_dir
    from cosmos_policy_core.train.vae import BLACK, _clip_batch

    episodes = load_episode_dir(_dataset(tmp_path / "data", T=20))
    cfg = VAETrainConfig(batch_size=32, image_size=32, clip_frames=5, blank_prob=0.5)
    clips, record = _clip_batch(episodes, CAMS, cfg, np.random.default_rng(3))
    for b in range(32):
        shown = record[b, :, 0][record[b, :, 0] != BLACK]
        assert len(set(shown)) <= 1                                   # one camera per clip
        assert (np.diff(record[b, :, 1]) == 2).all() or record[b, -1, 1] == 19   # every other step
        assert ((record[b, :, 0] == BLACK) == (clips[b] == -1).transpose(0, 1).flatten(1).all(1).numpy()).all()


def test_foreground_weights_single_out_what_differs_from_that_camera_and_time():
    from cosmos_policy_core.train.vae import BLACK, foreground_weights

    # two cameras x two 10-step buckets of mean images
    means = torch.stack([torch.stack([torch.full((3, 8, 8), -0.25), torch.full((3, 8, 8), 0.0)]),
                         torch.stack([torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 0.5)])])
    video = torch.full((1, 3, 4, 8, 8), -0.25)
    video[:, :, 0] = -1.0                      # a black frame
    video[:, :, 1, 2, 3] = 0.75                # one pixel of an object on camera 0's background at step 3
    video[:, :, 2] = 0.5                       # camera 1 at step 4: its mean image
    video[:, :, 3] = 0.0                       # camera 0 at step 27: past the last bucket -> bucket 1
    record = np.array([[(BLACK, 3), (0, 3), (1, 4), (0, 27)]])
    w = foreground_weights(video, record, means, 4.0, bucket=10)
    assert w.shape == (1, 1, 4, 8, 8)
    assert torch.allclose(w[0, 0, 0], torch.ones(8, 8))                   # black: weight 1
    assert abs(float(w[0, 0, 1, 2, 3]) - 5.0) < 1e-6                      # 1 + 4 * |0.75 - (-0.25)|
    assert float(w[0, 0, 1].sum()) == 5.0 + 63                            # the rest is background
    assert torch.allclose(w[0, 0, 2], torch.ones(8, 8))                   # camera 1's mean
    assert torch.allclose(w[0, 0, 3], torch.ones(8, 8))                   # bucket 1's mean, not bucket 0's


def test_camera_mean_images_are_per_camera_and_step_bucket(tmp_path):
    from cosmos_policy_core.data.episode import load_episode_dir
    from cosmos_policy_core.train.vae import camera_mean_images

    episodes = load_episode_dir(_dataset(tmp_path / "data", T=12))
    means = camera_mean_images(episodes, CAMS, 32, bucket=5, frames_per_bucket=200)
    assert means.shape == (3, 3, 3, 32, 32)                               # 12 steps -> buckets 0-4, 5-9, 10-11
    assert float(means.min()) >= -1 and float(means.max()) <= 1
    # the square moves with the step, so the buckets' means differ, and the cameras' (offset squares) too
    assert not torch.allclose(means[0, 0], means[0, 2]) and not torch.allclose(means[0, 0], means[1, 0])
    exact = torch.stack([torch.from_numpy(ep.frame("cam_high", t)).float() for ep in episodes for t in (10, 11)])
    assert torch.allclose(means[0, 2], (exact / 127.5 - 1).mean(0).permute(2, 0, 1), atol=0.08)


def test_weighted_reconstruction_loss_counts_the_weighted_pixels_more():
    from cosmos_policy_core.train.vae import vae_losses
    from cosmos_policy_core.nn.wan_vae import WanVAE

    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=4, num_res_blocks=1))
    cfg = VAETrainConfig(kl_weight=0.0)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        plain = vae_losses(vae, video, cfg)
        ones = vae_losses(vae, video, cfg, torch.ones(1, 1, 5, 16, 16))
    assert torch.allclose(plain["l1"], ones["l1"]) and torch.allclose(plain["l2"], ones["l2"])
    with torch.no_grad():
        err = (vae.decode(vae.encode(video)) - video).abs().mean(1, keepdim=True)   # B, 1, T, H, W
        w = 1.0 + 100.0 * (err >= err.flatten().quantile(0.9))    # weigh the worst 10 % of pixels
        weighted = vae_losses(vae, video, cfg, w)
    assert float(weighted["l1"]) > 1.5 * float(plain["l1"])


def test_train_vae_fine_tunes_from_init_with_layout_clips_and_foreground_weights(tmp_path):
    data = _dataset(tmp_path / "data")
    cfg = VAETrainConfig(vae=VAEConfig(dim=4, num_res_blocks=1), steps=3, batch_size=2, image_size=32, lr=1e-3)
    train_vae(data, tmp_path / "base", cfg, progress=False, device="cpu")
    tuned_cfg = VAETrainConfig(vae=VAEConfig.tiny(), steps=3, batch_size=2, image_size=32, clip_frames=9,
                               clip_mode="layout", foreground_weight=10.0, lr=1e-3)
    result = train_vae(data, tmp_path / "tuned", tuned_cfg, progress=False, device="cpu", init=tmp_path / "base")
    base, tuned = load_vae(tmp_path / "base"), load_vae(tmp_path / "tuned")
    assert tuned.config == base.config                              # the init's architecture, not cfg.vae
    meta = json.loads((tmp_path / "tuned" / "vae_config.json").read_text())["metadata"]
    assert meta["init"] == str(tmp_path / "base") and result["steps"] == 3
    moved = [not torch.equal(a, b) for a, b in zip(base.state_dict().values(), tuned.state_dict().values())]
    assert any(moved)


def test_vae_train_config_rejects_bad_clip_modes_and_weights():
    import pytest

    from cosmos_policy_core.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_mode"):
        VAETrainConfig(clip_mode="video")
    with pytest.raises(ConfigError, match="at least one group"):
        VAETrainConfig(clip_mode="layout", clip_frames=1)
    with pytest.raises(ConfigError, match="foreground_weight"):
        VAETrainConfig(foreground_weight=-1.0)
    with pytest.raises(ConfigError, match="foreground_bucket"):
        VAETrainConfig(foreground_bucket=0)
    with pytest.raises(ConfigError, match="object_scenes"):
        VAETrainConfig(object_scenes=1)
    with pytest.raises(ConfigError, match="object_fraction"):
        VAETrainConfig(object_scenes=8, object_fraction=0.0)
    with pytest.raises(ConfigError, match="object_weight"):
        VAETrainConfig(object_scenes=8, object_weight=-1.0)
    with pytest.raises(ConfigError, match="clip_frames"):
        VAETrainConfig(object_scenes=8, clip_frames=1)


def _object_scenes(n=4, size=16):
    """n scenes of 3 cameras: the same random backgrounds, a 2x2 'cube' moving in the last (third-person) camera."""
    from cosmos_policy_core.train.vae import ObjectScenes

    rng = np.random.default_rng(0)
    background = torch.from_numpy(rng.uniform(-0.5, 0.5, (3, 3, size, size))).float()
    images = background[None].repeat(n, 1, 1, 1, 1)
    for i in range(n):
        images[i, 2, :, 4:6, 2 + 3 * i:4 + 3 * i] = 1.0
    return ObjectScenes(images)


def test_object_scene_clips_weigh_the_object_alone():
    scenes = _object_scenes()
    rng = np.random.default_rng(0)
    last_is_top = []
    for _ in range(200):
        video, weights = scenes.clip(1, 13, 50.0, 0.25, rng)
        assert video.shape == (3, 13, 16, 16) and weights.shape == (1, 13, 16, 16)
        assert torch.all(video[:, 0] == -1) and torch.all(weights[:, 0] == 1)   # the black first frame
        for g in range(3):
            group = video[:, 1 + 4 * g: 5 + 4 * g]
            assert torch.equal(group, group[:, :1].expand_as(group))              # 4 copies of one image
        shown = [c for c in range(3) if torch.equal(video[:, 9], scenes.images[1, c])]
        assert len(shown) == 1                                                    # the last group is never black
        last_is_top.append(shown[0] == 2)
        heavy = weights[0] > 1
        # only the top camera differs between scenes: weights above 1 there, on this scene's cube or where
        # the other scenes' cubes lie (the mean image is lighter there)
        for g in range(3):
            frame = video[:, 1 + 4 * g]
            is_top = float((frame - scenes.images[1, 2]).abs().max()) == 0
            assert bool(heavy[1 + 4 * g].any()) == is_top
    assert 0.55 < np.mean(last_is_top) < 0.8   # half the time forced, else 1 in 3


def test_object_recall_is_one_when_the_object_comes_back_and_zero_for_the_mean():
    from cosmos_policy_core.train.vae import object_recall

    scenes = _object_scenes()
    video = scenes.images[:, 2][:, :, None]                  # N, 3, 1, S, S
    mean = scenes.mean[2][None, :, None]
    assert object_recall(video.expand(-1, -1, 4, -1, -1), video, mean) == 1.0
    assert abs(object_recall(mean.expand_as(video), video, mean)) < 1e-6
    assert object_recall(video, video, video) is None         # nothing differs

    class PassThrough(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return x

        def decode(self, z):
            return z

    assert scenes.recall(PassThrough(), 2) == 1.0
    assert scenes.recall(PassThrough(), 0) is None            # a wrist camera: the same in every scene


def test_train_vae_cli_with_object_scenes_renders_them_and_reports_their_recall(tmp_path, capsys):
    from cosmos_policy_core.cli import main

    data = _dataset(tmp_path / "data")
    rc = main(["train-vae", "--data", str(data), "--out", str(tmp_path / "vae"), "--steps", "2", "--batch", "4",
               "--image-size", "32", "--clip-mode", "layout", "--clip-frames", "9", "--object-scenes", "3",
               "--object-fraction", "0.5", "--object-weight", "50", "--device", "cpu", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "object recall on held-out reset scenes" in out and "cam_high" in out
    meta = json.loads((tmp_path / "vae" / "vae_config.json").read_text())["metadata"]
    assert meta["config"]["object_scenes"] == 3 and meta["config"]["object_weight"] == 50.0
    recall = meta["object_recall"]
    assert set(recall) == set(CAMS)
    assert isinstance(recall["cam_high"], float)  # the cube moves between the 16 held-out resets in the top view


def test_the_shipped_checkpoints_vae_gives_the_cube_back_on_fresh_reset_scenes():
    """The shipped policy's VAE was trained with reset scenes (`train-vae --object-scenes`, docs/training.md):
    its top-camera object recall on sim resets it never saw stays high (a VAE trained on demos alone: ~0)."""
    from pathlib import Path

    from cosmos_policy_core.layout import LatentLayout
    from cosmos_policy_core.train.vae import ObjectScenes

    shipped = load_vae(Path(__file__).resolve().parents[1] / "models" / "aloha_sim_transfer_cube_small")
    cameras = LatentLayout.aloha().camera_sources
    scenes = ObjectScenes.render("transfer_cube", 16, 3000, cameras, 64)
    with torch.no_grad():
        recall = scenes.recall(shipped, cameras.index("cam_high"))
    assert recall > 0.4, recall
