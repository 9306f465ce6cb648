"""CosmosPolicy on a tiny random checkpoint: act end to end, seeds, tasks, image pipeline, role masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.runtime.images import center_crop_size, client_resize, prepare_images
from cosmos_policy_core.layout import build_pixel_clip, clip_to_vae_input, condition_mask, conditioning_frames
from cosmos_policy_core.runtime.policy import TIMING_KEYS, CosmosPolicy, PolicyConfig
from cosmos_policy_core.testing import DEFAULT_TASKS, build_random_checkpoint, random_observation

IMAGE_SIZE = 64  # 8x8 latents: the ALOHA frame order and chunk sizes, at a CPU-friendly resolution


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> CosmosPolicy:
    path = build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", image_size=IMAGE_SIZE, text_len=16)
    return CosmosPolicy.from_checkpoint(path)


@pytest.fixture(scope="module")
def obs(policy):
    return random_observation(policy.layout, stats=policy.stats, height=120, width=160, timestamp=12.5)


@pytest.fixture(scope="module")
def cond(policy, obs):
    return policy.encode_observation(obs)


def test_act_end_to_end(policy, obs):
    chunk = policy.act(obs, seed=7, num_steps=2, return_future_images=True)
    st = policy.stats
    assert chunk.actions.shape == (50, 14) and np.isfinite(chunk.actions).all()
    assert (chunk.actions >= st.actions_min - 1e-9).all() and (chunk.actions <= st.actions_max + 1e-9).all()
    assert 0.0 <= chunk.value <= 1.0
    assert chunk.timestamp == 12.5 and chunk.seed == 7 and chunk.num_steps == 2
    assert chunk.future_proprio.shape == (14,) and np.isfinite(chunk.future_proprio).all()
    assert set(chunk.future_images) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    for img in chunk.future_images.values():
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and img.dtype == np.uint8
    assert set(chunk.timings) == set(TIMING_KEYS) and chunk.timings["vae_encode"] > 0 and chunk.timings["decode"] > 0


def test_seeds_reproducible_and_distinct(policy, cond):
    a = policy.act(cond, seed=3, num_steps=1, return_future_images=False)
    b = policy.act(cond, seed=3, num_steps=1, return_future_images=False)
    c = policy.act(cond, seed=4, num_steps=1, return_future_images=False)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.value == b.value
    assert np.abs(a.actions - c.actions).max() > 1e-3


def test_batched_rows_equal_single_samples(policy, cond):
    batched = policy.sample_actions(cond, [5, 6, 7], 1)
    for i, seed in enumerate([5, 6, 7]):
        single = policy.sample_actions(cond, [seed], 1)
        torch.testing.assert_close(batched[i:i + 1], single, atol=1e-4, rtol=1e-4)


def test_clipping_only_removes_out_of_range(policy, cond):
    latent = policy.sample_actions(cond, [11], 1)
    raw = policy.with_config(clip_actions=False).actions_from_latent(latent)[0]
    clipped = policy.actions_from_latent(latent)[0]
    inside = (raw >= policy.stats.actions_min) & (raw <= policy.stats.actions_max)
    np.testing.assert_allclose(clipped[inside], raw[inside])
    # an untrained network does leave [-1, 1]: the clamp is what keeps the chunk in range
    assert not inside.all()


def test_unknown_task_lists_known_tasks(policy, obs):
    from dataclasses import replace

    with pytest.raises(ConfigError) as err:
        policy.act(replace(obs, task="make coffee"), num_steps=1, return_future_images=False)
    for task in DEFAULT_TASKS:
        assert repr(task) in str(err.value)


def test_bad_proprio_and_missing_camera(policy, obs):
    from dataclasses import replace

    with pytest.raises(ShapeError, match="14"):
        policy.encode_observation(replace(obs, proprio=np.zeros(7)))
    images = dict(obs.images)
    del images["cam_high"]
    with pytest.raises(ShapeError, match="cam_high"):
        policy.encode_observation(replace(obs, images=images))


# --- image pipeline --------------------------------------------------------------------------------
def test_image_pipeline_sizes_and_crop():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert client_resize(raw).shape == (224, 224, 3)
    already = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert client_resize(already) is already  # the reference server leaves 224² images alone
    assert center_crop_size(224) == 212
    out = prepare_images([raw, already], 224)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.uint8


def test_image_shape_errors():
    with pytest.raises(ShapeError, match="uint8"):
        prepare_images([np.zeros((10, 10, 3), np.float32)], 224)
    with pytest.raises(ShapeError, match="RGB"):
        prepare_images([np.zeros((10, 10), np.uint8)], 224)


# --- role masks (reference §3.2) -------------------------------------------------------------------
SECTION_3_2 = {
    "policy": [0, 1, 2, 3, 4],
    "world_model": [0, 1, 2, 3, 4, 5],
    "value_v_sas": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "value_v_s": [0, 6, 7, 8, 9],
    "q_sa": [0, 1, 2, 3, 4, 5],
}


@pytest.mark.parametrize("role", sorted(SECTION_3_2))
def test_role_feeds_exactly_its_conditioning_frames(policy, cond, role):
    lay = policy.layout
    mask = condition_mask(lay, role)
    assert torch.nonzero(mask[0, 0, :, 0, 0]).flatten().tolist() == SECTION_3_2[role]
    assert list(conditioning_frames(lay, role)) == SECTION_3_2[role]

    g = torch.Generator().manual_seed(0)
    prior = cond.gt_1_C_T_H_W + 0.5 * torch.randn(cond.gt_1_C_T_H_W.shape, generator=g)
    out = policy.sample_role(cond, role, prior, [1], 1)
    expected_gt = prior.clone()
    expected_gt[:, :, 1] = cond.gt_1_C_T_H_W[:, :, 1]  # the observation's proprio is re-injected
    for f in SECTION_3_2[role]:
        torch.testing.assert_close(out[:, :, f], expected_gt[:, :, f])

    others = [f for f in range(lay.num_latent_frames) if f not in SECTION_3_2[role] and f != 1]
    perturbed = prior.clone()
    perturbed[:, :, others] += 3.0 * torch.randn(perturbed[:, :, others].shape, generator=g)
    torch.testing.assert_close(policy.sample_role(cond, role, perturbed, [1], 1), out)

    cond_frame = SECTION_3_2[role][-1]
    changed = prior.clone()
    changed[:, :, cond_frame] += 1.0
    assert (policy.sample_role(cond, role, changed, [1], 1)[:, :, -1] - out[:, :, -1]).abs().max() > 1e-4


def test_conditioning_latents_ignore_later_pixels(policy, cond):
    """The causal encode: the policy's conditioning latents (frames 0-4) depend only on their own pixels."""
    lay = policy.layout
    base = build_pixel_clip(lay, {k: torch.from_numpy(v) for k, v in cond.images.items()})
    noisy = base.clone()
    start = lay.pixel_frame(lay.index("action"))
    noisy[:, start:] = torch.randint(0, 256, noisy[:, start:].shape, dtype=torch.uint8)
    a, b = policy.encode_clip(base).latents, policy.encode_clip(noisy).latents
    assert a.shape[2] == lay.num_latent_frames
    assert torch.equal(a[:, :, :5], b[:, :, :5])
    assert torch.equal(a[:, :, :5], cond.clean_1_C_T_H_W[:, :, :5])
    assert (a[:, :, 5:] - b[:, :, 5:]).abs().max() > 1e-3


def test_only_the_conditioning_frames_are_encoded_and_nothing_changes(policy, obs):
    """17 of the 41 pixel frames: the latents, actions, value and decoded frames of the whole-clip encode, bit
    for bit."""
    lay = policy.layout
    whole = policy.with_config(vae_encode_whole_clip=True)
    cond, cond_whole = policy.encode_observation(obs), whole.encode_observation(obs)
    assert (cond.clean_frames, cond.encoding.num_frames, cond_whole.clean_frames) == (5, 5, None)
    assert torch.equal(cond.gt_1_C_T_H_W[:, :, :5], cond_whole.gt_1_C_T_H_W[:, :, :5])
    assert not cond.gt_1_C_T_H_W[:, :, 5:].any()  # never encoded: no role reads them from the observation
    # Today's full encode: one causal pass over the whole clip.
    clip = build_pixel_clip(lay, {k: torch.from_numpy(v) for k, v in cond.images.items()})
    one_pass = policy.vae.encode(clip_to_vae_input(clip), chunk_frames=None)
    assert torch.equal(cond.clean_1_C_T_H_W[:, :, :5], one_pass[:, :, :5])
    assert torch.equal(cond_whole.clean_1_C_T_H_W, one_pass)

    a = policy.act(cond, seed=3, num_steps=3, return_future_images=False)
    b = whole.act(cond_whole, seed=3, num_steps=3, return_future_images=False)
    assert np.array_equal(a.actions, b.actions) and a.value == b.value
    assert np.array_equal(a.future_proprio, b.future_proprio)
    # The planner's roles condition on the action sample: the same there too.
    action, action_whole = policy.sample_actions(cond, [4], 1), whole.sample_actions(cond_whole, [4], 1)
    assert torch.equal(action, action_whole)
    future = policy.predict_future(cond, action, [4], 2)
    assert torch.equal(future, whole.predict_future(cond_whole, action_whole, [4], 2))
    assert torch.equal(policy.value(cond, future, [4], 1), whole.value(cond_whole, future, [4], 1))

    # The decode needs the clean latents of the action and future-proprio slots (frames 5, 6): encoded then,
    # from where the stream stopped, and no further.
    images = policy.decode_future_images(cond, action)[0]
    assert cond.encoding.num_frames == lay.index("future_proprio") + 1
    assert torch.equal(cond.encoding.latents, one_pass[:, :, :7])
    expected = whole.decode_future_images(cond_whole, action_whole)[0]
    assert all(np.array_equal(images[cam], expected[cam]) for cam in expected)


def test_preprocessing_as_torch_ops_gives_the_same_chunk(policy, obs, cond):
    """The device pipeline (run here on the CPU): the same images, latents and actions bit for bit."""
    assert policy.config.crop_area is not None  # the centre crop is part of what is compared
    on_device = policy.with_config(preprocess_on_device=True)
    cond_device = on_device.encode_observation(obs)
    for cam, image in cond.images.items():
        assert np.array_equal(cond_device.images[cam], image)
    assert torch.equal(cond_device.gt_1_C_T_H_W, cond.gt_1_C_T_H_W)
    a = policy.act(cond, seed=5, num_steps=2, return_future_images=False)
    b = on_device.act(cond_device, seed=5, num_steps=2, return_future_images=False)
    assert np.array_equal(a.actions, b.actions)


def test_black_prefix_is_encoded_once_and_gives_the_same_latents(policy, cond):
    lay = policy.layout
    clip = build_pixel_clip(lay, {k: torch.from_numpy(v) for k, v in cond.images.items()})
    full = policy.with_config(vae_prefix_cache=False).encode_clip(clip).latents
    first = policy.encode_clip(clip).latents
    stream = policy._prefix[1]
    assert policy._prefix[2].shape[2] == 2  # blank + the proprio slot (pixel frames 0-4)
    again = policy.encode_clip(clip).latents
    assert policy._prefix[1] is stream  # the prefix state is reused, not re-encoded
    assert torch.equal(first, full) and torch.equal(again, first)
    # A clip whose prefix is not black (not the inference layout) takes the full encode.
    lit = clip.clone()
    lit[:, 1:5] = 200
    lit_latents = policy.encode_clip(lit).latents
    assert torch.equal(lit_latents, policy.vae.encode(clip_to_vae_input(lit), chunk_frames=None))
    assert (lit_latents - first).abs().max() > 1e-3
    # Chunked encoder calls (less memory) give the same latents up to float rounding.
    torch.testing.assert_close(policy.with_config(vae_chunk_frames=8).encode_clip(clip).latents, first,
                               atol=1e-5, rtol=0)


def test_value_modes(policy, cond):
    action = policy.sample_actions(cond, [2], 1)
    future = policy.predict_future(cond, action, [2], 1)
    for mode, latent in (("V(s')", future), ("V(s,a,s')", future), ("Q(s,a)", action)):
        v = policy.value(cond, latent, [2, 3], 1, mode=mode)
        assert v.shape == (2,) and ((v >= 0) & (v <= 1)).all()
    with pytest.raises(ConfigError, match="V\\(s'\\)"):
        policy.value(cond, future, [2], 1, mode="V(s)")


@pytest.mark.slow
def test_act_at_224_decodes_224_images(tmp_path):
    path = build_random_checkpoint(tmp_path / "tiny224", text_len=16)
    pol = CosmosPolicy.from_checkpoint(path, config=PolicyConfig(num_steps=1))
    chunk = pol.act(random_observation(pol.layout, stats=pol.stats), seed=0)
    assert chunk.actions.shape == (50, 14)
    for img in chunk.future_images.values():
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8


def test_policy_config_for_follows_the_checkpoints_training(tmp_path):
    """No test-time centre crop for a model trained without augmentation; the crop otherwise."""
    import json

    from cosmos_policy_core.errors import CheckpointError
    from cosmos_policy_core.runtime.images import TRAIN_CROP_AREA
    from cosmos_policy_core.runtime.policy import policy_config_for

    def checkpoint(name, train_config):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"format": "cosmos_aloha.checkpoint",
                                                   "metadata": {"train_config": train_config}}))
        return d

    assert policy_config_for(checkpoint("plain", {"augment": None})).crop_area is None
    assert policy_config_for(checkpoint("aug", {"augment": {"crop_area": 0.9}})).crop_area == TRAIN_CROP_AREA
    assert policy_config_for(tmp_path / "reference.pt").crop_area == TRAIN_CROP_AREA   # no config.json
    cfg = policy_config_for(tmp_path / "plain", num_steps=1)
    assert (cfg.crop_area, cfg.num_steps) == (None, 1)                                 # overrides keep the rest
    assert policy_config_for(tmp_path / "plain", crop_area=0.8).crop_area == 0.8
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        policy_config_for(tmp_path / "bad")
