"""benchmarks/latent_contrast.py with a tiny random VAE and synthetic scenes: only the moving object counts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cosmos_policy_core.nn.wan_vae import WanVAE
from cosmos_policy_core.train.vae import save_vae_dir



@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("latent_contrast")


def test_contrast_is_the_largest_cross_scene_deviation_over_the_content(bench):
    z = torch.ones(3, 2, 4, 4)            # content RMS 1
    z[0, :, 1, 2] += 0.3                   # one scene differs at one position, in both channels
    out = bench.contrast(z)
    expected_dev = float(torch.tensor([1.3, 1.0, 1.0]).std())
    assert out["object_dev_max"] == pytest.approx(expected_dev, abs=1e-4)
    assert out["content_rms"] == pytest.approx(float(z.pow(2).mean().sqrt()), abs=1e-4)
    assert out["contrast"] == pytest.approx(out["object_dev_max"] / out["content_rms"], abs=1e-3)


def test_only_the_camera_that_sees_the_object_changes(bench, tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_vae_dir(tmp_path / "vae", WanVAE.tiny())
    rng = np.random.default_rng(0)
    background = {cam: rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
                  for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist")}

    def scenes(task, n, seed, size):
        out = []
        for i in range(n):
            frames = {k: v.copy() for k, v in background.items()}
            frames["cam_high"][10 + 20 * i:30 + 20 * i, 40:60] = (255, 0, 0)   # the "cube" moves in the top view
            out.append(frames)
        return out

    monkeypatch.setattr(bench, "render_reset_scenes", scenes)
    report = tmp_path / "contrast.json"
    bench.main(["--vae", str(tmp_path / "vae"), "--sizes", "64", "--scenes", "3", "--threads", "1",
                "--json", str(report)])
    rows = {r["camera"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"left_wrist", "right_wrist", "top"}
    assert rows["top"]["latent_hw"] == 8 and rows["top"]["object_dev_max"] > 0  # a random VAE: small but not 0
    # the wrist cameras are the same in every scene; the causal encoder sees the top frame only after them
    assert rows["left_wrist"]["object_dev_max"] == 0 and rows["right_wrist"]["object_dev_max"] == 0
    assert rows["left_wrist"]["object_recall"] is None and rows["top"]["object_recall"] is not None


class _PassThroughVAE:
    """encode = identity; decode gives the clip back, or `mean` (a VAE that forgets the object) once set."""

    def __init__(self):
        self.mean = None

    def encode(self, clip):
        return clip

    def decode(self, z):
        return z if self.mean is None else self.mean


def test_object_recall_is_one_for_a_perfect_vae_and_zero_for_one_that_returns_the_mean_image(bench):
    import dataclasses

    from cosmos_policy_core.layout import LatentLayout

    layout = dataclasses.replace(LatentLayout.aloha(), image_size=64)
    rng = np.random.default_rng(1)
    background = {cam: rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)
                  for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
    frames = []
    for i in range(4):
        scene = {k: v.copy() for k, v in background.items()}
        scene["cam_high"][8 + 12 * i:16 + 12 * i, 20:28] = (250, 10, 10)
        frames.append(scene)
    vae = _PassThroughVAE()
    clips, latents = bench.encode_scenes(vae, layout, frames)
    perfect = bench.reconstruction(vae, layout, clips, latents)
    assert perfect["top"]["object_recall"] == pytest.approx(1.0) and perfect["left_wrist"]["object_recall"] is None
    assert perfect["top"]["psnr_db"] == 120.0                            # mse 0 -> the 1e-12 floor
    vae.mean = clips.mean(0, keepdim=True)
    forgetful = bench.reconstruction(vae, layout, clips, latents)
    assert forgetful["top"]["object_recall"] == pytest.approx(0.0, abs=1e-4)
    assert forgetful["left_wrist"]["psnr_db"] == 120.0 and forgetful["top"]["psnr_db"] < 40


def test_needs_two_scenes(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--vae", str(tmp_path), "--scenes", "1"])
