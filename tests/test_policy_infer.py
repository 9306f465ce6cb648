"""The staged policy call every runner uses: the chunk first, the predicted frames only when asked for."""
from __future__ import annotations

import numpy as np
import pytest

from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", image_size=64, text_len=16)
    return CosmosPolicy.from_checkpoint(path)


def test_infer_gives_the_chunk_without_decoding_and_the_frames_on_demand(policy):
    obs = random_observation(policy.layout, height=96, width=128, stats=policy.stats, timestamp=3.5)
    result = policy.infer(obs, seed=7, num_steps=2)
    chunk = result.chunk
    assert chunk.actions.shape == (50, 14) and chunk.future_images is None and chunk.timestamp == 3.5
    assert chunk.timings["decode"] == 0.0 and chunk.timings["vae_encode"] > 0
    frames = result.future_images()
    assert set(frames) == set(policy.layout.camera_sources)
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames.values())
    assert chunk.future_images is frames and chunk.timings["decode"] > 0
    assert result.future_images() is frames                       # decoded once

    # act is infer (+ the decode): the same numbers for the same seed and steps
    acted = policy.act(obs, seed=7, num_steps=2)
    np.testing.assert_array_equal(acted.actions, chunk.actions)
    assert acted.value == chunk.value
    for cam, image in acted.future_images.items():
        np.testing.assert_array_equal(image, frames[cam])
    assert policy.act(obs, seed=7, num_steps=2, return_future_images=False).future_images is None


def test_a_cancelled_call_stops_after_the_encode(policy):
    obs = random_observation(policy.layout, height=64, width=64, stats=policy.stats)
    assert policy.infer(obs, cancelled=lambda: True) is None
    cond = policy.encode_observation(obs)
    reused = policy.infer(cond, seed=1, num_steps=1)
    assert reused.chunk.timings["vae_encode"] == 0.0            # the encode was not repeated
    np.testing.assert_array_equal(reused.chunk.actions, policy.infer(obs, seed=1, num_steps=1).chunk.actions)
